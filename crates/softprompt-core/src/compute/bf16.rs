//! bf16 matrix products (f32 accumulation) for frozen weights, on the fastest instructions
//! the CPU has ([`kernel`]): Intel AMX tiles (`tdpbf16ps`), AVX512-BF16 (`vdpbf16ps` on zmm
//! registers: AMD Zen 4 and later, Intel Cooper Lake and later), or a portable fallback.
//!
//! A weight `w[n, k]` (HF `[out, in]` layout) is rounded to bf16 once and packed by
//! [`PackedBf16::pack`] as the right operand of `y = x W^T`. The right operand of `dx = dy W`
//! is transposed from it during each backward, [`DX_CHUNK`] rows of W at a time
//! ([`BTiles::transposed`]), so a model holds 2 bytes per weight in training too. Both products
//! are then the same operation, `C[M, N] (+)= A[M, K] B[K, N]`, with A the f32 activations
//! (converted to bf16 per call) and B a packed weight.
//!
//! # Tile layout
//! An AMX tile register holds 16 rows of 64 bytes. `tdpbf16ps C, A, B` computes
//! `C[16, 16] (f32) += A[16, 32] (bf16) * B[32, 16] (bf16)`, with B in "VNNI" order: tile row
//! `r` holds, for each output column `j`, the pair `(B[2r, j], B[2r + 1, j])`.
//! - B (weights): `[N/16][K/32]` tiles of 16 x 32 bf16 (1 KiB each), tile `(nt, kt)` row `r`
//!   element `2j + p` = `B[kt*32 + 2r + p, nt*16 + j]`. The K tiles of one 16-column strip
//!   are consecutive, so the kernel walks memory linearly. N is padded to 32, K to 32,
//!   with zeros.
//! - A (activations): `[M/16][K/32]` tiles of 16 rows x 32 bf16 (1 KiB each), row-major inside
//!   the tile; M padded to 32 and K to 32 with zeros. Packed once per call (per K chunk).
//! - C (f32 output): each parallel task accumulates its share in an aligned thread-local buffer
//!   of 32 x 32 blocks (4 KiB each, rows 128 bytes apart) and copies it into the output at the
//!   end, clipping the edges (tile loads/stores on unaligned rows run ~4x slower).
//!
//! The kernel computes a 32 x 32 block of C with 2 x 2 accumulator tiles (tmm0..3), two A
//! tiles (tmm4, tmm5) and two B tiles (tmm6, tmm7), walking K 32 at a time. All packed
//! buffers are 64-byte aligned runs of 1 KiB tiles.
//!
//! AVX512-BF16 reads the same tiles: a B tile row (16 columns x a bf16 pair) is one zmm
//! register, an A row's pair is broadcast, and a 32 x 32 block is computed as four passes of
//! 8 rows x 32 columns (16 accumulators). Products of at most 16 rows (decoding) instead stream
//! each 16-column strip of B once for all rows.
//!
//! Without either (or off x86-64 Linux) the same packed weights are dequantized in chunks and
//! multiplied with [`crate::compute::kernels::gemm`] (activations still rounded to bf16, so every path
//! computes the same product up to f32 summation order).

use crate::compute::kernels::{self, View};
use rayon::prelude::*;
use std::cell::Cell;
use std::sync::OnceLock;

/// Rows of an A tile / C tile.
const TR: usize = 16;
/// bf16 values in one tile row (64 bytes); K step of one `tdpbf16ps`.
const TK: usize = 32;
/// u16 elements in one A or B tile (16 x 32 bf16 = 1 KiB).
const TILE: usize = TR * TK;
/// Output block edge computed by one kernel call (2 x 2 tiles of 16 x 16).
const BLK: usize = 32;
/// Largest K for which the activations are packed once per call for all rows; for larger K
/// (the down projection of a model with F > 4096) each task packs its rows [`KC`] columns at a time.
const KC_MAX: usize = 4096;
const KC: usize = 1024;
/// Rows of W (the reduction of `dx = dy W`) transposed into the backward operand at a time:
/// the transient operand is at most `k x 4096` bf16 (16 MiB at k = 2048), and each chunk is
/// short enough for the activations to be packed once for all rows.
const DX_CHUNK: usize = KC_MAX;

/// True when AMX-BF16 can be used in this process (CPU + OS permission granted). Cached.
pub fn available() -> bool {
    static AVAIL: OnceLock<bool> = OnceLock::new();
    *AVAIL.get_or_init(detect)
}

/// The instructions a bf16 product runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AMX tiles (`tdpbf16ps`): Intel Sapphire Rapids and later.
    Amx,
    /// AVX512-BF16 (`vdpbf16ps` on zmm registers): AMD Zen 4 and later, Intel Cooper Lake.
    Dpbf16,
    /// Dequantized chunks through the f32 GEMM.
    Portable,
}

/// The fastest kernel this process can run. Cached.
pub fn kernel() -> Kernel {
    static K: OnceLock<Kernel> = OnceLock::new();
    *K.get_or_init(|| {
        if available() {
            return Kernel::Amx;
        }
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16") {
            return Kernel::Dpbf16;
        }
        Kernel::Portable
    })
}

/// True when a bf16 product row's result does not depend on the other rows of the product
/// (the server's promise): on AMX and AVX512-BF16 every output element is one sum over K in a
/// fixed order, whatever the number of rows. The portable path goes through the blocked f32
/// GEMM, which makes no such promise.
pub fn batch_invariant() -> bool {
    kernel() != Kernel::Portable
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    #[allow(unused_unsafe)]
    // SAFETY: cpuid is always available on x86-64.
    let (max_leaf, edx7) = unsafe { (__cpuid(0).eax, __cpuid_count(7, 0).edx) };
    if max_leaf < 7 {
        return false;
    }
    let amx_bf16 = edx7 & (1 << 22) != 0;
    let amx_tile = edx7 & (1 << 24) != 0;
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    // arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): ask the kernel for the tile data
    // state (Linux >= 5.16). Permission is per process; asking twice is harmless.
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a plain syscall; it reads no memory of ours. rcx/r11 are clobbered by `syscall`.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Round-to-nearest-even f32 -> bf16 (NaN stays a quiet NaN).
#[inline(always)]
fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        ((b >> 16) | 0x40) as u16
    } else {
        (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }
}

#[inline(always)]
fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// One 1 KiB tile of bf16 bits, 64-byte aligned: tile loads from unaligned rows (each row
/// split over two cache lines) run about 4x slower.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Tile([u16; TILE]);

const ZERO_TILE: Tile = Tile([0; TILE]);

/// The bf16 elements of a run of tiles.
fn flat(t: &[Tile]) -> &[u16] {
    // SAFETY: Tile is repr(C) over [u16; TILE] with no padding (1024 bytes, align 64).
    unsafe { std::slice::from_raw_parts(t.as_ptr() as *const u16, t.len() * TILE) }
}

fn flat_mut(t: &mut [Tile]) -> &mut [u16] {
    // SAFETY: as in `flat`.
    unsafe { std::slice::from_raw_parts_mut(t.as_mut_ptr() as *mut u16, t.len() * TILE) }
}

/// The right operand `B[K, N]` of a product, bf16 in VNNI tiles (see the module doc).
#[derive(Clone)]
struct BTiles {
    /// Logical N (output columns) and K (reduction).
    n: usize,
    k: usize,
    /// Tile counts: `nt = pad32(n) / 16`, `kt = pad32(k) / 32`.
    nt: usize,
    kt: usize,
    /// `[nt][kt]` tiles of `[16 rows][16 cols x 2]` bf16 bits.
    data: Vec<Tile>,
}

impl BTiles {
    /// Packs `B[kk, nn] = get(nn, kk)` for `nn < n`, `kk < k`.
    fn pack(n: usize, k: usize, get: impl Fn(usize, usize) -> f32 + Sync) -> Self {
        let nt = n.div_ceil(BLK) * 2;
        let kt = k.div_ceil(TK);
        let mut data = vec![ZERO_TILE; nt * kt]; // [nt][kt] x [16][32]
        if !data.is_empty() {
            flat_mut(&mut data)
                .par_chunks_mut(kt * TILE)
                .enumerate()
                .for_each(|(ntile, strip)| {
                    // strip: [kt][16][32], the K tiles of columns ntile*16 .. +16
                    for j in 0..TR {
                        let nn = ntile * TR + j;
                        if nn >= n {
                            break;
                        }
                        for kk in 0..k {
                            let (kti, kr) = (kk / TK, kk % TK);
                            strip[kti * TILE + (kr / 2) * TK + 2 * j + (kr & 1)] =
                                bf16(get(nn, kk));
                        }
                    }
                });
        }
        BTiles { n, k, nt, kt, data }
    }

    /// `B[kk, nn]` as f32.
    #[inline(always)]
    fn get(&self, kk: usize, nn: usize) -> f32 {
        let (ntile, j) = (nn / TR, nn % TR);
        let (kti, kr) = (kk / TK, kk % TK);
        bf16_to_f32(self.data[ntile * self.kt + kti].0[(kr / 2) * TK + 2 * j + (kr & 1)])
    }

    /// The operand `B'[nn, kk] = B[kk, nn]` for `nn` in `c0 .. c0 + len` (`c0` a multiple of
    /// 32), built in `data` (resized; every tile is overwritten): of a forward packing
    /// (`B = W^T`), the rows `c0 ..` of W as the right operand of `dx = dy W`.
    ///
    /// Tile `(s, t)` of B' (columns `16s ..`, reduction `c0 + 32t ..`) is half of the forward
    /// tiles `(2T, s/2)` and `(2T + 1, s/2)`, `T = c0/32 + t`, transposed in 4-value groups: a
    /// u64 of a forward tile row holds `W[j, 2q], W[j, 2q+1], W[j+1, 2q], W[j+1, 2q+1]`; the
    /// same u64 of B' holds them as `W[j, 2q], W[j+1, 2q], W[j, 2q+1], W[j+1, 2q+1]`.
    fn transposed(&self, c0: usize, len: usize, mut data: Vec<Tile>) -> BTiles {
        debug_assert!(c0.is_multiple_of(TK) && c0 + len <= self.n);
        let (nt, kt) = (2 * self.kt, len.div_ceil(TK));
        let t0 = c0 / TK;
        let wide = avx512_ok();
        data.resize(nt * kt, ZERO_TILE);
        data.par_chunks_mut(kt.max(1))
            .enumerate()
            .for_each(|(s, strip)| {
                let (h, kti) = (s % 2, s / 2);
                for (t, out) in strip.iter_mut().enumerate() {
                    let f0 = 2 * (t0 + t) * self.kt + kti;
                    let src = [&self.data[f0], &self.data[f0 + self.kt]];
                    transpose_tile(src, h, out, wide);
                }
            });
        BTiles {
            n: self.k,
            k: len,
            nt,
            kt,
            data,
        }
    }
}

/// One tile of [`BTiles::transposed`]: `src` the forward tiles of its two 16-row strips of W,
/// `h` which half of their 32 columns. Output row `8f + r` is column `r` of the 8 x 8 u64
/// matrix formed by rows `8h .. 8h + 8` of `src[f]`, each u64's middle u16 swapped.
#[inline(always)]
fn transpose_tile(src: [&Tile; 2], h: usize, out: &mut Tile, wide: bool) {
    #[cfg(target_arch = "x86_64")]
    if wide {
        // SAFETY: avx512f/bw were detected (`wide`); tiles are 1 KiB, 64-byte aligned.
        return unsafe { transpose_tile_avx512(src, h, out) };
    }
    let _ = wide;
    /// Swaps the middle two u16 of a u64.
    #[inline(always)]
    fn swap_mid(x: u64) -> u64 {
        (x & 0xffff_0000_0000_ffff) | ((x >> 16) & 0xffff_0000) | ((x << 16) & 0xffff_0000_0000)
    }
    // SAFETY: a Tile is 1 KiB, 64-byte aligned: 128 u64 ([16 rows][8]).
    let q = |t: &Tile| unsafe { &*(t as *const Tile as *const [u64; TILE / 4]) };
    let o = unsafe { &mut *(out as *mut Tile as *mut [u64; TILE / 4]) };
    for (r, row) in o.chunks_exact_mut(8).enumerate() {
        let s = q(src[r / 8]);
        for (c, v) in row.iter_mut().enumerate() {
            *v = swap_mid(s[(h * 8 + c) * 8 + r % 8]);
        }
    }
}

/// [`transpose_tile`] on zmm registers: per source tile, 8 row loads, an 8 x 8 u64 transpose
/// (unpack, then two rounds of two-source permutes), a byte shuffle for the u16 swap, 8 stores.
///
/// # Safety
/// The CPU has AVX512-F and AVX512-BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn transpose_tile_avx512(src: [&Tile; 2], h: usize, out: &mut Tile) {
    use std::arch::x86_64::*;
    // Bytes of each u64: u16 lanes 0, 2, 1, 3.
    let swap = _mm512_set4_epi32(0x0f0e_0b0a, 0x0d0c_0908, 0x0706_0302, 0x0504_0100);
    let lo128 = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
    let hi128 = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
    let lo256 = _mm512_set_epi64(11, 10, 9, 8, 3, 2, 1, 0);
    let hi256 = _mm512_set_epi64(15, 14, 13, 12, 7, 6, 5, 4);
    let po = out.0.as_mut_ptr();
    for (f, t) in src.iter().enumerate() {
        let p = t.0.as_ptr().add(h * 8 * TK);
        let r: [__m512i; 8] = std::array::from_fn(|i| {
            _mm512_shuffle_epi8(_mm512_load_si512(p.add(i * TK).cast()), swap)
        });
        // a[2i]: elements 0, 2, 4, 6 of rows 2i, 2i+1 interleaved; a[2i+1]: elements 1, 3, 5, 7.
        let a: [__m512i; 8] = std::array::from_fn(|i| {
            let (x, y) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_epi64(x, y)
            } else {
                _mm512_unpackhi_epi64(x, y)
            }
        });
        // b[4g + c]: column c (c < 2: also c + 4 in the upper half; c = 2, 3: columns 2, 3 / 6, 7)
        // of rows 4g .. 4g + 4.
        let b: [__m512i; 8] = std::array::from_fn(|i| {
            let (g, c) = (i / 4, i % 4);
            let (x, y) = (a[4 * g + (c & 1)], a[4 * g + 2 + (c & 1)]);
            _mm512_permutex2var_epi64(x, if c < 2 { lo128 } else { hi128 }, y)
        });
        for c in 0..8 {
            let (x, y) = (b[c % 4], b[4 + c % 4]);
            let col = _mm512_permutex2var_epi64(x, if c < 4 { lo256 } else { hi256 }, y);
            _mm512_store_si512(po.add((f * 8 + c) * TK).cast(), col);
        }
    }
}

/// A frozen weight `w[n, k]` (HF `[out, in]` layout) stored as bf16 (2 bytes per weight),
/// packed as `B = W^T [k, n]` for `y = x W^T`; `dx = dy W` transposes it chunk by chunk.
#[derive(Clone)]
pub struct PackedBf16 {
    n: usize,
    k: usize,
    /// B[k, n] = W^T
    fwd: BTiles,
}

impl std::fmt::Debug for PackedBf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedBf16[{}, {}]", self.n, self.k)
    }
}

impl PackedBf16 {
    /// Rounds `w[n, k]` to bf16 (nearest even) and packs it.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert!(
            w.len() >= n * k,
            "PackedBf16::pack: w has {} < {n}*{k}",
            w.len()
        );
        let fwd = BTiles::pack(n, k, |nn, kk| w[nn * k + kk]); // N = n, K = k
        PackedBf16 { n, k, fwd }
    }

    /// n (output features).
    pub fn rows(&self) -> usize {
        self.n
    }

    /// k (input features).
    pub fn cols(&self) -> usize {
        self.k
    }

    /// Row `r` of the (bf16-rounded) weight as f32: `out[k]`.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        for (c, o) in out.iter_mut().enumerate().take(self.k) {
            *o = self.fwd.get(c, r);
        }
    }

    /// Memory held by the packed weight (what a product streams).
    pub fn bytes(&self) -> usize {
        self.fwd.data.len() * std::mem::size_of::<Tile>()
    }

    /// `y[m, n] (+)= x[m, k] @ W^T`; x is f32, converted to bf16 on the fly; f32 accumulation.
    pub fn linear(&self, x: &[f32], m: usize, y: &mut [f32], accumulate: bool) {
        self.linear_with(x, m, y, accumulate, true);
    }

    /// `dx[m, k] (+)= dy[m, n] @ W`; same precision rules.
    pub fn linear_dx(&self, dy: &[f32], m: usize, dx: &mut [f32], accumulate: bool) {
        self.linear_dx_with(dy, m, dx, accumulate, true);
    }

    /// [`Self::linear`] on the fastest kernel ([`kernel`]) or on the portable fallback.
    fn linear_with(&self, x: &[f32], m: usize, y: &mut [f32], accumulate: bool, fast: bool) {
        assert!(x.len() >= m * self.k, "linear: x too short");
        assert!(y.len() >= m * self.n, "linear: y too short");
        product(&self.fwd, x, self.k, m, y, accumulate, fast);
    }

    /// [`Self::linear_dx`] on the fastest kernel or on the portable fallback.
    fn linear_dx_with(&self, dy: &[f32], m: usize, dx: &mut [f32], accumulate: bool, fast: bool) {
        assert!(dy.len() >= m * self.n, "linear_dx: dy too short");
        assert!(dx.len() >= m * self.k, "linear_dx: dx too short");
        if self.n == 0 || m == 0 {
            if !accumulate {
                dx[..m * self.k].fill(0.0);
            }
            return;
        }
        let mut buf = DXBUF.with(|c| c.take());
        for c0 in (0..self.n).step_by(DX_CHUNK) {
            let b = self.fwd.transposed(c0, DX_CHUNK.min(self.n - c0), buf);
            product(&b, &dy[c0..], self.n, m, dx, accumulate || c0 > 0, fast);
            buf = b.data;
        }
        DXBUF.with(|c| c.set(buf));
    }
}

/// `c[m, b.n] (+)= a[m, b.k] @ B`, bf16 inputs (a rounded here), f32 accumulation; row `i` of
/// `a` starts at `a[i * lda]`.
fn product(
    b: &BTiles,
    a: &[f32],
    lda: usize,
    m: usize,
    c: &mut [f32],
    accumulate: bool,
    fast: bool,
) {
    if m == 0 || b.n == 0 {
        return;
    }
    if b.k == 0 {
        if !accumulate {
            c[..m * b.n].fill(0.0);
        }
        return;
    }
    match if fast { kernel() } else { Kernel::Portable } {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        Kernel::Dpbf16 if m <= dpbf16::SMALL_M => {
            dpbf16::small_product(b, a, lda, m, c, accumulate)
        }
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        k @ (Kernel::Amx | Kernel::Dpbf16) => tiled_product(b, a, lda, m, c, accumulate, k),
        _ => fallback_product(b, a, lda, m, c, accumulate),
    }
}

/// Portable path: dequantize B in chunks of K rows and multiply with the f32 gemm.
fn fallback_product(b: &BTiles, a: &[f32], lda: usize, m: usize, c: &mut [f32], accumulate: bool) {
    const CH: usize = 256;
    let (n, k) = (b.n, b.k);
    let mut bbuf = vec![0.0f32; CH.min(k) * n]; // [ch, n] rows kk0..kk1 of B
    let mut abuf = vec![0.0f32; m * CH.min(k)]; // [m, ch] columns kk0..kk1 of a, bf16-rounded
    for kk0 in (0..k).step_by(CH) {
        let kk1 = (kk0 + CH).min(k);
        let ch = kk1 - kk0;
        bbuf[..ch * n]
            .par_chunks_mut(n)
            .enumerate()
            .for_each(|(r, row)| {
                for (nn, v) in row.iter_mut().enumerate() {
                    *v = b.get(kk0 + r, nn);
                }
            });
        for i in 0..m {
            for (d, s) in abuf[i * ch..(i + 1) * ch]
                .iter_mut()
                .zip(&a[i * lda + kk0..i * lda + kk1])
            {
                *d = bf16_to_f32(bf16(*s));
            }
        }
        kernels::gemm(
            m,
            n,
            ch,
            View::rm(&abuf[..m * ch], ch),
            View::rm(&bbuf[..ch * n], n),
            c,
            n,
            accumulate || kk0 > 0,
            true,
        );
    }
}

thread_local! {
    /// Reusable tile buffers of this thread, taken out while in use (a nested call on the same
    /// thread just allocates its own): packed activations, and a task's f32 output blocks.
    static ABUF: Cell<Vec<Tile>> = const { Cell::new(Vec::new()) };
    static CBUF: Cell<Vec<Tile>> = const { Cell::new(Vec::new()) };
    /// The transposed weight chunk of a backward product ([`PackedBf16::linear_dx`]).
    static DXBUF: Cell<Vec<Tile>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's buffer `key` grown to at least `len` tiles.
fn with_buf<R>(
    key: &'static std::thread::LocalKey<Cell<Vec<Tile>>>,
    len: usize,
    f: impl FnOnce(&mut [Tile]) -> R,
) -> R {
    let mut v = key.with(|c| c.take());
    if v.len() < len {
        v = vec![ZERO_TILE; len];
    }
    let r = f(&mut v[..len]);
    key.with(|c| c.set(v));
    r
}

/// f32 elements of one 32 x 32 output block (4 tiles of 1 KiB).
const CBLK: usize = BLK * BLK;

/// Packs rows `r0 .. r0 + 32*blocks` (zero past `m`) and columns `k0 .. k0 + 32*ktc` (zero
/// past `k`) of `a[m, k]` (row `i` at `a[i * lda]`) into `dst`: `[blocks*2][ktc]` tiles of
/// 16 rows x 32 bf16.
#[allow(clippy::too_many_arguments)]
fn pack_a(
    a: &[f32],
    lda: usize,
    m: usize,
    k: usize,
    r0: usize,
    k0: usize,
    ktc: usize,
    dst: &mut [u16],
    wide: bool,
) {
    for (t, tiles) in dst.chunks_mut(ktc * TILE).enumerate() {
        // tiles: [ktc][16][32], rows r0 + t*16 .. +16
        for rr in 0..TR {
            let row = r0 + t * TR + rr;
            for kt in 0..ktc {
                let d = &mut tiles[kt * TILE + rr * TK..][..TK];
                let kk = k0 + kt * TK;
                if row >= m || kk >= k {
                    d.fill(0);
                } else {
                    let len = TK.min(k - kk);
                    cvt_row(&a[row * lda + kk..row * lda + kk + len], d, wide);
                }
            }
        }
    }
}

/// `c[m, b.n] (+)= a[m, b.k] @ B` with AMX tiles or AVX512-BF16 (`kern`).
///
/// Work is split into tasks, each a group of 32-row blocks x a group of 32-column blocks. A
/// task accumulates its output in an aligned thread-local buffer (`[rows/32][cols/32][32][32]`
/// f32) and copies it out at the end (clipping edges, adding when accumulating), so every tile
/// load/store is aligned and edges need no special case. K is walked in chunks of about 288 so
/// that the B strip (32 columns x chunk) and the A block (32 rows x chunk) of the kernel fit
/// together in L1 (2 x 18 KiB): B stays there while the A blocks of the group stream from L2.
///
/// A (bf16 tiles) is packed once per call for all rows when K <= [`KC_MAX`]; for longer K (the
/// down projection of a model with F > 4096) each task packs its own rows [`KC`] columns at a time.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn tiled_product(
    b: &BTiles,
    a: &[f32],
    lda: usize,
    m: usize,
    c: &mut [f32],
    accumulate: bool,
    kern: Kernel,
) {
    let amx = kern == Kernel::Amx;
    let (n, k) = (b.n, b.k);
    let mb = m.div_ceil(BLK); // 32-row blocks
    let nb = b.nt / 2; // 32-column blocks
    let threads = rayon::current_num_threads().max(1);
    let wide = avx512_ok();
    let out = kernels::SyncPtr(c.as_mut_ptr());
    let global = b.kt * TK <= KC_MAX;

    // Row group: all rows when their packed A fits comfortably in L2, else ~512 KiB of A.
    // Long K (local packing): about 2 tasks per thread, at most 8 blocks.
    let a_blk = BLK * b.kt * TK * 2; // bytes of one packed 32-row block over all of K
    let mut rg = if !global {
        mb.div_ceil(2 * threads).min(8)
    } else if mb * a_blk <= 1536 << 10 {
        mb
    } else {
        ((512 << 10) / a_blk).clamp(1, mb)
    };
    // Column group: output buffer of at most ~256 KiB (64 blocks); all columns for long K.
    let mut cg = if global { (64 / rg).clamp(1, nb) } else { nb };
    // Enough tasks to balance the threads.
    while mb.div_ceil(rg) * nb.div_ceil(cg) < 4 * threads && (cg > 1 || rg > 1) {
        if cg > 1 {
            cg = cg.div_ceil(2);
        } else {
            rg = rg.div_ceil(2);
        }
    }
    let (row_groups, col_groups) = (mb.div_ceil(rg), nb.div_ceil(cg));

    // Packed A for all rows and all of K: [mb*2][kt] tiles (global mode only).
    let run = |apack: &[u16]| {
        (0..row_groups * col_groups)
            .into_par_iter()
            .for_each(|task| {
                let (gi, gj) = (task / col_groups, task % col_groups);
                let (bi0, bi1) = (gi * rg, ((gi + 1) * rg).min(mb));
                let (bj0, bj1) = (gj * cg, ((gj + 1) * cg).min(nb));
                let (rows, cols) = (bi1 - bi0, bj1 - bj0);
                with_buf(&CBUF, rows * cols * 4, |cbuf| {
                    // cbuf: [rows][cols] blocks of [32][32] f32
                    let cptr = flat_mut(cbuf).as_mut_ptr() as *mut f32;
                    let block = |i: usize, j: usize| {
                        // SAFETY: i < rows, j < cols: inside cbuf.
                        unsafe { cptr.add((i * cols + j) * CBLK) }
                    };
                    // C (+)= A[task rows, K tiles kt0 .. kt0+ktc] B[same, task columns]. `ap`: the
                    // packed A tiles of the task's first row tile at K tile kt0; row tile t, K tile
                    // s is at `ap + (t * a_stride + s) * TILE`.
                    let step = |kt0: usize, ktc: usize, ap: *const u16, a_stride: usize| {
                        // Inner chunks of at most 9 K tiles (~288) for L1 residency.
                        let parts = ktc.div_ceil(9);
                        let per = ktc.div_ceil(parts);
                        let mut s0 = 0;
                        while s0 < ktc {
                            let len = per.min(ktc - s0);
                            let first = kt0 + s0 == 0;
                            for j in 0..cols {
                                // SAFETY (whole block): B tile indices stay below nt * kt, A tile
                                // indices inside the packed A (row tiles 2*rows, K tiles ktc),
                                // C blocks inside cbuf; all 64-byte aligned.
                                unsafe {
                                    let b0 = flat(&b.data)
                                        .as_ptr()
                                        .add((2 * (bj0 + j) * b.kt + kt0 + s0) * TILE);
                                    let b1 = b0.add(b.kt * TILE);
                                    for i in 0..rows {
                                        let a0 = ap.add((2 * i * a_stride + s0) * TILE);
                                        let a1 = a0.add(a_stride * TILE);
                                        let cp = block(i, j);
                                        if !amx {
                                            dpbf16::block(a0, a1, b0, b1, len, cp, first);
                                            continue;
                                        }
                                        if first {
                                            tiles::zero_c();
                                        } else {
                                            tiles::load_c(cp, BLK * 4);
                                        }
                                        tiles::dot_2x2(a0, a1, b0, b1, len);
                                        tiles::store_c(cp, BLK * 4);
                                    }
                                }
                            }
                            s0 += len;
                        }
                    };
                    // SAFETY: the tile configuration is loaded on this thread before any tile
                    // instruction and released after.
                    if amx {
                        unsafe { tiles::configure() };
                    }
                    if global {
                        // SAFETY: row tile 2*bi0 is inside apack.
                        let ap = unsafe { apack.as_ptr().add(2 * bi0 * b.kt * TILE) };
                        step(0, b.kt, ap, b.kt);
                    } else {
                        let kc_tiles = KC / TK;
                        with_buf(&ABUF, rows * 2 * kc_tiles, |local| {
                            let local = flat_mut(local); // [rows*2][ktc][16][32]
                            for kt0 in (0..b.kt).step_by(kc_tiles) {
                                let ktc = kc_tiles.min(b.kt - kt0);
                                let dst = &mut local[..rows * 2 * ktc * TILE];
                                pack_a(a, lda, m, k, bi0 * BLK, kt0 * TK, ktc, dst, wide);
                                step(kt0, ktc, dst.as_ptr(), ktc);
                            }
                        });
                    }
                    if amx {
                        // SAFETY: configured above on this thread.
                        unsafe { tiles::release() };
                    }
                    // Copy out: rows bi0*32.., columns bj0*32.., clipped to [m, n].
                    let o = out.get();
                    for i in 0..rows {
                        let r0 = (bi0 + i) * BLK;
                        for j in 0..cols {
                            let c0 = (bj0 + j) * BLK;
                            let w = (n - c0).min(BLK);
                            for r in 0..(m - r0).min(BLK) {
                                // SAFETY: r0 + r < m, c0 + w <= n; tasks own disjoint blocks.
                                unsafe {
                                    let src =
                                        std::slice::from_raw_parts(block(i, j).add(r * BLK), w);
                                    let dst =
                                        std::slice::from_raw_parts_mut(o.add((r0 + r) * n + c0), w);
                                    if accumulate {
                                        dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                                    } else {
                                        dst.copy_from_slice(src);
                                    }
                                }
                            }
                        }
                    }
                });
            });
    };
    if global {
        with_buf(&ABUF, mb * 2 * b.kt, |abuf| {
            let apack = flat_mut(abuf); // [mb*2][kt][16][32]
            apack
                .par_chunks_mut(2 * b.kt * TILE)
                .enumerate()
                .for_each(|(blk, dst)| pack_a(a, lda, m, k, blk * BLK, 0, b.kt, dst, wide));
            run(apack);
        });
    } else {
        run(&[]);
    }
}

fn avx512_ok() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst[..32] = bf16(src)` padded with zeros (`src.len() <= 32`).
#[inline(always)]
fn cvt_row(src: &[f32], dst: &mut [u16], wide: bool) {
    #[cfg(target_arch = "x86_64")]
    if wide {
        // SAFETY: avx512f/bw were detected.
        return unsafe { cvt_row_avx512(src, dst) };
    }
    let _ = wide;
    cvt_row_generic(src, dst)
}

#[inline(always)]
fn cvt_row_generic(src: &[f32], dst: &mut [u16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = bf16(*s);
    }
    dst[src.len()..].fill(0);
}

/// [`cvt_row_generic`] compiled for AVX-512 (the compiler vectorises the rounding).
///
/// # Safety
/// The CPU has AVX512-F and AVX512-BW (the caller checks [`avx512_ok`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn cvt_row_avx512(src: &[f32], dst: &mut [u16]) {
    cvt_row_generic(src, dst)
}

/// The AVX512-BF16 block kernel: the same packed tiles as AMX, read with `vdpbf16ps`. A B
/// tile row (16 columns x a bf16 pair, 64 bytes) is one zmm; an A row's pair is broadcast.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod dpbf16 {
    use super::{bf16, flat, BTiles, BLK, TILE, TK, TR};
    use crate::compute::kernels;
    use std::arch::x86_64::*;

    /// Products of at most this many rows (decoding, batched decoding) stream the weight once
    /// ([`small_product`]) instead of padding the rows to a 32-row block.
    pub const SMALL_M: usize = 16;
    /// Rows dotted with one load of a B tile row (one accumulator register each).
    const GROUP: usize = 8;

    /// `c[m, b.n] (+)= a[m, b.k] @ B` for `m <= SMALL_M` rows: the rows are rounded to bf16
    /// once, then every B tile row (16 columns) is read once per group of up to 8 rows and
    /// dotted with all of them. Memory-bound on the weight bytes at small `m`; parallel over
    /// 64-column blocks.
    pub fn small_product(
        b: &BTiles,
        a: &[f32],
        lda: usize,
        m: usize,
        c: &mut [f32],
        accumulate: bool,
    ) {
        assert!(m <= SMALL_M, "small_product: {m} rows");
        let kp = b.kt * TK; // K padded to whole tiles
        let mut xb = vec![0u16; m * kp]; // [m, kp] bf16 rows, zero past k
        for (i, row) in xb.chunks_mut(kp).enumerate() {
            for (d, &v) in row.iter_mut().zip(&a[i * lda..i * lda + b.k]) {
                *d = bf16(v);
            }
        }
        let tiles = flat(&b.data);
        kernels::column_blocks(m, b.n, 4 * TR, c, accumulate, |c0, c1, out| {
            let width = c1 - c0;
            for strip in c0 / TR..c1.div_ceil(TR) {
                let st = &tiles[strip * b.kt * TILE..(strip + 1) * b.kt * TILE];
                for i0 in (0..m).step_by(GROUP) {
                    let g = GROUP.min(m - i0);
                    let xg = &xb[i0 * kp..(i0 + g) * kp];
                    let mut acc = [[0.0f32; TR]; GROUP]; // [row][16 columns]
                                                         // SAFETY: kernel() == Dpbf16 (AVX512-F + BF16 present); `st` holds kt
                                                         // tiles and every row of `xg` kt * 32 values.
                    unsafe {
                        match g {
                            1 => strip_dot::<1>(st, xg, kp, &mut acc),
                            2 => strip_dot::<2>(st, xg, kp, &mut acc),
                            3 => strip_dot::<3>(st, xg, kp, &mut acc),
                            4 => strip_dot::<4>(st, xg, kp, &mut acc),
                            5 => strip_dot::<5>(st, xg, kp, &mut acc),
                            6 => strip_dot::<6>(st, xg, kp, &mut acc),
                            7 => strip_dot::<7>(st, xg, kp, &mut acc),
                            _ => strip_dot::<8>(st, xg, kp, &mut acc),
                        }
                    }
                    for (i, row) in acc.iter().enumerate().take(g) {
                        for (j, &v) in row.iter().enumerate() {
                            let col = strip * TR + j;
                            if col < c1 {
                                out[(i0 + i) * width + col - c0] = v;
                            }
                        }
                    }
                }
            }
        });
    }

    /// `acc[i] = xb[i] . B strip` for the 16 columns of one strip (`st`: its kt tiles).
    ///
    /// # Safety
    /// AVX512-F and AVX512-BF16 present; `st` holds `kp / 32` whole B tiles and starts
    /// 64-byte aligned; `xb` holds `M` rows of `kp` bf16 values; `M <= GROUP`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn strip_dot<const M: usize>(
        st: &[u16],
        xb: &[u16],
        kp: usize,
        acc: &mut [[f32; TR]; GROUP],
    ) {
        // One accumulator per row, walking K in order: the same sums in the same order as
        // `rows8`, so a row's result does not depend on how many rows share the product.
        let mut v = [_mm512_setzero_ps(); M];
        let (pb, px) = (st.as_ptr(), xb.as_ptr());
        for s in 0..kp / TK {
            for r in 0..TK / 2 {
                let w: __m512bh =
                    std::mem::transmute(_mm512_load_si512(pb.add(s * TILE + r * TK).cast()));
                for (i, vi) in v.iter_mut().enumerate() {
                    let pair = (px.add(i * kp + s * TK + 2 * r) as *const i32).read_unaligned();
                    let x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
                    *vi = _mm512_dpbf16_ps(*vi, x, w);
                }
            }
        }
        for (a, vi) in acc.iter_mut().zip(v) {
            _mm512_storeu_ps(a.as_mut_ptr(), vi);
        }
    }

    /// `C[32, 32] (=|+=) A[32, len*32] B[len*32, 32]`: `c` is a 32 x 32 f32 block (rows
    /// `BLK` floats apart), overwritten when `first`; `a0`/`a1` the A tiles of rows 0..16 /
    /// 16..32, `b0`/`b1` the B tiles of columns 0..16 / 16..32, each a run of `len` tiles.
    /// Four passes of 8 rows x 32 columns (16 accumulators); B stays in L1 across them.
    ///
    /// # Safety
    /// AVX512-F and AVX512-BF16 present; the pointers as described, B tiles 64-byte aligned.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn block(
        a0: *const u16,
        a1: *const u16,
        b0: *const u16,
        b1: *const u16,
        len: usize,
        c: *mut f32,
        first: bool,
    ) {
        for (half, a) in [a0, a1].into_iter().enumerate() {
            for q in 0..2 {
                rows8(
                    a.add(q * 8 * TK),
                    b0,
                    b1,
                    len,
                    c.add((half * 16 + q * 8) * BLK),
                    first,
                );
            }
        }
    }

    /// 8 rows of the block: `a` points at the first row inside its A tile.
    ///
    /// # Safety
    /// As [`block`]: AVX512-F and AVX512-BF16 present; `a`, `b0`, `b1` start runs of `len`
    /// tiles (B tiles 64-byte aligned), and `c` has 8 rows of 32 f32, `BLK` floats apart.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn rows8(
        a: *const u16,
        b0: *const u16,
        b1: *const u16,
        len: usize,
        c: *mut f32,
        first: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; 8]; // [8 rows][2 x 16 columns]
        if !first {
            for (i, row) in acc.iter_mut().enumerate() {
                row[0] = _mm512_loadu_ps(c.add(i * BLK));
                row[1] = _mm512_loadu_ps(c.add(i * BLK + 16));
            }
        }
        for s in 0..len {
            let (ap, p0, p1) = (a.add(s * TILE), b0.add(s * TILE), b1.add(s * TILE));
            for r in 0..TK / 2 {
                // B rows 2r, 2r+1 of this K tile for 16 columns each: [16][2] bf16.
                let x0: __m512bh = std::mem::transmute(_mm512_load_si512(p0.add(r * TK).cast()));
                let x1: __m512bh = std::mem::transmute(_mm512_load_si512(p1.add(r * TK).cast()));
                for (i, row) in acc.iter_mut().enumerate() {
                    // A[i, 2r..2r+2] broadcast to every column.
                    let pair = (ap.add(i * TK + 2 * r) as *const i32).read_unaligned();
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    row[0] = _mm512_dpbf16_ps(row[0], av, x0);
                    row[1] = _mm512_dpbf16_ps(row[1], av, x1);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(i * BLK), row[0]);
            _mm512_storeu_ps(c.add(i * BLK + 16), row[1]);
        }
    }
}

/// The AMX instructions (inline asm; stable Rust has no AMX intrinsics). Tile registers are
/// never touched by compiled code, so their contents persist between these asm blocks.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod tiles {
    use std::arch::asm;

    /// Palette 1, all 8 tiles 16 rows x 64 bytes.
    #[repr(C, align(64))]
    struct TileCfg([u8; 64]);
    static CFG: TileCfg = {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64; // bytes per row (u16 little-endian)
            c[48 + t] = 16; // rows
            t += 1;
        }
        TileCfg(c)
    };

    /// Loads the tile configuration on this thread (tile state is per thread).
    ///
    /// # Safety
    /// The CPU has AMX-BF16 and the OS granted this process the tile state
    /// (`ARCH_REQ_XCOMP_PERM`, done once by `detect`); pair with [`release`].
    pub unsafe fn configure() {
        asm!("ldtilecfg [{}]", in(reg) &CFG as *const TileCfg, options(nostack, readonly));
    }

    /// Releases this thread's tile state.
    ///
    /// # Safety
    /// The CPU has AMX (a thread that never configured tiles may call it too).
    pub unsafe fn release() {
        asm!("tilerelease", options(nostack, nomem));
    }

    /// tmm0..3 = 0 (the 2 x 2 accumulator block).
    ///
    /// # Safety
    /// [`configure`] ran on this thread.
    pub unsafe fn zero_c() {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    }

    /// tmm0..3 = C[32, 32] at `c` with row stride `ldc` bytes:
    /// tmm0 rows 0..16 cols 0..16, tmm1 rows 0..16 cols 16..32, tmm2/tmm3 rows 16..32.
    ///
    /// # Safety
    /// [`configure`] ran on this thread; `c` points at 32 readable rows of 32 f32, `ldc`
    /// bytes apart.
    pub unsafe fn load_c(c: *const f32, ldc: usize) {
        asm!(
            "tileloadd tmm0, [{c} + {s}*1]",
            "tileloadd tmm1, [{c} + {s}*1 + 64]",
            "tileloadd tmm2, [{c2} + {s}*1]",
            "tileloadd tmm3, [{c2} + {s}*1 + 64]",
            c = in(reg) c,
            c2 = in(reg) (c as *const u8).add(16 * ldc),
            s = in(reg) ldc,
            options(nostack, readonly)
        );
    }

    /// C[32, 32] at `c` (row stride `ldc` bytes) = tmm0..3.
    ///
    /// # Safety
    /// [`configure`] ran on this thread; `c` points at 32 writable rows of 32 f32, `ldc`
    /// bytes apart, that nothing else accesses meanwhile.
    pub unsafe fn store_c(c: *mut f32, ldc: usize) {
        asm!(
            "tilestored [{c} + {s}*1], tmm0",
            "tilestored [{c} + {s}*1 + 64], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c2} + {s}*1 + 64], tmm3",
            c = in(reg) c,
            c2 = in(reg) (c as *mut u8).add(16 * ldc),
            s = in(reg) ldc,
            options(nostack)
        );
    }

    /// tmm0..3 += A[32, kt*32] B[kt*32, 32]. `a0`/`a1`: the A tiles of rows 0..16 / 16..32,
    /// `b0`/`b1`: the B tiles of columns 0..16 / 16..32; each a run of `kt` 1 KiB tiles.
    ///
    /// # Safety
    /// [`configure`] ran on this thread; each pointer starts `kt` readable 1 KiB tiles.
    #[inline(always)]
    pub unsafe fn dot_2x2(
        a0: *const u16,
        a1: *const u16,
        b0: *const u16,
        b1: *const u16,
        kt: usize,
    ) {
        if kt == 0 {
            return;
        }
        asm!(
            "2:",
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {kt}",
            "jnz 2b",
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            kt = inout(reg) kt => _,
            s = in(reg) 64usize,
            options(nostack, readonly)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn fill(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn round(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| bf16_to_f32(bf16(x)) as f64).collect()
    }

    /// Checks `c = c0 (if acc) + a[m, kk] @ b[kk, nn]` where `b(r, j)` is the bf16-rounded
    /// operand; tolerance relative to sum |a||b| of each output.
    #[allow(clippy::too_many_arguments)]
    fn check(
        what: &str,
        a: &[f32],
        b: impl Fn(usize, usize) -> f64,
        m: usize,
        kk: usize,
        nn: usize,
        c0: &[f32],
        c: &[f32],
        acc: bool,
    ) {
        let ar = round(a);
        let mut worst = 0.0f64;
        for i in 0..m {
            for j in 0..nn {
                let (mut s, mut mag) = (0.0f64, 0.0f64);
                for r in 0..kk {
                    let p = ar[i * kk + r] * b(r, j);
                    s += p;
                    mag += p.abs();
                }
                if acc {
                    s += c0[i * nn + j] as f64;
                    mag += (c0[i * nn + j] as f64).abs();
                }
                let err = (c[i * nn + j] as f64 - s).abs();
                let tol = 2e-5 * mag + 1e-30;
                assert!(
                    err <= tol,
                    "{what}: m={m} k={kk} n={nn} acc={acc} at ({i},{j}): got {} want {s} (err {err:e}, tol {tol:e})",
                    c[i * nn + j]
                );
                worst = worst.max(err / mag.max(1e-30));
            }
        }
        assert!(worst.is_finite(), "{what}: non-finite");
    }

    fn run_case(m: usize, n: usize, k: usize, fast: bool) {
        let w = fill(n * k, (m * 1000 + n * 10 + k) as u64);
        let x = fill(m * k, 7 + m as u64);
        let dy = fill(m * n, 11 + n as u64);
        let p = PackedBf16::pack(&w, n, k);
        assert_eq!((p.rows(), p.cols()), (n, k));
        let wr = round(&w);
        for acc in [false, true] {
            // y = x W^T: b(r, j) = W[j, r]
            let y0 = fill(m * n, 3);
            let mut y = y0.clone();
            p.linear_with(&x, m, &mut y, acc, fast);
            check("linear", &x, |r, j| wr[j * k + r], m, k, n, &y0, &y, acc);
            // dx = dy W: b(r, j) = W[r, j]
            let dx0 = fill(m * k, 5);
            let mut dx = dx0.clone();
            p.linear_dx_with(&dy, m, &mut dx, acc, fast);
            check(
                "linear_dx",
                &dy,
                |r, j| wr[r * k + j],
                m,
                n,
                k,
                &dx0,
                &dx,
                acc,
            );
        }
    }

    fn awkward(fast: bool) {
        for &m in &[1usize, 3, 17, 33, 64, 100] {
            for &n in &[1usize, 15, 16, 17, 40, 576] {
                for &k in &[1usize, 15, 16, 17, 33, 40, 100] {
                    run_case(m, n, k, fast);
                }
            }
        }
        run_case(5, 0, 7, fast);
        run_case(0, 5, 7, fast);
        run_case(4, 5, 0, fast);
    }

    /// True when this machine has a fast kernel (AMX or AVX512-BF16) to test; says so if not.
    fn fast_kernel(test: &str) -> bool {
        let k = kernel();
        if k == Kernel::Portable {
            eprintln!("skipping {test}: neither AMX-BF16 nor AVX512-BF16 on this machine");
        }
        k != Kernel::Portable
    }

    #[test]
    fn fast_kernel_awkward_shapes() {
        if fast_kernel("fast_kernel_awkward_shapes") {
            awkward(true);
        }
    }

    #[test]
    fn amx_fallback_awkward_shapes() {
        awkward(false);
    }

    /// SmolLM2-135M weight shapes at small m.
    fn real(fast: bool) {
        for &(n, k) in &[(576usize, 576usize), (192, 576), (1536, 576), (576, 1536)] {
            for &m in &[1usize, 8, 37] {
                run_case(m, n, k, fast);
            }
        }
        run_case(3, 49152, 576, fast);
    }

    #[test]
    fn fast_kernel_real_shapes() {
        if fast_kernel("fast_kernel_real_shapes") {
            real(true);
        }
    }

    #[test]
    fn amx_fallback_real_shapes() {
        real(false);
    }

    /// A row of a product is the same bits whether it is computed alone, with 3 others (the
    /// few-row strip kernel, 1 or 2 groups of rows) or among 40 (the block kernel), forward
    /// and backward.
    #[test]
    fn fast_kernel_is_batch_invariant() {
        if !fast_kernel("fast_kernel_is_batch_invariant") {
            return;
        }
        // (5000, 40): a backward of two transposed chunks.
        for &(n, k) in &[(576usize, 576usize), (100, 1000), (40, 5000), (5000, 40)] {
            let p = PackedBf16::pack(&fill(n * k, 3), n, k);
            let m = 40;
            let x = fill(m * k, 4);
            let dy = fill(m * n, 5);
            let mut all = vec![0.0; m * n];
            p.linear(&x, m, &mut all, false);
            let mut all_dx = vec![0.0; m * k];
            p.linear_dx(&dy, m, &mut all_dx, false);
            for rows in [1usize, 2, 4, 5, 8, 9, 16, 17, 33] {
                for i0 in [0, m - rows] {
                    let mut y = vec![0.0; rows * n];
                    p.linear(&x[i0 * k..(i0 + rows) * k], rows, &mut y, false);
                    assert_eq!(
                        y,
                        all[i0 * n..(i0 + rows) * n],
                        "linear n={n} k={k} rows={rows}"
                    );
                    let mut dx = vec![0.0; rows * k];
                    p.linear_dx(&dy[i0 * n..(i0 + rows) * n], rows, &mut dx, false);
                    assert_eq!(
                        dx,
                        all_dx[i0 * k..(i0 + rows) * k],
                        "dx n={n} k={k} rows={rows}"
                    );
                }
            }
        }
    }

    /// Long reduction (per-task K chunks) and many rows (row groups), AMX against the exact
    /// reference for dx at long K and against the fallback path for both products.
    #[test]
    fn fast_kernel_matches_fallback_large() {
        if !fast_kernel("fast_kernel_matches_fallback_large") {
            return;
        }
        for &(m, n, k) in &[
            (70usize, 5000usize, 40usize),
            (600, 576, 1536),
            (333, 1000, 600),
        ] {
            let w = fill(n * k, 1);
            let x = fill(m * k, 4);
            let dy = fill(m * n, 2);
            let p = PackedBf16::pack(&w, n, k);
            for acc in [false, true] {
                let dx0 = fill(m * k, 9);
                let (mut d1, mut d2) = (dx0.clone(), dx0.clone());
                p.linear_dx_with(&dy, m, &mut d1, acc, true);
                p.linear_dx_with(&dy, m, &mut d2, acc, false);
                if n > KC_MAX {
                    let wr = round(&w);
                    check(
                        "linear_dx long",
                        &dy,
                        |r, j| wr[r * k + j],
                        m,
                        n,
                        k,
                        &dx0,
                        &d1,
                        acc,
                    );
                }
                let diff = d1
                    .iter()
                    .zip(&d2)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(
                    diff < 1e-3,
                    "dx {m}x{n}x{k}: fast kernel vs fallback {diff}"
                );
                let y0 = fill(m * n, 8);
                let (mut y1, mut y2) = (y0.clone(), y0.clone());
                p.linear_with(&x, m, &mut y1, acc, true);
                p.linear_with(&x, m, &mut y2, acc, false);
                let diff = y1
                    .iter()
                    .zip(&y2)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(diff < 1e-3, "y {m}x{n}x{k}: fast kernel vs fallback {diff}");
            }
        }
    }

    /// The backward operand of rows `c0 ..` of W is their transpose, and the scalar and the
    /// AVX-512 tile transposes write the same bits.
    #[test]
    fn transposed_operand_is_the_weight_rows() {
        let (n, k) = (100usize, 70usize);
        let p = PackedBf16::pack(&fill(n * k, 3), n, k);
        // Whole chunks (a multiple of 32 rows) or the last one (ending at n: zeros past it).
        for (c0, len) in [(0, 100), (32, 68), (96, 4), (32, 32)] {
            let t = p.fwd.transposed(c0, len, Vec::new());
            assert_eq!((t.n, t.k), (k, len));
            for r in 0..t.kt * TK {
                for c in 0..t.nt * TR {
                    let want = if r < len && c < k {
                        p.fwd.get(c, c0 + r)
                    } else {
                        0.0
                    };
                    assert_eq!(t.get(r, c), want, "c0={c0} row {r} col {c}");
                }
            }
        }
        if !avx512_ok() {
            eprintln!("transposed_operand_is_the_weight_rows: no AVX-512, scalar path only");
            return;
        }
        let d = &p.fwd.data;
        for (i, j) in [(0, 1), (3, 5), (7, 2)] {
            for h in 0..2 {
                let (mut a, mut b) = (ZERO_TILE, ZERO_TILE);
                transpose_tile([&d[i], &d[j]], h, &mut a, false);
                transpose_tile([&d[i], &d[j]], h, &mut b, true);
                assert_eq!(a.0, b.0, "tiles {i}, {j} half {h}");
            }
        }
    }

    #[test]
    fn amx_bf16_rounding() {
        assert_eq!(bf16(1.0), 0x3f80);
        // 1 + 2^-8 is a tie: rounds to even (1.0); 1 + 3*2^-8 rounds up.
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16(f32::INFINITY), 0x7f80);
        assert!(bf16_to_f32(bf16(f32::NAN)).is_nan());
        assert_eq!(bf16(-0.0), 0x8000);
    }
}
