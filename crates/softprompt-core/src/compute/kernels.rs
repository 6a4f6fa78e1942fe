//! CPU kernels on f32 slices: matrix products (the `gemm` crate, AVX-512 when present),
//! RMSNorm, rotary embeddings, SwiGLU and softmax, each with its backward.
//! Nothing here knows about prompts or models. Shapes are given in comments as
//! `[rows, cols]`, row-major.

use rayon::prelude::*;

/// Threads of the pool the products run on (`RAYON_NUM_THREADS`, else one per core).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// The machine's read bandwidth in GB/s: the best of 5 parallel sums over 512 MiB (far beyond
/// any L3), on the products' thread pool. For `softprompt bench`'s decode ceiling.
pub fn read_bandwidth_gbs() -> f64 {
    let buf = vec![1.0f32; 128 << 20];
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let s: f32 = buf
            .par_chunks(1 << 16)
            .map(|c| {
                // 64 independent lanes (4 vector accumulators): bound by memory, not by the
                // latency of one add chain.
                let mut acc = [0.0f32; 64];
                for v in c.chunks_exact(64) {
                    acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
                }
                acc.iter().sum::<f32>()
            })
            .sum();
        std::hint::black_box(s);
        best = best.max((buf.len() * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// Runs `f` on a thread of the rayon pool (directly when already on one). A model pass makes
/// hundreds of parallel calls; from outside the pool each one is a hand-off to a sleeping
/// worker and a wait on a latch (tens of microseconds each, most of a batch-1 decoding step's
/// overhead), from inside it the caller works on its share at once.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::scope(|_| f())
}

/// Below this many multiply-adds a product runs on the calling thread.
const PAR_THRESHOLD: usize = 1 << 18;

/// A strided matrix view for [`gemm`]: element (r, c) is at `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub fn rm(data: &'a [f32], cols: usize) -> Self {
        View {
            data,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major `[rows, cols]` matrix, seen as `[cols, rows]`.
    pub fn t(data: &'a [f32], cols: usize) -> Self {
        View {
            data,
            rs: 1,
            cs: cols,
        }
    }
}

/// `out[m, n] (+)= a[m, k] @ b[k, n]`; `out` is row-major with row stride `ld_out`.
/// `parallel` lets gemm use the rayon pool (callers already inside a parallel loop pass false).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    out: &mut [f32],
    ld_out: usize,
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Bounds: the last element each view touches must be inside its slice.
    assert!(
        k == 0 || (m - 1) * a.rs + (k - 1) * a.cs < a.data.len(),
        "gemm: lhs out of bounds"
    );
    assert!(
        k == 0 || (k - 1) * b.rs + (n - 1) * b.cs < b.data.len(),
        "gemm: rhs out of bounds"
    );
    assert!((m - 1) * ld_out + n <= out.len(), "gemm: dst out of bounds");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                out[r * ld_out..r * ld_out + n].fill(0.0);
            }
        }
        return;
    }
    let par = if parallel && m * n * k >= PAR_THRESHOLD {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every access in bounds; `out` does not alias `a`/`b`
    // (it is a unique borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            ld_out as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Linear layer forward: `y[m, n] (+)= x[m, k] @ w[n, k]^T` (w in HF `[out, in]` layout).
/// A few rows (decoding) take a memory-bound path: each weight row is read once and dotted
/// with every input row.
pub fn linear(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, y: &mut [f32], accumulate: bool) {
    if m <= SMALL_M && n * k >= PAR_THRESHOLD {
        return linear_rows(x, w, m, n, k, y, accumulate);
    }
    gemm(
        m,
        n,
        k,
        View::rm(x, k),
        View::t(w, k),
        y,
        n,
        accumulate,
        true,
    );
}

/// Inputs with at most this many rows use [`linear_rows`].
const SMALL_M: usize = 16;

/// `y[m, n] (+)= x[m, k] @ w[n, k]^T`, every element one [`dot`] in a fixed order: a row's
/// result never depends on `m` or on the other rows (what batch-invariant serving needs).
/// Memory-bound for a few rows (decoding): each weight row is read once and dotted with
/// every input row. Parallel over blocks of weight rows.
pub fn linear_rows(
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
    accumulate: bool,
) {
    const BLOCK: usize = 64;
    assert!(
        x.len() >= m * k && w.len() >= n * k && y.len() >= m * n,
        "linear_rows: bad sizes"
    );
    column_blocks(m, n, BLOCK, y, accumulate, |r0, r1, out| {
        let width = r1 - r0;
        for (j, r) in (r0..r1).enumerate() {
            let wr = &w[r * k..(r + 1) * k];
            let mut i = 0;
            // Four input rows share each load of the weight row; each result is still
            // exactly `dot(x_i, w_r)`.
            while i + 4 <= m {
                let xs = [
                    &x[i * k..(i + 1) * k],
                    &x[(i + 1) * k..(i + 2) * k],
                    &x[(i + 2) * k..(i + 3) * k],
                    &x[(i + 3) * k..(i + 4) * k],
                ];
                let d4 = dot4(xs, wr);
                for (t, v) in d4.into_iter().enumerate() {
                    out[(i + t) * width + j] = v;
                }
                i += 4;
            }
            for i in i..m {
                out[i * width + j] = dot(&x[i * k..(i + 1) * k], wr);
            }
        }
    });
}

/// `y[m, n] (+)= ` an output computed in blocks of `block` columns, in parallel:
/// `fill(c0, c1, out)` writes columns `c0..c1` of every row into `out[m, c1 - c0]`, a
/// per-thread scratch buffer that the task then copies (or adds) into its columns of `y`.
/// No allocation per call: a decoding step makes hundreds of these calls, and per-block
/// vectors made the threads contend on the allocator's lock.
pub fn column_blocks(
    m: usize,
    n: usize,
    block: usize,
    y: &mut [f32],
    accumulate: bool,
    fill: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    thread_local! {
        static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    assert!(y.len() >= m * n, "column_blocks: y too short");
    let dst = SyncPtr(y.as_mut_ptr());
    (0..n.div_ceil(block)).into_par_iter().for_each(|b| {
        let (c0, c1) = (b * block, ((b + 1) * block).min(n));
        let width = c1 - c0;
        let mut out = SCRATCH.with(|c| c.take());
        out.clear();
        out.resize(m * width, 0.0);
        fill(c0, c1, &mut out);
        for i in 0..m {
            // SAFETY: i < m and c1 <= n, inside y (asserted); tasks write disjoint columns.
            let d = unsafe { std::slice::from_raw_parts_mut(dst.get().add(i * n + c0), width) };
            let src = &out[i * width..(i + 1) * width];
            if accumulate {
                d.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            } else {
                d.copy_from_slice(src);
            }
        }
        SCRATCH.with(|c| c.set(out));
    });
}

/// A raw pointer shared by parallel tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: only used by tasks that write disjoint elements.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so closures capture the whole Sync wrapper).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Dot product with AVX-512 when the CPU has it, else 8 independent accumulators.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected at run time.
            return unsafe { dot_avx512(a, b) };
        }
    }
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for t in 0..8 {
            acc[t] += x[t] * y[t];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// [`dot`] on 16-lane vectors.
///
/// # Safety
/// The CPU has AVX512-F (the shorter slice bounds the product).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm512_setzero_ps();
    let mut acc1 = _mm512_setzero_ps();
    let mut i = 0;
    while i + 32 <= n {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm512_fmadd_ps(
            _mm512_loadu_ps(pa.add(i + 16)),
            _mm512_loadu_ps(pb.add(i + 16)),
            acc1,
        );
        i += 32;
    }
    if i + 16 <= n {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
        i += 16;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// `[dot(a[0], b), .., dot(a[3], b)]`, bit-identical to four [`dot`] calls (the same
/// operations per result, in the same order), with `b` loaded once for all four.
pub fn dot4(a: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && a.iter().all(|x| x.len() == b.len()) {
            // SAFETY: the feature was detected at run time; lengths checked.
            return unsafe { dot4_avx512(a, b) };
        }
    }
    a.map(|x| dot(x, b))
}

/// [`dot4`] on 16-lane vectors, `b` read once for the four rows.
///
/// # Safety
/// The CPU has AVX512-F; every row of `a` holds at least `b.len()` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot4_avx512(a: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = b.len();
    let pb = b.as_ptr();
    let pa = a.map(|x| x.as_ptr());
    let mut acc0 = [_mm512_setzero_ps(); 4];
    let mut acc1 = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        let b0 = _mm512_loadu_ps(pb.add(i));
        let b1 = _mm512_loadu_ps(pb.add(i + 16));
        for t in 0..4 {
            acc0[t] = _mm512_fmadd_ps(_mm512_loadu_ps(pa[t].add(i)), b0, acc0[t]);
            acc1[t] = _mm512_fmadd_ps(_mm512_loadu_ps(pa[t].add(i + 16)), b1, acc1[t]);
        }
        i += 32;
    }
    if i + 16 <= n {
        let b0 = _mm512_loadu_ps(pb.add(i));
        for t in 0..4 {
            acc0[t] = _mm512_fmadd_ps(_mm512_loadu_ps(pa[t].add(i)), b0, acc0[t]);
        }
        i += 16;
    }
    let mut out = [0.0f32; 4];
    for t in 0..4 {
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t]));
        for j in i..n {
            s += a[t][j] * b[j];
        }
        out[t] = s;
    }
    out
}

/// Linear layer input gradient: `dx[m, k] (+)= dy[m, n] @ w[n, k]`.
pub fn linear_dx(
    dy: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    dx: &mut [f32],
    accumulate: bool,
) {
    gemm(
        m,
        k,
        n,
        View::rm(dy, n),
        View::rm(w, k),
        dx,
        k,
        accumulate,
        true,
    );
}

/// RMSNorm over rows of `x[rows, d]`: `y = x / sqrt(mean(x^2) + eps) * w`.
/// Writes `rstd[rows]` (1/sqrt(mean+eps)) for the backward.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], rstd: &mut [f32]) {
    let d = w.len();
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(rstd.par_iter_mut())
        .for_each(|((yr, xr), r)| {
            let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let s = 1.0 / (ss + eps).sqrt();
            *r = s;
            for ((yo, xi), wi) in yr.iter_mut().zip(xr).zip(w) {
                *yo = wi * (xi * s);
            }
        });
}

/// RMSNorm backward, accumulating into `dx[rows, d]`:
/// `dx += s * (w*dy) - x * s^3 / d * sum(x * w * dy)`.
pub fn rmsnorm_backward(x: &[f32], w: &[f32], rstd: &[f32], dy: &[f32], dx: &mut [f32]) {
    let d = w.len();
    dx.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(dy.par_chunks(d))
        .zip(rstd.par_iter())
        .for_each(|(((dxr, xr), dyr), &s)| {
            let dot: f32 = xr
                .iter()
                .zip(dyr)
                .zip(w)
                .map(|((xi, gi), wi)| xi * wi * gi)
                .sum();
            let c = dot * s * s * s / d as f32;
            for (((o, xi), gi), wi) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
                *o += s * wi * gi - xi * c;
            }
        });
}

/// Rotary embedding tables: `cos[pos, hd/2]`, `sin[pos, hd/2]` (HF "rotate_half" layout).
pub struct Rope {
    pub half: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub max_pos: usize,
}

impl Rope {
    /// `inv_freq[half]` as transformers computes it (in f32), possibly rescaled; cos and sin
    /// are multiplied by `attention_factor` (yarn; 1 otherwise), as transformers does.
    pub fn new(inv_freq: Vec<f32>, max_pos: usize, attention_factor: f32) -> Self {
        let half = inv_freq.len();
        let mut cos = vec![0.0; max_pos * half];
        let mut sin = vec![0.0; max_pos * half];
        for p in 0..max_pos {
            for (i, f) in inv_freq.iter().enumerate() {
                let a = p as f32 * f;
                cos[p * half + i] = a.cos() * attention_factor;
                sin[p * half + i] = a.sin() * attention_factor;
            }
        }
        Rope {
            half,
            cos,
            sin,
            max_pos,
        }
    }

    /// Rotate each head of `x[rows, n_heads * 2*half]` in place; row r has position `pos[r]`.
    /// `inverse` applies the transpose rotation (the backward of the forward rotation).
    pub fn apply(&self, x: &mut [f32], n_heads: usize, pos: &[usize], inverse: bool) {
        let hd = 2 * self.half;
        let h = self.half;
        x.par_chunks_mut(n_heads * hd)
            .zip(pos.par_iter())
            .for_each(|(row, &p)| {
                let c = &self.cos[p * h..(p + 1) * h];
                let s = &self.sin[p * h..(p + 1) * h];
                for head in row.chunks_mut(hd) {
                    let (x1, x2) = head.split_at_mut(h);
                    for i in 0..h {
                        let (a, b) = (x1[i], x2[i]);
                        let si = if inverse { -s[i] } else { s[i] };
                        x1[i] = a * c[i] - b * si;
                        x2[i] = b * c[i] + a * si;
                    }
                }
            });
    }
}

/// `s[i] = sigmoid(g[i])` with the vector exp.
fn sigmoid_into(g: &[f32], s: &mut [f32]) {
    for (si, gi) in s.iter_mut().zip(g) {
        *si = -gi;
    }
    exp_shift(s, 0.0, 1.0);
    for si in s.iter_mut() {
        *si = 1.0 / (1.0 + *si);
    }
}

/// SwiGLU: `a = silu(g) * u`, elementwise over `[rows, f]`.
pub fn swiglu(g: &[f32], u: &[f32], a: &mut [f32]) {
    a.par_chunks_mut(4096)
        .zip(g.par_chunks(4096))
        .zip(u.par_chunks(4096))
        .for_each(|((a, g), u)| {
            sigmoid_into(g, a);
            for ((ai, gi), ui) in a.iter_mut().zip(g).zip(u) {
                *ai *= gi * ui;
            }
        });
}

/// SwiGLU backward: from `da`, write `dg` and `du` (overwrite).
pub fn swiglu_backward(g: &[f32], u: &[f32], da: &[f32], dg: &mut [f32], du: &mut [f32]) {
    dg.par_chunks_mut(4096)
        .zip(du.par_chunks_mut(4096))
        .zip(
            g.par_chunks(4096)
                .zip(u.par_chunks(4096))
                .zip(da.par_chunks(4096)),
        )
        .for_each(|((dg, du), ((g, u), da))| {
            sigmoid_into(g, dg); // dg = s for now
            for i in 0..dg.len() {
                let s = dg[i];
                let silu = g[i] * s;
                du[i] = da[i] * silu;
                dg[i] = da[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
            }
        });
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044715;

/// GELU, tanh approximation (PyTorch `gelu(approximate="tanh")`).
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + GELU_C * x * x * x)).tanh())
}

/// d gelu_tanh(x) / dx.
#[inline]
pub fn gelu_tanh_grad(x: f32) -> f32 {
    let t = (SQRT_2_OVER_PI * (x + GELU_C * x * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x)
}

/// GeGLU (Gemma): `a = gelu_tanh(g) * u`, elementwise over `[rows, f]`.
pub fn geglu_tanh(g: &[f32], u: &[f32], a: &mut [f32]) {
    a.par_chunks_mut(4096)
        .zip(g.par_chunks(4096))
        .zip(u.par_chunks(4096))
        .for_each(|((a, g), u)| {
            for ((ai, gi), ui) in a.iter_mut().zip(g).zip(u) {
                *ai = gelu_tanh(*gi) * ui;
            }
        });
}

/// GeGLU backward: from `da`, write `dg` and `du` (overwrite).
pub fn geglu_tanh_backward(g: &[f32], u: &[f32], da: &[f32], dg: &mut [f32], du: &mut [f32]) {
    dg.par_chunks_mut(4096)
        .zip(du.par_chunks_mut(4096))
        .zip(
            g.par_chunks(4096)
                .zip(u.par_chunks(4096))
                .zip(da.par_chunks(4096)),
        )
        .for_each(|((dg, du), ((g, u), da))| {
            for i in 0..dg.len() {
                du[i] = da[i] * gelu_tanh(g[i]);
                dg[i] = da[i] * u[i] * gelu_tanh_grad(g[i]);
            }
        });
}

/// In-place softmax of one row. Entries set to -inf become 0.
pub fn softmax_inplace(row: &mut [f32]) {
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let sum = exp_shift(row, m, 1.0);
    let inv = (1.0 / sum) as f32;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// log-sum-exp of a row: exponentials in f32 (within 2 ulp), their sum in f64.
pub fn logsumexp(row: &[f32]) -> f64 {
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if !m.is_finite() {
        return m as f64;
    }
    let mut s = 0.0f64;
    for c in row.chunks(4096) {
        let mut buf = [0.0f32; 4096];
        let b = &mut buf[..c.len()];
        b.copy_from_slice(c);
        s += exp_shift(b, m, 1.0);
    }
    m as f64 + s.ln()
}

/// `row[i] = exp(row[i] - shift) * scale` in place; returns the sum of `exp(row[i] - shift)`
/// in f64. AVX-512 when present (the vector exp is within 2 ulp of `f32::exp`).
pub fn exp_shift(row: &mut [f32], shift: f32, scale: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected at run time.
            return unsafe { exp_shift_avx512(row, shift, scale) };
        }
    }
    let mut sum = 0.0f64;
    for v in row.iter_mut() {
        let e = (*v - shift).exp();
        sum += e as f64;
        *v = e * scale;
    }
    sum
}

/// 16 lanes of `exp(x)`: `x = n ln2 + r` (Cody-Waite, |r| <= ln2/2), a degree-6 polynomial
/// for `exp(r)`, then `scalef` by `2^n` (which flushes large negative `x` to 0).
///
/// # Safety
/// The CPU has AVX512-F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_min_ps(x, _mm512_set1_ps(88.72));
    let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
    let n = _mm512_roundscale_ps(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x); // ln2 high part
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r); // ln2 low part
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// [`exp_shift`] on 16-lane vectors ([`exp16`]).
///
/// # Safety
/// The CPU has AVX512-F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shift_avx512(row: &mut [f32], shift: f32, scale: f32) -> f64 {
    use std::arch::x86_64::*;
    let n = row.len();
    let p = row.as_mut_ptr();
    let (vs, vc) = (_mm512_set1_ps(shift), _mm512_set1_ps(scale));
    let (mut lo, mut hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
    let mut i = 0;
    while i < n {
        let k = (n - i).min(16);
        let mask: __mmask16 = if k == 16 { 0xFFFF } else { (1u16 << k) - 1 };
        let x = _mm512_maskz_loadu_ps(mask, p.add(i));
        let e = _mm512_maskz_mov_ps(mask, exp16(_mm512_sub_ps(x, vs)));
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        hi = _mm512_add_pd(
            hi,
            _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(
                _mm512_castps_pd(e),
                1,
            ))),
        );
        _mm512_mask_storeu_ps(p.add(i), mask, _mm512_mul_ps(e, vc));
        i += 16;
    }
    _mm512_reduce_add_pd(_mm512_add_pd(lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_exp_matches_libm() {
        let xs: Vec<f32> = (0..19800).map(|i| -110.0 + i as f32 * 0.01).collect(); // up to 88
        let mut got = xs.clone();
        let sum = exp_shift(&mut got, 0.0, 1.0);
        let mut want_sum = 0.0f64;
        for (x, g) in xs.iter().zip(&got) {
            let w = x.exp();
            want_sum += w as f64;
            let tol = 3.0 * f32::EPSILON * w.max(f32::MIN_POSITIVE);
            assert!((g - w).abs() <= tol, "exp({x}) = {g}, libm {w}");
        }
        assert!(((sum - want_sum) / want_sum).abs() < 1e-6);
        let row: Vec<f32> = (0..49153)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let exact = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        assert!((logsumexp(&row) - exact).abs() < 1e-6);
        let mut sm = vec![1.0f32, 2.0, 3.0];
        softmax_inplace(&mut sm);
        assert!((sm.iter().sum::<f32>() - 1.0).abs() < 1e-6 && sm[2] > sm[1]);
    }

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut o = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                o[i * n + j] = (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum();
            }
        }
        o
    }

    #[test]
    fn gemm_layouts_match_naive() {
        let (m, n, k) = (37, 29, 53);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let want = naive(&a, &b, m, n, k);
        let mut out = vec![0.0; m * n];
        gemm(
            m,
            n,
            k,
            View::rm(&a, k),
            View::rm(&b, n),
            &mut out,
            n,
            false,
            true,
        );
        for (x, y) in out.iter().zip(&want) {
            assert!((x - y).abs() < 1e-4);
        }
        // b^T stored as [n, k]: linear() must give the same.
        let mut bt = vec![0.0; n * k];
        for t in 0..k {
            for j in 0..n {
                bt[j * k + t] = b[t * n + j];
            }
        }
        let mut out2 = vec![1.0; m * n];
        linear(&a, &bt, m, n, k, &mut out2, true);
        for (x, y) in out2.iter().zip(&want) {
            assert!((x - (y + 1.0)).abs() < 1e-4);
        }
    }

    #[test]
    fn small_m_linear_matches_gemm() {
        let (n, k) = (300, 1000); // n*k above the threshold, k not a multiple of 16
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
            .collect();
        for m in 1..=SMALL_M {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 5 % 17) as f32 - 8.0) / 9.0)
                .collect();
            let mut want = vec![0.0; m * n];
            gemm(
                m,
                n,
                k,
                View::rm(&x, k),
                View::t(&w, k),
                &mut want,
                n,
                false,
                false,
            );
            let mut got = vec![0.5; m * n];
            linear(&x, &w, m, n, k, &mut got, true);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - 0.5 - w).abs() < 1e-3 * (1.0 + w.abs()), "{g} vs {w}");
            }
        }
    }

    /// Every row of `linear_rows` is bit-identical to that row computed alone, whatever `m`
    /// (the four-row kernel and the one-row tail must agree exactly).
    #[test]
    fn linear_rows_is_batch_invariant() {
        let (n, k) = (70, 203); // k: 6 blocks of 32, a 16-block and a scalar tail
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.3)
            .collect();
        let x: Vec<f32> = (0..9 * k)
            .map(|i| ((i * 5 % 17) as f32 - 8.0) / 9.1)
            .collect();
        let mut all = vec![0.0; 9 * n];
        linear_rows(&x, &w, 9, n, k, &mut all, false);
        for i in 0..9 {
            let mut one = vec![0.0; n];
            linear_rows(&x[i * k..(i + 1) * k], &w, 1, n, k, &mut one, false);
            assert_eq!(&all[i * n..(i + 1) * n], &one[..], "row {i}");
        }
    }

    #[test]
    fn rope_inverse_undoes_forward() {
        let rope = Rope::new(vec![1.0, 0.1, 0.01, 0.001], 16, 1.0);
        let orig: Vec<f32> = (0..3 * 2 * 8).map(|i| (i as f32).sin()).collect();
        let mut x = orig.clone();
        let pos = [0, 5, 15];
        rope.apply(&mut x, 2, &pos, false);
        assert!(x.iter().zip(&orig).any(|(a, b)| (a - b).abs() > 1e-3));
        rope.apply(&mut x, 2, &pos, true);
        for (a, b) in x.iter().zip(&orig) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
