//! Weight rows repacked at load into panels of [`PANEL`] rows, for the matmul kernels that
//! compute sixteen outputs per activation row at once (one output per 32-bit SIMD lane, so no
//! horizontal sums). The GGUF file is untouched; the backend keeps only the repacked copy.
//!
//! A panel holds rows `16p..16p+16` and is stored block after block. One panel block holds
//! the same bytes as the sixteen rows' GGUF blocks, rearranged:
//!
//! | part | bytes | content |
//! | --- | --- | --- |
//! | `d` | 32 | the sixteen f16 scales, row `i` at `2i` (MXFP4: sixteen e8m0 exponents, 16 bytes, row `i` at `i`) |
//! | `m` (Q4_1, Q5_1) | 32 | the sixteen f16 minimums |
//! | high bits (Q5_0, Q5_1) | 64 | eight u64 masks; mask `g` bit `4i+t` = high bit of row `i`, element `4g+t` |
//! | quants | 256 (4-bit) / 512 (Q8_0) | 64-byte chunks; in chunk `c`, bytes `4i..4i+4` are row `i`'s |
//!
//! (IQ4_NL has Q4_0's layout; its kernels turn each 4-bit code into its table value plus 128.
//! MXFP4 has it too, with one-byte exponents: its kernels turn each code into its signed level
//! and compute exactly [`super::generic::vec_dot_mxfp4`]'s steps, with no bias.)
//!
//! For the 4-bit types chunk `c` holds each row's quant bytes `4c..4c+4`: their low nibbles
//! are elements `4c..4c+4` (group `c`) and their high nibbles elements `16+4c..` (group
//! `c+4`). For Q8_0 chunk `g` holds elements `4g..4g+4` plus 128, as unsigned bytes. So every
//! group of four elements of sixteen rows unpacks into one 64-byte vector whose 32-bit lane
//! `i` belongs to row `i`, ready for a multiply-add against four broadcast activation bytes.
//!
//! Each kernel computes, per row and block, `acc = fma(float(Σ u·x), d·dx, acc)` then
//! `acc = fma(bias, sx, acc)`, where `u` are the unsigned quants, `x`/`dx`/`sx` the
//! activation block ([`super::BlockQ8`]) and `bias` is `m` (Q4_1, Q5_1) or `-8d`, `-16d`, `-128d`
//! (Q4_0, Q5_0, Q8_0 and IQ4_NL: the offset that makes `u` unsigned). The order is the same for any
//! number of activation rows, so a row's result never depends on its batch.

use worker_gguf::GgmlType;

use super::generic::scale_min_k4;
use super::{QK, QK_K};

/// Weight rows per panel.
pub const PANEL: usize = 16;

/// A weight type with a panel layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanelFormat {
    /// Q4_0: 4-bit quants, bias `-8d`.
    Q4_0,
    /// Q4_1: 4-bit quants, bias `m`.
    Q4_1,
    /// Q5_0: 4-bit quants plus high-bit masks, bias `-16d`.
    Q5_0,
    /// Q5_1: 4-bit quants plus high-bit masks, bias `m`.
    Q5_1,
    /// Q8_0: quants plus 128 as bytes, bias `-128d`.
    Q8_0,
    /// Q4_K: 256-element super-blocks, eight sub-blocks of 32 with 6-bit scales and mins.
    Q4K,
    /// Q5_K: Q4_K plus a high bit per element.
    Q5K,
    /// Q6_K: 256-element super-blocks, sixteen sub-blocks of 16 with 8-bit scales.
    Q6K,
    /// IQ4_NL: Q4_0's layout (f16 scale, 4-bit codes); the kernels map each code through
    /// the IQ4_NL table plus 128 (one byte shuffle), bias `-128d`.
    IQ4NL,
    /// F16: each element of the sixteen rows as sixteen consecutive halves (32 bytes), for
    /// f32 multiply-adds against f32 activations.
    F16,
    /// BF16: laid out as [`PanelFormat::F16`].
    BF16,
    /// Q2_K: 256-element super-blocks, sixteen sub-blocks of 16 with 4-bit scales and mins,
    /// 2-bit quants (see [`Q2K_QUANTS`]).
    Q2K,
    /// IQ4_XS: 256-element super-blocks, eight sub-blocks of 32 with signed 6-bit scales,
    /// 4-bit codes into the IQ4_NL table (see [`IQ4XS_QUANTS`]).
    IQ4XS,
    /// MXFP4: Q4_0's layout with a one-byte e8m0 exponent per row and block instead of an
    /// f16 scale (272 bytes a panel block, as the GGUF rows); no bias.
    MXFP4,
    /// Q3_K, repacked into the Q6_K layout: its 3-bit quants (-4..=3) plus 32 fit Q6_K's
    /// unsigned 6-bit ones and its 6-bit scales minus 32 its 8-bit ones, so the Q6_K kernels
    /// compute it exactly (at Q6_K's 210 bytes a row and block instead of 110).
    Q3K,
}

impl PanelFormat {
    /// The panel format of `ty`, if it has one.
    pub fn of(ty: GgmlType) -> Option<Self> {
        match ty {
            GgmlType::Q4_0 => Some(Self::Q4_0),
            GgmlType::Q4_1 => Some(Self::Q4_1),
            GgmlType::Q5_0 => Some(Self::Q5_0),
            GgmlType::Q5_1 => Some(Self::Q5_1),
            GgmlType::Q8_0 => Some(Self::Q8_0),
            GgmlType::Q4_K => Some(Self::Q4K),
            GgmlType::Q5_K => Some(Self::Q5K),
            GgmlType::Q6_K => Some(Self::Q6K),
            GgmlType::Q3_K => Some(Self::Q3K),
            GgmlType::IQ4_NL => Some(Self::IQ4NL),
            GgmlType::MXFP4 => Some(Self::MXFP4),
            GgmlType::IQ4_XS => Some(Self::IQ4XS),
            GgmlType::Q2_K => Some(Self::Q2K),
            GgmlType::F16 => Some(Self::F16),
            GgmlType::BF16 => Some(Self::BF16),
            _ => None,
        }
    }

    /// Elements of one block.
    pub const fn block_elems(self) -> usize {
        match self {
            Self::Q4K | Self::Q5K | Self::Q6K | Self::Q3K | Self::IQ4XS | Self::Q2K => QK_K,
            Self::F16 | Self::BF16 => 1,
            _ => QK,
        }
    }

    /// Bytes of one GGUF block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 | Self::IQ4NL => 18,
            Self::MXFP4 => 17,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q3K => 110,
            Self::IQ4XS => 136,
            Self::Q2K => 84,
            Self::Q6K => 210,
            Self::F16 | Self::BF16 => 2,
        }
    }

    /// Bytes of one panel block: sixteen blocks (for Q4_K, 4 bytes a row more than GGUF's,
    /// the scales and mins being stored unpacked).
    pub const fn panel_block_bytes(self) -> usize {
        match self {
            Self::Q4K => Q4K_QUANTS + 2048,
            Self::Q5K => Q5K_QUANTS + 2048,
            Self::Q3K => PANEL * 210,
            Self::IQ4XS => IQ4XS_QUANTS + 2048,
            Self::Q2K => Q2K_QUANTS + 1024,
            _ => PANEL * self.block_bytes(),
        }
    }

    /// Offset of the quant chunks in a panel block.
    pub const fn quants_offset(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q8_0 | Self::IQ4NL => 32,
            Self::MXFP4 => 16,
            Self::Q4_1 => 64,
            Self::Q5_0 => 96,
            Self::Q5_1 => 128,
            Self::Q4K => Q4K_QUANTS,
            Self::Q5K => Q5K_QUANTS,
            Self::Q6K | Self::Q3K => Q6K_QUANTS,
            Self::IQ4XS => IQ4XS_QUANTS,
            Self::Q2K => Q2K_QUANTS,
            Self::F16 | Self::BF16 => 0,
        }
    }

    /// Offset of the high-bit masks in a panel block (Q5_0, Q5_1).
    pub const fn high_offset(self) -> usize {
        match self {
            Self::Q5_1 => 64,
            _ => 32,
        }
    }

    /// Offset of the quant bytes in a GGUF block (32-element types).
    const fn gguf_quants_offset(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q8_0 | Self::IQ4NL => 2,
            Self::MXFP4 => 1,
            Self::Q4_1 => 4,
            Self::Q5_1 => 8,
            _ => 6,
        }
    }

    /// Offset of the high bits (a u32) in a GGUF block (Q5_0, Q5_1).
    const fn gguf_high_offset(self) -> usize {
        match self {
            Self::Q5_1 => 4,
            _ => 2,
        }
    }

    /// Bytes of `rows` x `cols` weights in panels (the last panel padded with zero rows).
    pub fn bytes(self, rows: usize, cols: usize) -> usize {
        rows.div_ceil(PANEL) * (cols / self.block_elems()) * self.panel_block_bytes()
    }

    /// Repacks GGUF rows of `cols` elements (`raw`, a whole number of rows) into `out`, which
    /// must be zeroed and [`PanelFormat::bytes`] long.
    pub fn repack(self, cols: usize, raw: &[u8], out: &mut [u8]) {
        if let Self::F16 | Self::BF16 = self {
            // Element e of row 16p + i at byte 2i of panel p's 32-byte group e.
            for (r, row) in raw.chunks_exact(2 * cols).enumerate() {
                let (p, i) = (r / PANEL, r % PANEL);
                let panel = &mut out[p * cols * 32..][..cols * 32];
                for (dst, src) in panel.chunks_exact_mut(32).zip(row.chunks_exact(2)) {
                    dst[2 * i..2 * i + 2].copy_from_slice(src);
                }
            }
            return;
        }
        let (bb, pbb) = (self.block_bytes(), self.panel_block_bytes());
        let nb = cols / self.block_elems();
        for (r, row) in raw.chunks_exact(nb * bb).enumerate() {
            let (p, i) = (r / PANEL, r % PANEL);
            for (b, src) in row.chunks_exact(bb).enumerate() {
                let dst = &mut out[(p * nb + b) * pbb..][..pbb];
                self.repack_block(i, src, dst);
            }
        }
    }

    /// Writes row `i`'s GGUF block `src` into panel block `dst`.
    fn repack_block(self, i: usize, src: &[u8], dst: &mut [u8]) {
        match self {
            Self::Q4K => return q4k_to_panel(i, src, dst, false),
            Self::Q5K => return q4k_to_panel(i, src, dst, true),
            Self::Q6K => return q6k_to_panel(i, src, dst),
            Self::Q3K => return q3k_to_panel(i, src, dst),
            Self::IQ4XS => return iq4xs_to_panel(i, src, dst),
            Self::Q2K => return q2k_to_panel(i, src, dst),
            Self::MXFP4 => dst[i] = src[0],
            _ => dst[2 * i..2 * i + 2].copy_from_slice(&src[..2]),
        }
        let q = &src[self.gguf_quants_offset()..];
        let qo = self.quants_offset();
        match self {
            Self::Q8_0 => {
                for g in 0..8 {
                    for t in 0..4 {
                        dst[qo + 64 * g + 4 * i + t] = q[4 * g + t] ^ 0x80;
                    }
                }
                return;
            }
            Self::Q4_1 => dst[32 + 2 * i..34 + 2 * i].copy_from_slice(&src[2..4]),
            Self::Q5_0 | Self::Q5_1 => {
                if self == Self::Q5_1 {
                    dst[32 + 2 * i..34 + 2 * i].copy_from_slice(&src[2..4]);
                }
                let h = &src[self.gguf_high_offset()..][..4];
                let qh = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as u64;
                for g in 0..8 {
                    let m = &mut dst[self.high_offset() + 8 * g..][..8];
                    let mut mask = u64::from_le_bytes(m.try_into().expect("8 bytes"));
                    mask |= ((qh >> (4 * g)) & 0xF) << (4 * i);
                    m.copy_from_slice(&mask.to_le_bytes());
                }
            }
            _ => {}
        }
        for c in 0..4 {
            dst[qo + 64 * c + 4 * i..][..4].copy_from_slice(&q[4 * c..4 * c + 4]);
        }
    }

    /// Rebuilds GGUF row `r` (of `cols` elements) from `panels` into `out` (one row of GGUF
    /// bytes): the inverse of [`PanelFormat::repack`], for embedding lookups.
    pub fn gguf_row(self, cols: usize, panels: &[u8], r: usize, out: &mut [u8]) {
        if let Self::F16 | Self::BF16 = self {
            let (p, i) = (r / PANEL, r % PANEL);
            let panel = &panels[p * cols * 32..][..cols * 32];
            for (dst, src) in out.chunks_exact_mut(2).zip(panel.chunks_exact(32)) {
                dst.copy_from_slice(&src[2 * i..2 * i + 2]);
            }
            return;
        }
        let (bb, pbb) = (self.block_bytes(), self.panel_block_bytes());
        let nb = cols / self.block_elems();
        let (p, i) = (r / PANEL, r % PANEL);
        for (b, dst) in out.chunks_exact_mut(bb).take(nb).enumerate() {
            let src = &panels[(p * nb + b) * pbb..][..pbb];
            match self {
                Self::Q4K | Self::Q5K => {
                    q4k_from_panel(i, src, dst, self == Self::Q5K);
                    continue;
                }
                Self::Q6K => {
                    q6k_from_panel(i, src, dst);
                    continue;
                }
                Self::Q3K => {
                    q3k_from_panel(i, src, dst);
                    continue;
                }
                Self::IQ4XS => {
                    iq4xs_from_panel(i, src, dst);
                    continue;
                }
                Self::Q2K => {
                    q2k_from_panel(i, src, dst);
                    continue;
                }
                Self::MXFP4 => dst[0] = src[i],
                _ => dst[..2].copy_from_slice(&src[2 * i..2 * i + 2]),
            }
            let qo = self.quants_offset();
            let go = self.gguf_quants_offset();
            match self {
                Self::Q8_0 => {
                    for g in 0..8 {
                        for t in 0..4 {
                            dst[go + 4 * g + t] = src[qo + 64 * g + 4 * i + t] ^ 0x80;
                        }
                    }
                    continue;
                }
                Self::Q4_1 => dst[2..4].copy_from_slice(&src[32 + 2 * i..34 + 2 * i]),
                Self::Q5_0 | Self::Q5_1 => {
                    if self == Self::Q5_1 {
                        dst[2..4].copy_from_slice(&src[32 + 2 * i..34 + 2 * i]);
                    }
                    let mut qh = 0u32;
                    for g in 0..8 {
                        let at = self.high_offset() + 8 * g;
                        let mask = u64::from_le_bytes(src[at..at + 8].try_into().expect("8 bytes"));
                        qh |= (((mask >> (4 * i)) & 0xF) as u32) << (4 * g);
                    }
                    let at = self.gguf_high_offset();
                    dst[at..at + 4].copy_from_slice(&qh.to_le_bytes());
                }
                _ => {}
            }
            for c in 0..4 {
                dst[go + 4 * c..go + 4 * c + 4].copy_from_slice(&src[qo + 64 * c + 4 * i..][..4]);
            }
        }
    }
}

// Q4_K panel block: d[16] f16 at 0, dmin[16] f16 at 32, scales[8][16] at 64 (sub-block
// major), min pairs[4][16][2] at 192 (mins of sub-blocks 2k and 2k+1 of row i at 32k+2i), then
// 32 quant chunks: chunk 8k+g holds each row's GGUF quant bytes 32k+4g..32k+4g+4 (low nibbles:
// sub-block 2k, elements 4g..4g+4; high nibbles: sub-block 2k+1).
const Q4K_SCALES: usize = 64;
const Q4K_MINS: usize = 192;
const Q4K_QUANTS: usize = 320;

// Q5_K panel block: Q4_K's, with the high bits as masks between the mins and the quants:
// mask 8s+g (u64) has bit 4i+t set when element 32s+4g+t of row i has its high bit.
const Q5K_HIGH: usize = 320;
const Q5K_QUANTS: usize = Q5K_HIGH + 512;

// Q6_K panel block: d[16] f16 at 0, scale pairs[8][16][2] (i8) at 32, then 32 nibble chunks
// (chunk c: low nibbles are elements 4c..4c+4, high nibbles elements 128+4c..), then 16 chunks
// of high bit pairs (chunk h, bits 2q..2q+2 of each byte: group h+16q, i.e. elements
// 4(h+16q)..4(h+16q)+4).
const Q6K_SCALES: usize = 32;
const Q6K_QUANTS: usize = 288;
const Q6K_HIGH: usize = Q6K_QUANTS + 2048;

/// Q4_K (or, with `high`, Q5_K: the high bits at GGUF offset 16, the quants at 48) to the
/// panel layout.
fn q4k_to_panel(i: usize, src: &[u8], dst: &mut [u8], high: bool) {
    dst[2 * i..2 * i + 2].copy_from_slice(&src[0..2]);
    dst[32 + 2 * i..34 + 2 * i].copy_from_slice(&src[2..4]);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &src[4..16]);
        dst[Q4K_SCALES + 16 * j + i] = sc;
        dst[Q4K_MINS + 32 * (j / 2) + 2 * i + j % 2] = m;
    }
    let (qs, quants) = if high {
        (48, Q5K_QUANTS)
    } else {
        (16, Q4K_QUANTS)
    };
    for c in 0..32 {
        dst[quants + 64 * c + 4 * i..][..4].copy_from_slice(&src[qs + 4 * c..qs + 4 * c + 4]);
    }
    if high {
        let qh = &src[16..48];
        for s in 0..8 {
            for g in 0..8 {
                let bits = (0..4).fold(0u64, |b, t| b | (((qh[4 * g + t] >> s) & 1) as u64) << t);
                let m = &mut dst[Q5K_HIGH + 8 * (8 * s + g)..][..8];
                let mask = u64::from_le_bytes(m.try_into().expect("8 bytes")) | bits << (4 * i);
                m.copy_from_slice(&mask.to_le_bytes());
            }
        }
    }
}

/// The inverse of [`q4k_to_panel`].
fn q4k_from_panel(i: usize, src: &[u8], dst: &mut [u8], high: bool) {
    dst[0..2].copy_from_slice(&src[2 * i..2 * i + 2]);
    dst[2..4].copy_from_slice(&src[32 + 2 * i..34 + 2 * i]);
    // The inverse of `scale_min_k4`: sub-blocks 0-3 in the low 6 bits of bytes 0-3 (scales)
    // and 4-7 (mins); sub-blocks 4-7 in the nibbles of bytes 8-11 and the top 2 bits of 0-7.
    let scales = &mut dst[4..16];
    scales.fill(0);
    for j in 0..8 {
        let sc = src[Q4K_SCALES + 16 * j + i];
        let m = src[Q4K_MINS + 32 * (j / 2) + 2 * i + j % 2];
        if j < 4 {
            scales[j] |= sc;
            scales[j + 4] |= m;
        } else {
            scales[j + 4] = (sc & 0xF) | (m & 0xF) << 4;
            scales[j - 4] |= (sc >> 4) << 6;
            scales[j] |= (m >> 4) << 6;
        }
    }
    let (qs, quants) = if high {
        (48, Q5K_QUANTS)
    } else {
        (16, Q4K_QUANTS)
    };
    for c in 0..32 {
        dst[qs + 4 * c..qs + 4 * c + 4].copy_from_slice(&src[quants + 64 * c + 4 * i..][..4]);
    }
    if high {
        let qh = &mut dst[16..48];
        qh.fill(0);
        for s in 0..8 {
            for g in 0..8 {
                let m = &src[Q5K_HIGH + 8 * (8 * s + g)..][..8];
                let mask = u64::from_le_bytes(m.try_into().expect("8 bytes")) >> (4 * i);
                for t in 0..4 {
                    qh[4 * g + t] |= (((mask >> t) & 1) as u8) << s;
                }
            }
        }
    }
}

/// GGUF Q6_K positions of each element: (byte of `ql`, nibble shift, byte of `qh`, bit
/// shift), as a table so that repacking a large model stays fast.
const Q6K_POSITIONS: [(u8, u8, u8, u8); QK_K] = {
    let mut t = [(0u8, 0u8, 0u8, 0u8); QK_K];
    let mut e = 0;
    while e < QK_K {
        let (n, r) = (e / 128, e % 128);
        let (quarter, l) = (r / 32, r % 32);
        let ql = 64 * n + l + 32 * (quarter % 2);
        t[e] = (
            ql as u8,
            (4 * (quarter / 2)) as u8,
            (128 + 32 * n + l) as u8,
            (2 * quarter) as u8,
        );
        e += 1;
    }
    t
};

fn q6k_to_panel(i: usize, src: &[u8], dst: &mut [u8]) {
    let scales: [u8; 16] = src[192..208].try_into().expect("16 bytes");
    let u: [u8; QK_K] = std::array::from_fn(|e| {
        let (ql, qs, qh, hs) = Q6K_POSITIONS[e];
        ((src[ql as usize] >> qs) & 0xF) | ((src[qh as usize] >> hs) & 3) << 4
    });
    write_q6k_panel(i, &src[208..210], &scales, &u, dst);
}

/// Writes row `i` of a Q6_K panel block: its f16 scale `d`, its sixteen sub-block scales (i8
/// bits) and its 256 unsigned 6-bit quants.
fn write_q6k_panel(i: usize, d: &[u8], scales: &[u8; 16], u: &[u8; QK_K], dst: &mut [u8]) {
    dst[2 * i..2 * i + 2].copy_from_slice(d);
    for (s, &sc) in scales.iter().enumerate() {
        dst[Q6K_SCALES + 32 * (s / 2) + 2 * i + s % 2] = sc;
    }
    for (e, &ue) in u.iter().enumerate() {
        let (group, t) = (e / 4, e % 4);
        let (c, nib) = (group % 32, 4 * (group / 32));
        dst[Q6K_QUANTS + 64 * c + 4 * i + t] |= (ue & 0xF) << nib;
        let (h, q) = (group % 16, group / 16);
        dst[Q6K_HIGH + 64 * h + 4 * i + t] |= (ue >> 4) << (2 * q);
    }
}

/// Row `i` of a Q6_K panel block: (f16 scale bytes, sub-block scales, 6-bit quants).
fn read_q6k_panel(i: usize, src: &[u8]) -> ([u8; 2], [u8; 16], [u8; QK_K]) {
    let d = [src[2 * i], src[2 * i + 1]];
    let scales = std::array::from_fn(|s| src[Q6K_SCALES + 32 * (s / 2) + 2 * i + s % 2]);
    let u = std::array::from_fn(|e| {
        let (group, t) = (e / 4, e % 4);
        let (c, nib) = (group % 32, 4 * (group / 32));
        let low = (src[Q6K_QUANTS + 64 * c + 4 * i + t] >> nib) & 0xF;
        let (h, q) = (group % 16, group / 16);
        low | ((src[Q6K_HIGH + 64 * h + 4 * i + t] >> (2 * q)) & 3) << 4
    });
    (d, scales, u)
}

/// GGUF Q3_K positions of element `e`: (byte of `qs`, bit shift, byte of `hmask`, bit).
/// Block: hmask[32], qs[64], scales[12], d.
fn q3k_position(e: usize) -> (usize, u32, usize, u32) {
    let (n, r) = (e / 128, e % 128);
    let (j, half, l) = (r / 32, (r % 32) / 16, r % 16);
    (
        32 + 32 * n + 16 * half + l,
        2 * j as u32,
        16 * half + l,
        (4 * n + j) as u32,
    )
}

/// Q3_K's sixteen 6-bit scales: low nibbles in bytes 0-7 (scale `k` in byte `k % 8`, nibble
/// `k / 8`), high bit pairs in bytes 8-11 (byte `8 + k % 4`, pair `k / 4`).
fn q3k_scale(scales: &[u8], k: usize) -> u8 {
    let low = (scales[k % 8] >> (4 * (k / 8))) & 0xF;
    low | ((scales[8 + k % 4] >> (2 * (k / 4))) & 3) << 4
}

fn q3k_to_panel(i: usize, src: &[u8], dst: &mut [u8]) {
    // Scales minus 32 as i8 bits; quants plus 32 (the Q6_K offset) as 6-bit values.
    let scales = std::array::from_fn(|k| q3k_scale(&src[96..108], k).wrapping_sub(32));
    let u = std::array::from_fn(|e| {
        let (q, qs, h, hb) = q3k_position(e);
        let low = (src[q] >> qs) & 3;
        let high = (src[h] >> hb) & 1;
        // q3 = low - (high ? 0 : 4), in -4..=3; u = q3 + 32.
        low + 28 + 4 * high
    });
    write_q6k_panel(i, &src[108..110], &scales, &u, dst);
}

fn q3k_from_panel(i: usize, src: &[u8], dst: &mut [u8]) {
    let (d, scales, u) = read_q6k_panel(i, src);
    dst[108..110].copy_from_slice(&d);
    dst[..108].fill(0);
    for (k, sc) in scales.iter().enumerate() {
        let v = sc.wrapping_add(32);
        dst[96 + k % 8] |= (v & 0xF) << (4 * (k / 8));
        dst[96 + 8 + k % 4] |= (v >> 4) << (2 * (k / 4));
    }
    for (e, &ue) in u.iter().enumerate() {
        let (q, qs, h, hb) = q3k_position(e);
        let (low, high) = if ue >= 32 { (ue - 32, 1) } else { (ue - 28, 0) };
        dst[q] |= low << qs;
        dst[h] |= high << hb;
    }
}

// IQ4_XS panel block: d[16] f16 at 0, scales[8][16] (ls - 32 as i8, sub-block major) at 32,
// then 32 code chunks as Q4_K's: chunk 8k+g holds in bytes 4i..4i+4 row i's codes of
// elements 4g..4g+4 of sub-block 2k (low nibbles) and 2k+1 (high nibbles).
const IQ4XS_SCALES: usize = 32;
/// Offset of the code chunks in an IQ4_XS panel block.
pub const IQ4XS_QUANTS: usize = 160;

/// IQ4_XS sub-block `j`'s 6-bit scale `ls` (the value is `d * (ls - 32) * level`), from the
/// block's `scales_h` (u16 at 2) and `scales_l` (bytes 4..8).
fn iq4xs_scale(src: &[u8], j: usize) -> u8 {
    let high = (u16::from_le_bytes([src[2], src[3]]) >> (2 * j)) & 3;
    ((src[4 + j / 2] >> (4 * (j % 2))) & 0xF) | (high as u8) << 4
}

/// IQ4_XS element `e` of sub-block `j`: (byte of the block, nibble shift).
fn iq4xs_code_position(j: usize, e: usize) -> (usize, u32) {
    (8 + 16 * j + e % 16, 4 * (e / 16) as u32)
}

/// Where row `i`'s code of element `e` of sub-block `j` goes in an IQ4_XS panel block.
fn iq4xs_panel_position(i: usize, j: usize, e: usize) -> (usize, u32) {
    let (k, t, g) = (j / 2, j % 2, e / 4);
    (
        IQ4XS_QUANTS + 64 * (8 * k + g) + 4 * i + e % 4,
        4 * t as u32,
    )
}

fn iq4xs_to_panel(i: usize, src: &[u8], dst: &mut [u8]) {
    dst[2 * i..2 * i + 2].copy_from_slice(&src[0..2]);
    for j in 0..8 {
        dst[IQ4XS_SCALES + 16 * j + i] = iq4xs_scale(src, j).wrapping_sub(32);
        for e in 0..32 {
            let (at, shift) = iq4xs_code_position(j, e);
            let (to, to_shift) = iq4xs_panel_position(i, j, e);
            dst[to] |= ((src[at] >> shift) & 0xF) << to_shift;
        }
    }
}

/// The inverse of [`iq4xs_to_panel`].
fn iq4xs_from_panel(i: usize, src: &[u8], dst: &mut [u8]) {
    dst.fill(0);
    dst[0..2].copy_from_slice(&src[2 * i..2 * i + 2]);
    let mut scales_h = 0u16;
    for j in 0..8 {
        let ls = src[IQ4XS_SCALES + 16 * j + i].wrapping_add(32);
        dst[4 + j / 2] |= (ls & 0xF) << (4 * (j % 2));
        scales_h |= u16::from(ls >> 4) << (2 * j);
        for e in 0..32 {
            let (at, shift) = iq4xs_code_position(j, e);
            let (from, from_shift) = iq4xs_panel_position(i, j, e);
            dst[at] |= ((src[from] >> from_shift) & 0xF) << shift;
        }
    }
    dst[2..4].copy_from_slice(&scales_h.to_le_bytes());
}

// Q2_K panel block: d[16] f16 at 0, dmin[16] f16 at 32, scales[16][16] (4-bit, sub-block
// major) at 64, min pairs[8][16][2] at 320 (mins of sub-blocks 2k and 2k+1 of row i at
// 32k+2i), then 16 quant chunks: in chunk c, byte 4i+t holds row i's 2-bit quants of element
// t of groups c, c+16, c+32, c+48 (bits 0-1, 2-3, 4-5, 6-7); group g is elements 4g..4g+4,
// so sub-block s (elements 16s..16s+16) is chunks 4(s%4)..4(s%4)+4 at bit pair s/4.
const Q2K_SCALES: usize = 64;
const Q2K_MINS: usize = 320;
/// Offset of the quant chunks in a Q2_K panel block.
pub const Q2K_QUANTS: usize = 576;

/// GGUF Q2_K position of element `e` (block: scales[16], qs[64], d, dmin): (byte of the
/// block, bit shift).
fn q2k_position(e: usize) -> (usize, u32) {
    (16 + 32 * (e / 128) + e % 32, 2 * ((e % 128) / 32) as u32)
}

/// Where row `i`'s quant of element `e` goes in a Q2_K panel block: (byte, bit shift).
fn q2k_panel_position(i: usize, e: usize) -> (usize, u32) {
    let (g, t) = (e / 4, e % 4);
    (Q2K_QUANTS + 64 * (g % 16) + 4 * i + t, 2 * (g / 16) as u32)
}

fn q2k_to_panel(i: usize, src: &[u8], dst: &mut [u8]) {
    dst[2 * i..2 * i + 2].copy_from_slice(&src[80..82]);
    dst[32 + 2 * i..34 + 2 * i].copy_from_slice(&src[82..84]);
    for s in 0..16 {
        dst[Q2K_SCALES + 16 * s + i] = src[s] & 0xF;
        dst[Q2K_MINS + 32 * (s / 2) + 2 * i + s % 2] = src[s] >> 4;
    }
    for e in 0..QK_K {
        let (at, shift) = q2k_position(e);
        let (to, to_shift) = q2k_panel_position(i, e);
        dst[to] |= ((src[at] >> shift) & 3) << to_shift;
    }
}

/// The inverse of [`q2k_to_panel`].
fn q2k_from_panel(i: usize, src: &[u8], dst: &mut [u8]) {
    dst.fill(0);
    dst[80..82].copy_from_slice(&src[2 * i..2 * i + 2]);
    dst[82..84].copy_from_slice(&src[32 + 2 * i..34 + 2 * i]);
    for s in 0..16 {
        dst[s] = src[Q2K_SCALES + 16 * s + i] | src[Q2K_MINS + 32 * (s / 2) + 2 * i + s % 2] << 4;
    }
    for e in 0..QK_K {
        let (at, shift) = q2k_position(e);
        let (from, from_shift) = q2k_panel_position(i, e);
        dst[at] |= ((src[from] >> from_shift) & 3) << shift;
    }
}

fn q6k_from_panel(i: usize, src: &[u8], dst: &mut [u8]) {
    let (d, scales, u) = read_q6k_panel(i, src);
    dst[208..210].copy_from_slice(&d);
    dst[192..208].copy_from_slice(&scales);
    dst[..192].fill(0);
    for (&(ql, qs, qh, hs), &ue) in Q6K_POSITIONS.iter().zip(&u) {
        dst[ql as usize] |= (ue & 0xF) << qs;
        dst[qh as usize] |= (ue >> 4) << hs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repack_then_gguf_row_gives_the_rows_back() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut byte = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        };
        for fmt in [
            PanelFormat::Q4_0,
            PanelFormat::Q4_1,
            PanelFormat::Q5_0,
            PanelFormat::Q5_1,
            PanelFormat::Q8_0,
            PanelFormat::Q4K,
            PanelFormat::Q5K,
            PanelFormat::Q6K,
            PanelFormat::Q3K,
            PanelFormat::IQ4NL,
            PanelFormat::MXFP4,
            PanelFormat::IQ4XS,
            PanelFormat::Q2K,
            PanelFormat::F16,
            PanelFormat::BF16,
        ] {
            let (rows, cols) = (37, 3 * fmt.block_elems());
            let row_bytes = 3 * fmt.block_bytes();
            let raw: Vec<u8> = (0..rows * row_bytes).map(|_| byte()).collect();
            let mut panels = vec![0; fmt.bytes(rows, cols)];
            assert_eq!(panels.len(), 3 * 3 * fmt.panel_block_bytes());
            fmt.repack(cols, &raw, &mut panels);
            let mut row = vec![0; row_bytes];
            for r in 0..rows {
                fmt.gguf_row(cols, &panels, r, &mut row);
                assert_eq!(row, raw[r * row_bytes..][..row_bytes], "{fmt:?} row {r}");
            }
        }
    }
}
