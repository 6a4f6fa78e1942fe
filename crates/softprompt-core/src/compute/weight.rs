//! A frozen weight matrix `[rows, cols]` (HF `[out, in]` layout) and the two products a
//! prompt-tuning pass needs from it: `y = x @ W^T` (forward) and `dx = dy @ W` (the input
//! gradient). The matrix is kept either as f32 or, for a GGUF base loaded with
//! `--weights quantized`, in its GGUF block quantization: then both products dequantize a
//! tile of rows at a time (about 1 MiB of f32) and run the f32 kernels on it, so the model
//! holds a quarter to an eighth of the f32 bytes and never a full f32 copy.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::compute::bf16::PackedBf16;
use crate::compute::kernels::{self, gemm, View};
use crate::compute::quant::{dequantize_blocks, GgmlType};
use crate::Tensor;

/// Largest product a quantized weight computes row by row ([`QMatrix::linear_rows`]) outside
/// exact mode. SmolLM2-135M Q4_1, a decode step of 32 sequences: 224 tokens/s row by row in
/// groups of 4 input rows, 314 in groups of 8, 126 through dequantized tiles and the GEMM
/// (2-core AMD EPYC).
const QUANT_ROWS_MAX: usize = 32;

/// Input rows dotted with one in-register expansion of a quantized block
/// ([`QMatrix::row_dot`]): two accumulators each, 16 of the 32 vector registers.
const ROW_GROUP: usize = 8;

/// How the frozen base keeps its matrices in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// Everything dequantized to f32 at load (exact reference path).
    #[default]
    F32,
    /// GGUF matrices stay in their stored block type (Q4_0, Q4_1, Q4_K, Q8_0, ...), dequantized
    /// tile by tile inside each product. GGUF models only.
    Quantized,
    /// Matrices rounded to bf16 and packed for AMX tiles (f32 accumulation; activations
    /// rounded to bf16 per product), the token table included (input rows are read back
    /// from it).
    Bf16,
}

impl WeightFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" => Some(Self::F32),
            "quantized" | "q" => Some(Self::Quantized),
            "bf16" => Some(Self::Bf16),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Quantized => "quantized",
            Self::Bf16 => "bf16",
        }
    }
}

/// GGUF blocks of a row-major `[rows, cols]` matrix: row `r` is
/// `data[r * row_bytes .. (r + 1) * row_bytes]`, `cols / block_size` blocks.
#[derive(Clone, Debug)]
pub struct QMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: Vec<u8>,
}

impl QMatrix {
    /// Checks that rows are whole blocks and `data` holds exactly `rows` rows.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self, String> {
        let bs = ty.block_size();
        if cols % bs != 0 {
            return Err(format!(
                "{} rows of {cols} values are not whole blocks of {bs}",
                ty.name()
            ));
        }
        let row_bytes = cols / bs * ty.type_size();
        if data.len() != rows * row_bytes {
            return Err(format!(
                "{} matrix [{rows}, {cols}] needs {} bytes, got {}",
                ty.name(),
                rows * row_bytes,
                data.len()
            ));
        }
        Ok(QMatrix {
            ty,
            rows,
            cols,
            row_bytes,
            data,
        })
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// The same matrix with its rows reordered: new row `r` is old row `src(r)`.
    pub fn permute_rows(&self, src: impl Fn(usize) -> usize) -> Self {
        let rb = self.row_bytes;
        let mut data = Vec::with_capacity(self.data.len());
        for r in 0..self.rows {
            let s = src(r);
            data.extend_from_slice(&self.data[s * rb..(s + 1) * rb]);
        }
        QMatrix { data, ..*self }
    }

    /// Dequantize rows `r0..r0 + out.len() / cols` into `out` (`[n, cols]`).
    pub fn dequant_rows(&self, r0: usize, out: &mut [f32]) {
        let n = out.len() / self.cols;
        let src = &self.data[r0 * self.row_bytes..(r0 + n) * self.row_bytes];
        dequantize_blocks(self.ty, src, out);
    }

    /// Like [`QMatrix::dequant_rows`], split over the rayon pool by rows.
    fn dequant_rows_par(&self, r0: usize, out: &mut [f32]) {
        const ROWS_PER_TASK: usize = 32;
        out.par_chunks_mut(ROWS_PER_TASK * self.cols)
            .enumerate()
            .for_each(|(i, o)| self.dequant_rows(r0 + i * ROWS_PER_TASK, o));
    }

    /// `y[m, rows] (+)= x[m, cols] @ W^T` with every element one dot product computed the
    /// same way whatever `m` is (batch-invariant): the dequantized row dotted in the order of
    /// [`kernels::dot`]. Q4_0/Q4_1/Q5_0/Q8_0/Q4_K blocks are expanded in registers inside the
    /// dot product (AVX-512), once for every [`ROW_GROUP`] input rows; other types dequantize
    /// each weight row once to a buffer. The decoding path.
    pub fn linear_rows(&self, x: &[f32], m: usize, y: &mut [f32], accumulate: bool) {
        const BLOCK: usize = 32; // weight rows per task
        let (n, k) = (self.rows, self.cols);
        assert!(
            x.len() >= m * k && y.len() >= m * n,
            "linear_rows: bad sizes"
        );
        let in_registers = self.row_kernel();
        let rows: Vec<&[f32]> = (0..m).map(|i| &x[i * k..(i + 1) * k]).collect();
        kernels::column_blocks(m, n, BLOCK, y, accumulate, |r0, r1, out| {
            let width = r1 - r0;
            // One dequantized row (types without a register kernel only).
            let mut buf = vec![0.0f32; if in_registers { 0 } else { k }];
            let mut d = [0.0f32; ROW_GROUP];
            for (j, r) in (r0..r1).enumerate() {
                let wr = &self.data[r * self.row_bytes..(r + 1) * self.row_bytes];
                if !in_registers {
                    dequantize_blocks(self.ty, wr, &mut buf);
                }
                for (gi, xs) in rows.chunks(ROW_GROUP).enumerate() {
                    let d = &mut d[..xs.len()];
                    if in_registers {
                        self.row_dot(wr, xs, d);
                    } else {
                        for (o, xi) in d.iter_mut().zip(xs) {
                            *o = kernels::dot(xi, &buf);
                        }
                    }
                    for (t, v) in d.iter().enumerate() {
                        out[(gi * ROW_GROUP + t) * width + j] = *v;
                    }
                }
            }
        });
    }

    /// True when [`Self::row_dot`] dequantizes in registers (no row buffer needed).
    fn row_kernel(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            matches!(
                self.ty,
                GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q4_K
            ) && std::arch::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// `out[t] = dot(xs[t], row)` for one quantized row `wr` and up to [`ROW_GROUP`] input
    /// rows, expanded in registers (only where [`Self::row_kernel`]). Each result depends only
    /// on its own input row (the same operations whatever the number of rows).
    fn row_dot(&self, wr: &[u8], xs: &[&[f32]], out: &mut [f32]) {
        debug_assert!(self.row_kernel() && xs.len() == out.len());
        #[cfg(target_arch = "x86_64")]
        {
            macro_rules! groups {
                ($($g:literal)*) => {
                    match xs.len() {
                        $($g => {
                            let xs: &[&[f32]; $g] = xs.try_into().expect("matched length");
                            // SAFETY: row_kernel(): the feature was detected; `wr` is one row
                            // of whole blocks and every input row has `cols` values (checked
                            // by the caller's size assert).
                            let d = unsafe {
                                match self.ty {
                                    GgmlType::Q4_K | GgmlType::Q5_0 => {
                                        qdot_avx512_k(self.ty, wr, xs, self.cols)
                                    }
                                    _ => qdot_avx512(self.ty, wr, xs, self.cols),
                                }
                            };
                            out.copy_from_slice(&d);
                        })*
                        g => unreachable!("row_dot: {g} rows"),
                    }
                };
            }
            groups!(1 2 3 4 5 6 7 8);
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("no register kernel off x86-64: {wr:?} {xs:?} {out:?}")
    }
}

/// One quantized row (Q4_0, Q4_1 or Q8_0: 32 values per block) dotted with `G` f32 rows
/// (at most [`ROW_GROUP`]): each block is expanded to two vectors of 16 f32 in registers, then
/// one FMA per input row and half-block into that row's own two accumulators.
///
/// # Safety
/// The CPU has AVX512-F; `ty` is Q4_0, Q4_1 or Q8_0; `wr` holds one row of `cols` values in
/// those blocks and every row of `xs` holds at least `cols` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn qdot_avx512<const G: usize>(
    ty: GgmlType,
    wr: &[u8],
    xs: &[&[f32]; G],
    cols: usize,
) -> [f32; G] {
    use std::arch::x86_64::*;
    let ts = ty.type_size();
    let mut acc = RowAcc::<G>::new();
    for blk in 0..cols / 32 {
        let b = &wr[blk * ts..(blk + 1) * ts];
        let (w0, w1) = match ty {
            GgmlType::Q8_0 => {
                let d = f16x16(b, 0);
                let q0 = _mm_loadu_si128(b.as_ptr().add(2) as *const __m128i);
                let q1 = _mm_loadu_si128(b.as_ptr().add(18) as *const __m128i);
                (
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), d),
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), d),
                )
            }
            _ => {
                // Q4_0: (q - 8)·d; Q4_1: q·d + m. Low nibbles are values 0..16, high 16..32.
                let (vd, vm, off) = if ty == GgmlType::Q4_1 {
                    (f16x16(b, 0), f16x16(b, 2), 4)
                } else {
                    let d = f16x16(b, 0);
                    (d, _mm512_mul_ps(d, _mm512_set1_ps(-8.0)), 2)
                };
                let qs = _mm_loadu_si128(b.as_ptr().add(off) as *const __m128i);
                let mask = _mm_set1_epi8(0x0F);
                let lo = _mm_and_si128(qs, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
                (
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), vd, vm),
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)), vd, vm),
                )
            }
        };
        acc.add(xs, blk, w0, w1);
    }
    acc.sums()
}

/// [`qdot_avx512`] for Q5_0 (32 values per block) and Q4_K (256 per super-block), kept apart
/// so that the Q4_0/Q4_1/Q8_0 loop stays as the compiler optimised it (one kernel for all five
/// ran Q4_1 decoding 35% slower). One quantized row dotted with `G` f32 rows (at most
/// [`ROW_GROUP`]): each 32 values are expanded to two vectors of 16 f32 in registers (the
/// same arithmetic as [`dequantize_blocks`]), then one FMA per input row and half into that
/// row's own two accumulators ([`RowAcc`]).
///
/// # Safety
/// The CPU has AVX512-F; `ty` is one of those types; `wr` holds one row of `cols` values in
/// its blocks and every row of `xs` holds at least `cols` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn qdot_avx512_k<const G: usize>(
    ty: GgmlType,
    wr: &[u8],
    xs: &[&[f32]; G],
    cols: usize,
) -> [f32; G] {
    use std::arch::x86_64::*;
    let ts = ty.type_size();
    let mut acc = RowAcc::<G>::new();
    let mask = _mm_set1_epi8(0x0F);
    if ty == GgmlType::Q4_K {
        // Super-blocks of 256 (d, dmin, scales[12], qs[128]): d and dmin are converted once,
        // each 32 bytes of qs loaded once for its two sub-blocks: sub-block 2c is the low
        // nibbles of qs[32c..][..32], 2c + 1 the high ones.
        for sb in 0..cols / 256 {
            let b = &wr[sb * ts..(sb + 1) * ts];
            let (d, dmin) = (f16x16(b, 0), f16x16(b, 2));
            for c in 0..4 {
                let qs = b.as_ptr().add(16 + 32 * c);
                let q = [
                    _mm_loadu_si128(qs as *const __m128i),
                    _mm_loadu_si128(qs.add(16) as *const __m128i),
                ];
                for h in 0..2 {
                    let j = 2 * c + h;
                    let (sc, m) = crate::compute::quant::k_scale_min(j, &b[4..16]);
                    let vd = _mm512_mul_ps(d, _mm512_set1_ps(sc as f32)); // d·sc
                    let vmin = _mm512_mul_ps(dmin, _mm512_set1_ps(m as f32)); // dmin·m
                    let w = q.map(|q| {
                        let q = if h == 0 { q } else { _mm_srli_epi16(q, 4) };
                        let v = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(q, mask)));
                        _mm512_sub_ps(_mm512_mul_ps(vd, v), vmin)
                    });
                    acc.add(xs, sb * 8 + j, w[0], w[1]);
                }
            }
        }
    } else {
        // Q5_0: (q - 16)·d; q = low nibble | bit j of qh << 4 (values 0..16), high nibble |
        // bit j + 16 of qh << 4 (values 16..32).
        for blk in 0..cols / 32 {
            let b = &wr[blk * ts..(blk + 1) * ts];
            let d = f16x16(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = _mm_loadu_si128(b.as_ptr().add(6) as *const __m128i);
            let five = |nib: __m128i, bits: u32| {
                let q = _mm512_cvtepu8_epi32(_mm_and_si128(nib, mask));
                let q = _mm512_add_epi32(q, _mm512_maskz_set1_epi32(bits as u16, 16));
                _mm512_mul_ps(
                    _mm512_cvtepi32_ps(_mm512_sub_epi32(q, _mm512_set1_epi32(16))),
                    d,
                )
            };
            acc.add(xs, blk, five(qs, qh), five(_mm_srli_epi16(qs, 4), qh >> 16));
        }
    }
    acc.sums()
}

/// An f16 at `b[i..i + 2]` broadcast to 16 f32 lanes (vcvtph2ps).
///
/// # Safety
/// The CPU has AVX512-F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn f16x16(b: &[u8], i: usize) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    _mm512_cvtph_ps(_mm256_set1_epi16(
        u16::from_le_bytes([b[i], b[i + 1]]) as i16
    ))
}

/// The accumulators of the quantized register kernels: per input row, one vector for the first
/// and one for the second 16 of every 32 values, summed at the end as [`kernels::dot`] does.
#[cfg(target_arch = "x86_64")]
struct RowAcc<const G: usize> {
    lo: [std::arch::x86_64::__m512; G],
    hi: [std::arch::x86_64::__m512; G],
}

#[cfg(target_arch = "x86_64")]
impl<const G: usize> RowAcc<G> {
    /// # Safety
    /// The CPU has AVX512-F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn new() -> Self {
        use std::arch::x86_64::*;
        RowAcc {
            lo: [_mm512_setzero_ps(); G],
            hi: [_mm512_setzero_ps(); G],
        }
    }

    /// Adds values `blk*32 .. +32` of the weight row, expanded to `w0` / `w1`, times the same
    /// values of every input row: one FMA per row and half.
    ///
    /// # Safety
    /// The CPU has AVX512-F; every row of `xs` holds at least `blk*32 + 32` values.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn add(
        &mut self,
        xs: &[&[f32]; G],
        blk: usize,
        w0: std::arch::x86_64::__m512,
        w1: std::arch::x86_64::__m512,
    ) {
        use std::arch::x86_64::*;
        for ((x, lo), hi) in xs.iter().zip(&mut self.lo).zip(&mut self.hi) {
            let px = x.as_ptr().add(blk * 32);
            *lo = _mm512_fmadd_ps(w0, _mm512_loadu_ps(px), *lo);
            *hi = _mm512_fmadd_ps(w1, _mm512_loadu_ps(px.add(16)), *hi);
        }
    }

    /// The dot product of each input row.
    ///
    /// # Safety
    /// The CPU has AVX512-F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn sums(self) -> [f32; G] {
        use std::arch::x86_64::*;
        std::array::from_fn(|t| _mm512_reduce_add_ps(_mm512_add_ps(self.lo[t], self.hi[t])))
    }
}

/// f32 values per dequantized tile (1 MiB: stays in L2 while the product reads it).
const TILE_FLOATS: usize = 1 << 18;

/// Rows per dequantized tile of a `[rows, cols]` matrix: about 1 MiB of f32, a multiple of 16.
fn tile_rows(rows: usize, cols: usize) -> usize {
    ((TILE_FLOATS / cols.max(1)) / 16 * 16).clamp(16, rows.max(16))
}

/// A frozen matrix `[rows, cols]` in f32 or in GGUF blocks.
#[derive(Clone, Debug)]
pub enum Weight {
    F32(Tensor),
    Quant(QMatrix),
    Bf16(PackedBf16),
}

impl From<Tensor> for Weight {
    fn from(t: Tensor) -> Self {
        Weight::F32(t)
    }
}

impl Weight {
    pub fn rows(&self) -> usize {
        match self {
            Weight::F32(t) => t.shape[0],
            Weight::Quant(q) => q.rows,
            Weight::Bf16(b) => b.rows(),
        }
    }
    pub fn cols(&self) -> usize {
        match self {
            Weight::F32(t) => t.shape.get(1).copied().unwrap_or(1),
            Weight::Quant(q) => q.cols,
            Weight::Bf16(b) => b.cols(),
        }
    }
    pub fn numel(&self) -> usize {
        self.rows() * self.cols()
    }
    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        match self {
            Weight::F32(t) => t.data.len() * 4,
            Weight::Quant(q) => q.data.len(),
            Weight::Bf16(b) => b.bytes(),
        }
    }
    /// How it is stored: "f32" or the GGML type name.
    pub fn dtype(&self) -> &'static str {
        match self {
            Weight::F32(_) => "f32",
            Weight::Quant(q) => q.ty.name(),
            Weight::Bf16(_) => "bf16",
        }
    }
    /// The f32 tensor, when kept as f32.
    pub fn as_f32(&self) -> Option<&Tensor> {
        match self {
            Weight::F32(t) => Some(t),
            _ => None,
        }
    }
    /// Row `i` as f32 (borrowed when stored as f32).
    pub fn row(&self, i: usize) -> Cow<'_, [f32]> {
        match self {
            Weight::F32(t) => Cow::Borrowed(t.row(i)),
            _ => {
                let mut out = vec![0.0; self.cols()];
                self.rows_into(i, &mut out);
                Cow::Owned(out)
            }
        }
    }
    /// The whole matrix as f32 (a dequantized copy for a quantized weight).
    pub fn to_f32(&self) -> Cow<'_, Tensor> {
        match self {
            Weight::F32(t) => Cow::Borrowed(t),
            _ => {
                let mut data = vec![0.0; self.numel()];
                self.rows_into(0, &mut data);
                Cow::Owned(Tensor::new(vec![self.rows(), self.cols()], data))
            }
        }
    }
    /// Values `a..b` of the row-major matrix as f32.
    pub fn read_flat(&self, a: usize, b: usize) -> Vec<f32> {
        match self {
            Weight::F32(t) => t.data[a..b].to_vec(),
            _ => {
                let k = self.cols();
                let (r0, r1) = (a / k, b.div_ceil(k));
                let mut rows = vec![0.0; (r1 - r0) * k];
                self.rows_into(r0, &mut rows);
                rows[a - r0 * k..b - r0 * k].to_vec()
            }
        }
    }
    /// Visit the matrix as f32 in row-major chunks of whole rows (`(first_row, values)`),
    /// without a full f32 copy of a quantized matrix.
    pub fn for_each_rows(&self, mut f: impl FnMut(usize, &[f32])) {
        match self {
            Weight::F32(t) => f(0, &t.data),
            _ => {
                let (rows, k) = (self.rows(), self.cols());
                let t = tile_rows(rows, k);
                let mut buf = vec![0.0; t * k];
                for r0 in (0..rows).step_by(t) {
                    let tile = &mut buf[..t.min(rows - r0) * k];
                    self.rows_into(r0, tile);
                    f(r0, tile);
                }
            }
        }
    }

    /// Rows `r0..` into `out` (`[n, cols]`), as f32 (not for an f32 weight: borrow it).
    fn rows_into(&self, r0: usize, out: &mut [f32]) {
        match self {
            Weight::F32(t) => out.copy_from_slice(&t.data[r0 * t.shape[1]..][..out.len()]),
            Weight::Quant(q) => q.dequant_rows_par(r0, out),
            Weight::Bf16(b) => {
                let k = b.cols();
                out.par_chunks_mut(k)
                    .enumerate()
                    .for_each(|(i, o)| b.row(r0 + i, o));
            }
        }
    }

    /// `y[m, rows] (+)= x[m, cols] @ W^T`. `exact`: every element one fixed-order dot product
    /// ([`kernels::linear_rows`]), so a row's result does not depend on `m`.
    pub fn linear(&self, x: &[f32], m: usize, y: &mut [f32], accumulate: bool, exact: bool) {
        let (n, k) = (self.rows(), self.cols());
        match self {
            Weight::F32(t) if exact => kernels::linear_rows(x, &t.data, m, n, k, y, accumulate),
            Weight::F32(t) => kernels::linear(x, &t.data, m, n, k, y, accumulate),
            Weight::Bf16(b) => b.linear(x, m, y, accumulate),
            // Decoding batches: each row dequantized in registers and dotted with every input
            // row beats dequantizing tiles for the f32 GEMM up to a few dozen rows.
            Weight::Quant(q) if exact || m <= QUANT_ROWS_MAX => q.linear_rows(x, m, y, accumulate),
            Weight::Quant(q) => {
                assert!(x.len() >= m * k && y.len() >= m * n, "linear: bad sizes");
                let t = tile_rows(q.rows, q.cols);
                let mut tile = vec![0.0f32; t * k]; // [t, k] dequantized rows r0..r0+t
                for r0 in (0..n).step_by(t) {
                    let w = t.min(n - r0);
                    let tile = &mut tile[..w * k];
                    q.dequant_rows_par(r0, tile);
                    // y[:, r0..r0+w] (+)= x @ tile^T, written in place (row stride n).
                    let dst = &mut y[r0..(m - 1) * n + r0 + w];
                    gemm(
                        m,
                        w,
                        k,
                        View::rm(x, k),
                        View::t(tile, k),
                        dst,
                        n,
                        accumulate,
                        true,
                    );
                }
            }
        }
    }

    /// `dx[m, cols] (+)= dy[m, rows] @ W`.
    pub fn linear_dx(&self, dy: &[f32], m: usize, dx: &mut [f32], accumulate: bool) {
        let (n, k) = (self.rows(), self.cols());
        match self {
            Weight::F32(t) => kernels::linear_dx(dy, &t.data, m, n, k, dx, accumulate),
            Weight::Bf16(b) => b.linear_dx(dy, m, dx, accumulate),
            Weight::Quant(q) => {
                assert!(
                    dy.len() >= m * n && dx.len() >= m * k,
                    "linear_dx: bad sizes"
                );
                if m == 0 {
                    return;
                }
                let t = tile_rows(q.rows, q.cols);
                let mut tile = vec![0.0f32; t * k]; // [t, k]
                for r0 in (0..n).step_by(t) {
                    let w = t.min(n - r0);
                    let tile = &mut tile[..w * k];
                    q.dequant_rows_par(r0, tile);
                    // dx (+)= dy[:, r0..r0+w] @ tile; dy columns read with row stride n.
                    let a = View {
                        data: &dy[r0..(m - 1) * n + r0 + w],
                        rs: n,
                        cs: 1,
                    };
                    gemm(
                        m,
                        k,
                        w,
                        a,
                        View::rm(tile, k),
                        dx,
                        k,
                        accumulate || r0 > 0,
                        true,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A random matrix of block type `ty`: its f16 scale (and Q4_1/Q4_K min) in range, the
    /// rest random bytes.
    fn random_q(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> QMatrix {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let blocks = rows * cols / ty.block_size();
        let mut data = Vec::with_capacity(blocks * ty.type_size());
        for _ in 0..blocks {
            let scale = half::f16::from_f32(rng.gen_range(0.001..0.02)).to_le_bytes();
            data.extend_from_slice(&scale);
            if matches!(ty, GgmlType::Q4_1 | GgmlType::Q4_K) {
                let min = half::f16::from_f32(rng.gen_range(-0.1..0.0)).to_le_bytes();
                data.extend_from_slice(&min);
            }
            while data.len() % ty.type_size() != 0 {
                data.push(rng.gen());
            }
        }
        QMatrix::new(ty, rows, cols, data).unwrap()
    }

    fn max_rel(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-6);
        a.iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// Both products of a quantized matrix equal those of its f32 copy, on every path (blocked
    /// GEMM, few rows, exact) and across tile edges (4100 rows: a full tile and a partial one).
    #[test]
    fn quantized_products_match_dequantized_f32() {
        for (ty, rows, cols) in [
            (GgmlType::Q8_0, 4100, 64),
            (GgmlType::Q4_1, 300, 96),
            (GgmlType::Q4_0, 70, 64),
            (GgmlType::Q4_K, 40, 512),
            (GgmlType::Q5_0, 50, 96),
        ] {
            let q = Weight::Quant(random_q(ty, rows, cols, 7));
            let f = Weight::F32(q.to_f32().into_owned());
            let mut rng = rand::rngs::StdRng::seed_from_u64(1);
            for m in [1, 3, 37] {
                let x: Vec<f32> = (0..m * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let dy: Vec<f32> = (0..m * rows).map(|_| rng.gen_range(-1.0..1.0)).collect();
                for exact in [false, true] {
                    for acc in [false, true] {
                        let init: Vec<f32> = (0..m * rows).map(|i| i as f32 * 1e-3).collect();
                        let (mut y1, mut y2) = (init.clone(), init);
                        q.linear(&x, m, &mut y1, acc, exact);
                        f.linear(&x, m, &mut y2, acc, exact);
                        let e = max_rel(&y1, &y2);
                        assert!(e < 1e-5, "{ty:?} m={m} exact={exact} acc={acc}: {e}");
                        if exact {
                            assert_eq!(y1, y2, "exact path is the same dot per element");
                        }
                    }
                }
                for acc in [false, true] {
                    let init: Vec<f32> = (0..m * cols).map(|i| i as f32 * 1e-3).collect();
                    let (mut d1, mut d2) = (init.clone(), init);
                    q.linear_dx(&dy, m, &mut d1, acc);
                    f.linear_dx(&dy, m, &mut d2, acc);
                    let e = max_rel(&d1, &d2);
                    assert!(e < 1e-5, "{ty:?} dx m={m} acc={acc}: {e}");
                }
            }
            // Rows, flat reads and chunked visits see the same values.
            let t = f.as_f32().unwrap();
            assert_eq!(&*q.row(rows - 1), t.row(rows - 1));
            assert_eq!(
                q.read_flat(5, cols * 2 + 7),
                t.data[5..cols * 2 + 7].to_vec()
            );
            let mut seen = Vec::new();
            q.for_each_rows(|r0, v| {
                assert_eq!(r0 * cols, seen.len());
                seen.extend_from_slice(v)
            });
            assert_eq!(seen, t.data);
            assert!(q.bytes() * 3 < f.bytes());
        }
    }

    #[test]
    fn permuted_rows() {
        let q = random_q(GgmlType::Q8_0, 4, 32, 3);
        let p = Weight::Quant(q.permute_rows(|r| 3 - r));
        let q = Weight::Quant(q);
        for r in 0..4 {
            assert_eq!(p.row(r), q.row(3 - r));
        }
    }

    #[test]
    fn bad_block_shapes_are_refused() {
        assert!(QMatrix::new(GgmlType::Q8_0, 2, 33, vec![0; 68]).is_err());
        assert!(QMatrix::new(GgmlType::Q8_0, 2, 32, vec![0; 67]).is_err());
    }
}
