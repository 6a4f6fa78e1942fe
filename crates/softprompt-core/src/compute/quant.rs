//! GGML tensor types and their dequantization to f32.
//!
//! Every quantized type stores a row as a sequence of fixed-size blocks; a block holds
//! `block_size()` values in `type_size()` bytes. All multi-byte fields are little-endian.
//! The layouts below follow the GGML block definitions (`ggml-common.h`); the code is
//! written from those definitions, one function per block type. `QK_K = 256` for the
//! "K" super-block types.

use rayon::prelude::*;

/// Elements per K-quant super-block.
const QK_K: usize = 256;

/// The GGML tensor types softprompt can read (all of them it can also dequantize).
/// Discriminants are the GGML type ids stored in GGUF tensor infos.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    BF16 = 30,
}

impl GgmlType {
    /// Every supported type, for lookups.
    pub const ALL: [GgmlType; 20] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::BF16,
    ];

    /// The type for a GGUF type id, `None` for ids softprompt cannot read.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Self::ALL.iter().copied().find(|t| t.id() == id)
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// The GGML name ("Q4_K", "F16", ...).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
            GgmlType::I8 => "I8",
            GgmlType::I16 => "I16",
            GgmlType::I32 => "I32",
            GgmlType::I64 => "I64",
            GgmlType::F64 => "F64",
            GgmlType::BF16 => "BF16",
        }
    }

    /// Values per block (1 for plain element types).
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::F64
            | GgmlType::I8
            | GgmlType::I16
            | GgmlType::I32
            | GgmlType::I64 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q8_1 => 32,
            GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::Q8_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::I32 => 4,
            GgmlType::F16 | GgmlType::BF16 | GgmlType::I16 => 2,
            GgmlType::F64 | GgmlType::I64 => 8,
            GgmlType::I8 => 1,
            GgmlType::Q4_0 => 2 + 16,                // d, qs[16]
            GgmlType::Q4_1 => 2 + 2 + 16,            // d, m, qs[16]
            GgmlType::Q5_0 => 2 + 4 + 16,            // d, qh[4], qs[16]
            GgmlType::Q5_1 => 2 + 2 + 4 + 16,        // d, m, qh[4], qs[16]
            GgmlType::Q8_0 => 2 + 32,                // d, qs[32]
            GgmlType::Q8_1 => 2 + 2 + 32,            // d, s, qs[32]
            GgmlType::Q2_K => 16 + 64 + 2 + 2,       // scales[16], qs[64], d, dmin
            GgmlType::Q3_K => 32 + 64 + 12 + 2,      // hmask[32], qs[64], scales[12], d
            GgmlType::Q4_K => 2 + 2 + 12 + 128,      // d, dmin, scales[12], qs[128]
            GgmlType::Q5_K => 2 + 2 + 12 + 32 + 128, // d, dmin, scales[12], qh[32], qs[128]
            GgmlType::Q6_K => 128 + 64 + 16 + 2,     // ql[128], qh[64], scales[16], d
            GgmlType::Q8_K => 4 + 256 + 32,          // d (f32), qs[256], bsums[16] (i16)
        }
    }

    /// True for block-quantized types (everything but plain floats and ints).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }
}

/// Name of a GGML type id softprompt does not read (i-quants, ternary, ...), for messages.
pub fn unsupported_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        4 => "Q4_2 (removed)",
        5 => "Q4_3 (removed)",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        29 => "IQ1_M",
        31 => "Q4_0_4_4 (removed)",
        32 => "Q4_0_4_8 (removed)",
        33 => "Q4_0_8_8 (removed)",
        34 => "TQ1_0",
        35 => "TQ2_0",
        36 => "IQ4_NL_4_4 (removed)",
        37 => "IQ4_NL_4_8 (removed)",
        38 => "IQ4_NL_8_8 (removed)",
        39 => "MXFP4",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// Small little-endian field readers. Callers pass a slice of exactly one block, so every
// index below is within the block's fixed size (not derived from file content).

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

#[inline]
fn bf16_at(b: &[u8], i: usize) -> f32 {
    half::bf16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

// ---------------------------------------------------------------------------------------
// One function per block type: `b` is one block (`type_size()` bytes), `y` its
// `block_size()` outputs.

/// Q4_0: `d: f16, qs[16]`; y[j] = (lo(qs[j]) - 8)·d, y[j+16] = (hi(qs[j]) - 8)·d.
fn block_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: `d: f16, m: f16, qs[16]`; y[j] = lo(qs[j])·d + m, y[j+16] = hi(qs[j])·d + m.
fn block_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// Q5_0: `d: f16, qh: u32, qs[16]`; the 5th bit of value j is bit j of qh (j in 0..32);
/// y = (q - 16)·d.
fn block_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) as u8;
        let h1 = ((qh >> (j + 16)) & 1) as u8;
        let q0 = (qs[j] & 0x0F) | (h0 << 4);
        let q1 = (qs[j] >> 4) | (h1 << 4);
        y[j] = (q0 as i32 - 16) as f32 * d;
        y[j + 16] = (q1 as i32 - 16) as f32 * d;
    }
}

/// Q5_1: `d: f16, m: f16, qh: u32, qs[16]`; y = q·d + m with q the 5-bit value as in Q5_0.
fn block_q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) as u8;
        let h1 = ((qh >> (j + 16)) & 1) as u8;
        let q0 = (qs[j] & 0x0F) | (h0 << 4);
        let q1 = (qs[j] >> 4) | (h1 << 4);
        y[j] = q0 as f32 * d + m;
        y[j + 16] = q1 as f32 * d + m;
    }
}

/// Q8_0: `d: f16, qs: [i8; 32]`; y = q·d.
fn block_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
        *yj = (q as i8) as f32 * d;
    }
}

/// Q8_1: `d: f16, s: f16 (d·Σq, unused here), qs: [i8; 32]`; y = q·d.
fn block_q8_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (yj, &q) in y.iter_mut().zip(&b[4..36]) {
        *yj = (q as i8) as f32 * d;
    }
}

/// Q2_K: `scales[16], qs[64], d: f16, dmin: f16`. Sixteen sub-blocks of 16 values; scale
/// byte s: low nibble × d is the sub-block scale, high nibble × dmin its min. The 2-bit
/// quants of value `128·n + 32·k + l` (n in 0..2, k in 0..4, l in 0..32) are bits `2k..2k+2`
/// of `qs[32·n + l]`, and that value belongs to sub-block `8·n + 2·k + l/16`.
fn block_q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    for n in 0..2 {
        for k in 0..4 {
            let shift = 2 * k;
            for l in 0..32 {
                let sc = scales[8 * n + 2 * k + l / 16];
                let dl = d * (sc & 0x0F) as f32;
                let ml = dmin * (sc >> 4) as f32;
                let q = (qs[32 * n + l] >> shift) & 3;
                y[128 * n + 32 * k + l] = dl * q as f32 - ml;
            }
        }
    }
}

/// The 16 signed 6-bit scales of a Q3_K block, unpacked from its 12 scale bytes. Scale i
/// has its low 4 bits in the low (i < 8) or high (i ≥ 8) nibble of byte `i % 8`, and its
/// high 2 bits at bits `2·(i / 4)` of byte `8 + i % 4`; the stored value is offset by 32.
fn q3_k_scales(s: &[u8]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = if i < 8 { s[i] & 0x0F } else { s[i - 8] >> 4 };
        // Bytes 8..12 carry the high bits: scale i uses byte 8 + i % 4, bits 2·(i / 4).
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = (low | (high << 4)) as i32 - 32;
    }
    out
}

/// Q3_K: `hmask[32], qs[64], scales[12], d: f16`. Value `128·n + 32·k + l` has low 2 bits
/// `(qs[32·n + l] >> 2k) & 3` and high bit `hmask[l] >> (4·n + k) & 1`; the 3-bit value is
/// `low − (high ? 0 : 4)`, scaled by `d · scale[8·n + 2·k + l/16]`.
fn block_q3_k(b: &[u8], y: &mut [f32]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let scales = q3_k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    for n in 0..2 {
        for k in 0..4 {
            let shift = 2 * k;
            let hbit = 4 * n + k;
            for l in 0..32 {
                let dl = d * scales[8 * n + 2 * k + l / 16] as f32;
                let low = ((qs[32 * n + l] >> shift) & 3) as i32;
                let high_set = (hmask[l] >> hbit) & 1 == 1;
                let q = low - if high_set { 0 } else { 4 };
                y[128 * n + 32 * k + l] = dl * q as f32;
            }
        }
    }
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K / Q5_K: six bits
/// each. For j < 4 they are the low 6 bits of bytes j and j+4; for j ≥ 4 the low nibbles
/// come from byte j+4 and the top 2 bits from the top bits of bytes j−4 and j.
pub(crate) fn k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        let sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        let m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        (sc, m)
    }
}

/// Q4_K: `d: f16, dmin: f16, scales[12], qs[128]`. Eight sub-blocks of 32; chunk c (0..4)
/// of 64 values uses qs[32c..32c+32]: low nibbles are sub-block 2c, high nibbles 2c+1;
/// y = d·sc·q − dmin·m.
fn block_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for c in 0..4 {
        let (sc1, m1) = k_scale_min(2 * c, scales);
        let (sc2, m2) = k_scale_min(2 * c + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            let q = qs[32 * c + l];
            y[64 * c + l] = d1 * (q & 0x0F) as f32 - min1;
            y[64 * c + 32 + l] = d2 * (q >> 4) as f32 - min2;
        }
    }
}

/// Q5_K: `d: f16, dmin: f16, scales[12], qh[32], qs[128]`. As Q4_K, plus a 5th bit:
/// sub-block 2c takes bit 2c of qh[l], sub-block 2c+1 bit 2c+1.
fn block_q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for c in 0..4 {
        let (sc1, m1) = k_scale_min(2 * c, scales);
        let (sc2, m2) = k_scale_min(2 * c + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            let q = qs[32 * c + l];
            let h1 = ((qh[l] >> (2 * c)) & 1) << 4;
            let h2 = ((qh[l] >> (2 * c + 1)) & 1) << 4;
            y[64 * c + l] = d1 * ((q & 0x0F) | h1) as f32 - min1;
            y[64 * c + 32 + l] = d2 * ((q >> 4) | h2) as f32 - min2;
        }
    }
}

/// Q6_K: `ql[128], qh[64], scales: [i8; 16], d: f16`. Half n (0..2) of 128 values uses
/// ql[64n..64n+64], qh[32n..32n+32], scales[8n..8n+8]. For l in 0..32, the four values
/// l, l+32, l+64, l+96 take low nibble of ql[l], low of ql[l+32], high of ql[l], high of
/// ql[l+32], and bits 0-1, 2-3, 4-5, 6-7 of qh[l] as their top two bits; q − 32, scaled by
/// d · scales[l/16 + 2·quarter].
fn block_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let yy = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            yy[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            yy[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            yy[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            yy[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Q8_K: `d: f32, qs: [i8; 256], bsums: [i16; 16] (unused here)`; y = q·d.
fn block_q8_k(b: &[u8], y: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (yj, &q) in y.iter_mut().zip(&b[4..260]) {
        *yj = (q as i8) as f32 * d;
    }
}

/// Plain element types: one value per "block".
fn element(ty: GgmlType, b: &[u8]) -> f32 {
    match ty {
        GgmlType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => f16_at(b, 0),
        GgmlType::BF16 => bf16_at(b, 0),
        GgmlType::F64 => {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }
        GgmlType::I8 => (b[0] as i8) as f32,
        GgmlType::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
        GgmlType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
        GgmlType::I64 => {
            i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }
        _ => f32::NAN, // not reached: quantized types go through their block function
    }
}

/// Dequantize whole blocks serially. `src` holds `k` blocks (`k·type_size` bytes) and
/// `dst` `k·block_size` values; extra bytes or values (never produced by the callers) are
/// left untouched.
pub fn dequantize_blocks(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let ts = ty.type_size();
    let bs = ty.block_size();
    let block_fn: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::Q4_0 => block_q4_0,
        GgmlType::Q4_1 => block_q4_1,
        GgmlType::Q5_0 => block_q5_0,
        GgmlType::Q5_1 => block_q5_1,
        GgmlType::Q8_0 => block_q8_0,
        GgmlType::Q8_1 => block_q8_1,
        GgmlType::Q2_K => block_q2_k,
        GgmlType::Q3_K => block_q3_k,
        GgmlType::Q4_K => block_q4_k,
        GgmlType::Q5_K => block_q5_k,
        GgmlType::Q6_K => block_q6_k,
        GgmlType::Q8_K => block_q8_k,
        _ => {
            for (b, y) in src.chunks_exact(ts).zip(dst.iter_mut()) {
                *y = element(ty, b);
            }
            return;
        }
    };
    for (b, y) in src.chunks_exact(ts).zip(dst.chunks_exact_mut(bs)) {
        block_fn(b, y);
    }
}

/// Dequantize `n` values of type `ty` from `src` (exactly `n / block_size · type_size`
/// bytes, `n` a multiple of the block size: the GGUF reader checks both), in parallel
/// chunks of whole blocks for large tensors.
pub fn dequantize(ty: GgmlType, src: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    let bs = ty.block_size();
    let ts = ty.type_size();
    // ~64k values per task: big enough to amortize scheduling, small enough to balance.
    let blocks_per_task = (65536 / bs).max(1);
    if n <= 2 * blocks_per_task * bs {
        dequantize_blocks(ty, src, &mut out);
    } else {
        out.par_chunks_mut(blocks_per_task * bs)
            .zip(src.par_chunks(blocks_per_task * ts))
            .for_each(|(y, b)| dequantize_blocks(ty, b, y));
    }
    out
}

#[cfg(test)]
// Index loops mirror the block layouts being spelled out.
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;
    use half::f16;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    fn deq(ty: GgmlType, block: &[u8]) -> Vec<f32> {
        assert_eq!(block.len(), ty.type_size(), "test block size for {ty:?}");
        dequantize(ty, block, ty.block_size())
    }

    #[test]
    fn type_table_round_trips_and_sizes() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgmlType::from_id(999), None);
        assert_eq!(GgmlType::from_id(16), None);
        assert_eq!(unsupported_type_name(16), Some("IQ2_XXS"));
        // Sizes from the GGML block structs.
        let sizes = [
            (GgmlType::Q4_0, 18),
            (GgmlType::Q4_1, 20),
            (GgmlType::Q5_0, 22),
            (GgmlType::Q5_1, 24),
            (GgmlType::Q8_0, 34),
            (GgmlType::Q2_K, 84),
            (GgmlType::Q3_K, 110),
            (GgmlType::Q4_K, 144),
            (GgmlType::Q5_K, 176),
            (GgmlType::Q6_K, 210),
            (GgmlType::Q8_K, 292),
        ];
        for (t, s) in sizes {
            assert_eq!(t.type_size(), s, "{t:?}");
        }
    }

    #[test]
    fn plain_types() {
        let mut b = Vec::new();
        for x in [1.5f32, -2.0, 0.0] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        assert_eq!(dequantize(GgmlType::F32, &b, 3), vec![1.5, -2.0, 0.0]);
        let b: Vec<u8> = [0.5f32, -3.0].iter().flat_map(|&x| h(x)).collect();
        assert_eq!(dequantize(GgmlType::F16, &b, 2), vec![0.5, -3.0]);
        // bf16 is the top half of an f32: 1.0 = 0x3F80, -2.5 = 0xC020.
        let b = [0x80u8, 0x3F, 0x20, 0xC0];
        assert_eq!(dequantize(GgmlType::BF16, &b, 2), vec![1.0, -2.5]);
        assert_eq!(dequantize(GgmlType::I8, &[0xFF, 7], 2), vec![-1.0, 7.0]);
        assert_eq!(
            dequantize(GgmlType::I32, &(-5i32).to_le_bytes(), 1),
            vec![-5.0]
        );
        assert_eq!(
            dequantize(GgmlType::F64, &0.25f64.to_le_bytes(), 1),
            vec![0.25]
        );
    }

    #[test]
    fn q4_0_block() {
        // d = 0.5; byte j = lo j, hi 15-j → y[j] = (j-8)/2, y[16+j] = (7-j)/2.
        let mut b = h(0.5).to_vec();
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let y = deq(GgmlType::Q4_0, &b);
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[16 + j], (7.0 - j as f32) * 0.5);
        }
    }

    #[test]
    fn q4_1_block() {
        // d = 2, m = -1; lo nibble j, hi nibble 3 → y[j] = 2j - 1, y[16+j] = 5.
        let mut b = h(2.0).to_vec();
        b.extend_from_slice(&h(-1.0));
        for j in 0..16u8 {
            b.push(j | (3 << 4));
        }
        let y = deq(GgmlType::Q4_1, &b);
        for j in 0..16 {
            assert_eq!(y[j], 2.0 * j as f32 - 1.0);
            assert_eq!(y[16 + j], 5.0);
        }
    }

    #[test]
    fn q5_0_block() {
        // d = 1; all nibbles 0; qh has bits 0 and 16 and 31 set → values 16 (→0) there,
        // 0 (→-16) elsewhere. Also nibble 15 in byte 3 lo with high bit → 31 - 16 = 15.
        let mut b = h(1.0).to_vec();
        let qh: u32 = (1 << 0) | (1 << 3) | (1 << 16) | (1 << 31);
        b.extend_from_slice(&qh.to_le_bytes());
        let mut qs = [0u8; 16];
        qs[3] = 0x0F; // value 3: low nibble 15, high bit set → 31
        qs[15] = 0x50; // value 31: high nibble 5, high bit set → 21
        b.extend_from_slice(&qs);
        let y = deq(GgmlType::Q5_0, &b);
        let mut expected = [-16.0f32; 32];
        expected[0] = 0.0;
        expected[3] = 15.0;
        expected[16] = 0.0;
        expected[31] = 5.0;
        assert_eq!(y, expected.to_vec());
    }

    #[test]
    fn q5_1_block() {
        // d = 0.5, m = 10; value j's 5-bit q = j (low nibble j%16, high bit j>=16).
        let mut b = h(0.5).to_vec();
        b.extend_from_slice(&h(10.0));
        let qh: u32 = 0xFFFF_0000; // bits 16..32 set: values 16..32 get +16
        b.extend_from_slice(&qh.to_le_bytes());
        for j in 0..16u8 {
            b.push(j | (j << 4));
        }
        let y = deq(GgmlType::Q5_1, &b);
        for (j, v) in y.iter().enumerate() {
            assert_eq!(*v, j as f32 * 0.5 + 10.0, "value {j}");
        }
    }

    #[test]
    fn q8_0_block() {
        let mut b = h(0.25).to_vec();
        for j in 0..32i32 {
            b.push((j - 16) as i8 as u8);
        }
        let y = deq(GgmlType::Q8_0, &b);
        for (j, v) in y.iter().enumerate() {
            assert_eq!(*v, (j as f32 - 16.0) * 0.25);
        }
    }

    #[test]
    fn q8_1_and_q8_k_blocks() {
        let mut b = h(2.0).to_vec();
        b.extend_from_slice(&h(123.0)); // s, ignored
        b.extend((0..32).map(|j| (j as i8 - 3) as u8));
        let y = deq(GgmlType::Q8_1, &b);
        assert_eq!(y[0], -6.0);
        assert_eq!(y[31], 56.0);
        let mut b = 0.5f32.to_le_bytes().to_vec();
        b.extend((0..256).map(|j| (j as u8).wrapping_sub(128)));
        b.extend_from_slice(&[0u8; 32]);
        let y = deq(GgmlType::Q8_K, &b);
        for (j, v) in y.iter().enumerate() {
            assert_eq!(*v, (j as f32 - 128.0) * 0.5);
        }
    }

    /// Value index → (sub-block, quant) bookkeeping for the 2-bit layout, written out
    /// independently: byte `qs[32n + l]` holds 4 values at `128n + 32k + l`, k = 0..4.
    #[test]
    fn q2_k_block() {
        // Scales: sub-block s has scale nibble (s % 4) + 1 and min nibble s % 3.
        let mut scales = [0u8; 16];
        for (s, x) in scales.iter_mut().enumerate() {
            *x = ((s % 4) as u8 + 1) | (((s % 3) as u8) << 4);
        }
        // Quant of value v = v % 4, packed: byte 32n+l, bits 2k.
        let mut qs = [0u8; 64];
        for v in 0..256 {
            let (n, k, l) = (v / 128, (v % 128) / 32, v % 32);
            qs[32 * n + l] |= ((v % 4) as u8) << (2 * k);
        }
        let mut b = scales.to_vec();
        b.extend_from_slice(&qs);
        b.extend_from_slice(&h(0.5)); // d
        b.extend_from_slice(&h(0.25)); // dmin
        let y = deq(GgmlType::Q2_K, &b);
        for v in 0..256 {
            let s = v / 16; // sub-blocks are consecutive runs of 16 values
            let scale = (s % 4 + 1) as f32 * 0.5;
            let min = (s % 3) as f32 * 0.25;
            assert_eq!(y[v], scale * (v % 4) as f32 - min, "value {v}");
        }
    }

    #[test]
    fn q3_k_block() {
        // 6-bit scale for sub-block s: choose raw = s + 24 (so scale = s - 8), packed:
        // low nibble in byte s (s<8) lo / byte s-8 hi (s>=8); high 2 bits in byte 8 + s%4 at
        // bit 2·(s/4).
        let mut sb = [0u8; 12];
        for s in 0..16 {
            let raw = (s + 24) as u8;
            if s < 8 {
                sb[s] |= raw & 0x0F;
            } else {
                sb[s - 8] |= (raw & 0x0F) << 4;
            }
            sb[8 + s % 4] |= (raw >> 4) << (2 * (s / 4));
        }
        // Quant of value v: 3-bit signed in -4..=3, q = (v % 8) - 4: low 2 bits = (q+4)&3,
        // high bit set iff q >= 0.
        let mut qs = [0u8; 64];
        let mut hmask = [0u8; 32];
        for v in 0..256 {
            let q = (v % 8) as i32 - 4;
            let (low, high) = if q >= 0 {
                (q as u8, 1u8)
            } else {
                ((q + 4) as u8, 0u8)
            };
            let (n, k, l) = (v / 128, (v % 128) / 32, v % 32);
            qs[32 * n + l] |= low << (2 * k);
            hmask[l] |= high << (4 * n + k);
        }
        let mut b = hmask.to_vec();
        b.extend_from_slice(&qs);
        b.extend_from_slice(&sb);
        b.extend_from_slice(&h(0.5));
        let y = deq(GgmlType::Q3_K, &b);
        for v in 0..256 {
            let s = v / 16;
            let scale = (s as f32 - 8.0) * 0.5;
            let q = (v % 8) as f32 - 4.0;
            assert_eq!(y[v], scale * q, "value {v}");
        }
    }

    /// Pack 8 (scale, min) 6-bit pairs the Q4_K/Q5_K way.
    fn pack_k_scales(sc: [u8; 8], mn: [u8; 8]) -> [u8; 12] {
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j] & 63;
            s[j + 4] = mn[j] & 63;
        }
        for j in 4..8 {
            s[j + 4] = (sc[j] & 0x0F) | ((mn[j] & 0x0F) << 4);
            s[j - 4] |= (sc[j] >> 4) << 6;
            s[j] |= (mn[j] >> 4) << 6;
        }
        s
    }

    #[test]
    fn q4_k_block() {
        // Sub-block j (32 values each, consecutive) has scale 8j + 7 and min 7j + 1 (up to
        // 63: exercises the split high bits), quant of value v = v % 16.
        let sc: [u8; 8] = std::array::from_fn(|j| (8 * j + 7) as u8);
        let mn: [u8; 8] = std::array::from_fn(|j| (7 * j + 1) as u8);
        let mut qs = [0u8; 128];
        for v in 0..256 {
            let (c, half, l) = (v / 64, (v % 64) / 32, v % 32);
            qs[32 * c + l] |= ((v % 16) as u8) << (4 * half);
        }
        let mut b = h(0.5).to_vec();
        b.extend_from_slice(&h(0.125));
        b.extend_from_slice(&pack_k_scales(sc, mn));
        b.extend_from_slice(&qs);
        let y = deq(GgmlType::Q4_K, &b);
        for v in 0..256 {
            let j = v / 32;
            let expected = 0.5 * sc[j] as f32 * (v % 16) as f32 - 0.125 * mn[j] as f32;
            assert_eq!(y[v], expected, "value {v}");
        }
    }

    #[test]
    fn q5_k_block() {
        // As Q4_K with 5-bit quants q = v % 32: the 5th bit of value v (sub-block j, position l)
        // is bit j of qh[l].
        let sc: [u8; 8] = std::array::from_fn(|j| (63 - 5 * j) as u8);
        let mn: [u8; 8] = std::array::from_fn(|j| (9 * j) as u8);
        let mut qs = [0u8; 128];
        let mut qh = [0u8; 32];
        for v in 0..256 {
            let q = (v % 32) as u8;
            let (c, half, l) = (v / 64, (v % 64) / 32, v % 32);
            qs[32 * c + l] |= (q & 0x0F) << (4 * half);
            qh[l] |= (q >> 4) << (v / 32);
        }
        let mut b = h(0.25).to_vec();
        b.extend_from_slice(&h(0.5));
        b.extend_from_slice(&pack_k_scales(sc, mn));
        b.extend_from_slice(&qh);
        b.extend_from_slice(&qs);
        let y = deq(GgmlType::Q5_K, &b);
        for v in 0..256 {
            let j = v / 32;
            let expected = 0.25 * sc[j] as f32 * (v % 32) as f32 - 0.5 * mn[j] as f32;
            assert_eq!(y[v], expected, "value {v}");
        }
    }

    #[test]
    fn q6_k_block() {
        // 16 signed scales, sub-block s (16 consecutive values) has scale s - 8; 6-bit quant of
        // value v is v % 64 (→ q - 32 after the offset).
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for v in 0..256 {
            let q = (v % 64) as u8;
            let (n, r) = (v / 128, v % 128);
            let (quarter, l) = (r / 32, r % 32);
            // quarters 0,1 use the low nibble of ql[l], ql[l+32]; 2,3 the high nibble.
            let ql_idx = 64 * n + l + if quarter % 2 == 1 { 32 } else { 0 };
            let nib_shift = if quarter >= 2 { 4 } else { 0 };
            ql[ql_idx] |= (q & 0x0F) << nib_shift;
            qh[32 * n + l] |= (q >> 4) << (2 * quarter);
        }
        let scales: Vec<u8> = (0..16).map(|s| (s as i8 - 8) as u8).collect();
        let mut b = ql.to_vec();
        b.extend_from_slice(&qh);
        b.extend_from_slice(&scales);
        b.extend_from_slice(&h(0.5));
        let y = deq(GgmlType::Q6_K, &b);
        for v in 0..256 {
            let s = v / 16;
            let expected = 0.5 * (s as f32 - 8.0) * ((v % 64) as f32 - 32.0);
            assert_eq!(y[v], expected, "value {v}");
        }
    }

    /// Reference values from an independent implementation (gguf-py 0.19.0
    /// `gguf.quants.dequantize`): three blocks of pseudo-random bytes per type (the LCG
    /// below), with the f16 scale fields overwritten by d = 0.0123 (0x224c) and
    /// min = -0.0456 (0xa9d6) so that they are finite. Checked: sum, sum of squares and a
    /// few values.
    #[test]
    fn matches_gguf_py_reference() {
        fn lcg_bytes(seed: u64, n: usize) -> Vec<u8> {
            let mut s = seed;
            (0..n)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (s >> 33) as u8
                })
                .collect()
        }
        const D: u16 = 0x224c;
        const M: u16 = 0xa9d6;
        let fields = |t: GgmlType| -> Vec<(usize, u16)> {
            match t {
                GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => vec![(0, D)],
                GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => {
                    vec![(0, D), (2, M)]
                }
                GgmlType::Q2_K => vec![(80, D), (82, M)],
                GgmlType::Q3_K => vec![(108, D)],
                GgmlType::Q6_K => vec![(208, D)],
                _ => unreachable!(),
            }
        };
        #[rustfmt::skip]
        // (type, LCG seed, sum, sum of squares, [(index, value)])
        type Reference<'a> = (&'a str, u64, f64, f64, &'a [(usize, f64)]);
        let reference: &[Reference] = &[
            (
                "Q4_0",
                1000,
                -0.07379150390625,
                0.3457693140953779,
                &[
                    (0, -0.07379150390625),
                    (1, 0.07379150390625),
                    (7, 0.061492919921875),
                    (31, -0.012298583984375),
                    (32, -0.036895751953125),
                    (48, 0.061492919921875),
                    (95, -0.02459716796875),
                ],
            ),
            (
                "Q4_1",
                1001,
                5.056060791015625,
                0.613418105058372,
                &[
                    (0, 0.089691162109375),
                    (1, 0.015899658203125),
                    (7, 0.00360107421875),
                    (31, -0.033294677734375),
                    (32, 0.040496826171875),
                    (48, -0.04559326171875),
                    (95, 0.015899658203125),
                ],
            ),
            (
                "Q5_0",
                1002,
                -1.094573974609375,
                1.1872018137946725,
                &[
                    (0, -0.135284423828125),
                    (1, -0.19677734375),
                    (7, 0.1475830078125),
                    (31, -0.0491943359375),
                    (32, -0.1475830078125),
                    (48, -0.02459716796875),
                    (95, -0.12298583984375),
                ],
            ),
            (
                "Q5_1",
                1003,
                13.640472412109375,
                3.1900127353146672,
                &[
                    (0, 0.20037841796875),
                    (1, 0.089691162109375),
                    (7, 0.212677001953125),
                    (31, 0.10198974609375),
                    (32, -0.033294677734375),
                    (48, 0.24957275390625),
                    (95, 0.311065673828125),
                ],
            ),
            (
                "Q8_0",
                1004,
                -0.787109375,
                89.08989898487926,
                &[
                    (0, 0.971588134765625),
                    (1, -0.922393798828125),
                    (7, 0.91009521484375),
                    (31, 1.537322998046875),
                    (32, 0.701019287109375),
                    (48, -0.1475830078125),
                    (95, -0.7379150390625),
                ],
            ),
            (
                "Q2_K",
                1005,
                348.5367431640625,
                207.29873822070658,
                &[
                    (0, 0.4559326171875),
                    (1, 0.4559326171875),
                    (7, 0.57891845703125),
                    (255, 0.36474609375),
                    (256, 0.69891357421875),
                    (384, 0.52972412109375),
                    (767, 0.64251708984375),
                ],
            ),
            (
                "Q3_K",
                1006,
                25.248992919921875,
                198.25120751094073,
                &[
                    (0, -0.02459716796875),
                    (1, 0.0),
                    (7, -0.02459716796875),
                    (255, -0.553436279296875),
                    (256, 0.5411376953125),
                    (384, 0.209075927734375),
                    (767, 0.02459716796875),
                ],
            ),
            (
                "Q4_K",
                1007,
                3336.153106689453,
                21708.01993724052,
                &[
                    (0, 1.2772216796875),
                    (1, 0.95745849609375),
                    (7, 3.8353271484375),
                    (255, 2.8106689453125),
                    (256, 2.594390869140625),
                    (384, 6.315765380859375),
                    (767, 4.679718017578125),
                ],
            ),
            (
                "Q5_K",
                1008,
                6091.990295410156,
                76761.42164251208,
                &[
                    (0, 1.924835205078125),
                    (1, 1.580474853515625),
                    (7, 3.04400634765625),
                    (255, 4.7574462890625),
                    (256, 6.7359619140625),
                    (384, 10.4141845703125),
                    (767, 13.765045166015625),
                ],
            ),
            (
                "Q6_K",
                1009,
                245.40594482421875,
                212025.6816911772,
                &[
                    (0, 7.2315673828125),
                    (1, 5.1654052734375),
                    (7, -3.357513427734375),
                    (255, 6.49365234375),
                    (256, -7.686614990234375),
                    (384, 15.840576171875),
                    (767, 11.991119384765625),
                ],
            ),
        ];
        for &(name, seed, sum, sumsq, values) in reference {
            let t = GgmlType::ALL
                .into_iter()
                .find(|t| t.name() == name)
                .unwrap();
            let nb = 3;
            let mut b = lcg_bytes(seed, nb * t.type_size());
            for k in 0..nb {
                for (off, v) in fields(t) {
                    let at = k * t.type_size() + off;
                    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
            let y = dequantize(t, &b, nb * t.block_size());
            let s: f64 = y.iter().map(|&x| x as f64).sum();
            let s2: f64 = y.iter().map(|&x| (x as f64) * (x as f64)).sum();
            assert!(
                (s - sum).abs() <= 1e-5 * sum.abs().max(1.0),
                "{name}: sum {s} vs {sum}"
            );
            assert!(
                (s2 - sumsq).abs() <= 1e-5 * sumsq.max(1.0),
                "{name}: sum of squares {s2} vs {sumsq}"
            );
            for &(i, v) in values {
                assert!(
                    (y[i] as f64 - v).abs() <= 1e-6 * v.abs().max(1.0),
                    "{name}[{i}]: {} vs {v}",
                    y[i]
                );
            }
        }
    }

    #[test]
    fn parallel_path_matches_serial() {
        // Many Q4_1 blocks with varying content: parallel chunks must equal one serial pass.
        let nblocks = 10_000;
        let mut src = Vec::with_capacity(nblocks * 20);
        for i in 0..nblocks {
            src.extend_from_slice(&h((i % 7) as f32 * 0.01));
            src.extend_from_slice(&h(-((i % 5) as f32)));
            src.extend((0..16).map(|j| ((i * 31 + j * 7) % 256) as u8));
        }
        let n = nblocks * 32;
        let par = dequantize(GgmlType::Q4_1, &src, n);
        let mut ser = vec![0f32; n];
        dequantize_blocks(GgmlType::Q4_1, &src, &mut ser);
        assert_eq!(par, ser);
    }
}
