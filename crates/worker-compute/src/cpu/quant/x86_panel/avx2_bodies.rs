//! The AVX2 panel kernels: the same sums as the AVX-512 ones in [`super`], eight rows per
//! 256-bit vector (a panel's two halves), `vpmaddubsw` + `vpmaddwd` in place of `vpdpbusd`.

use super::*;

/// The eight vectors of unsigned quants of half `h` (rows `8h..8h+8`) of panel block `p`.
///
/// No `target_feature` of its own: inlined into kernels that enable AVX2.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the AVX2 panel table's features). `p` must be valid
/// for reading one panel block of format `F` (`format(F).panel_block_bytes()` bytes), at any
/// alignment, and `h` must be 0 or 1.
#[inline(always)]
pub(super) unsafe fn unpack_avx2<const F: u8>(p: *const u8, h: usize) -> [__m256i; 8] {
    // SAFETY: the caller guarantees AVX2, FMA, F16C, the block and `h < 2`: the 32-byte loads
    // read half `h` of the 64-byte chunks `0..8` (Q8_0) or `0..4` past `quants_offset`, which
    // end at the block's end; the 4-byte mask reads at `high_offset + 8 * g + 4 * h` (Q5_0,
    // Q5_1) lie before the quants; the IQ4_NL table is a 16-byte array.
    unsafe {
        let q = p.add(format(F).quants_offset() + 32 * h);
        let mut u = [_mm256_setzero_si256(); 8];
        if F == Q8_0 {
            for (g, v) in u.iter_mut().enumerate() {
                *v = _mm256_loadu_si256(q.add(64 * g) as *const __m256i);
            }
            return u;
        }
        let low = _mm256_set1_epi8(0x0F);
        for c in 0..4 {
            let v = _mm256_loadu_si256(q.add(64 * c) as *const __m256i);
            u[c] = _mm256_and_si256(v, low);
            u[c + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        }
        if F == IQ4_NL {
            let table =
                _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4_NL_U8.as_ptr() as *const __m128i));
            for v in u.iter_mut() {
                *v = _mm256_shuffle_epi8(table, *v);
            }
        }
        if F == Q5_0 || F == Q5_1 {
            let (bit4, high) = (_mm256_set1_epi8(0x10), p.add(format(F).high_offset()));
            for (g, v) in u.iter_mut().enumerate() {
                // Half h of mask g: rows 8h..8h+8, four bits each.
                let bits = std::ptr::read_unaligned(high.add(8 * g + 4 * h) as *const u32);
                *v = _mm256_or_si256(*v, _mm256_and_si256(bytes_from_bits(bits), bit4));
            }
        }
        u
    }
}

/// 0xFF in byte `i` where bit `i` of `bits` is set.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the AVX2 panel table's features): this function has no
/// `target_feature` of its own and is inlined into one that enables them.
#[inline(always)]
pub(super) unsafe fn bytes_from_bits(bits: u32) -> __m256i {
    // SAFETY: register-only AVX2 intrinsics, and the caller guarantees the CPU has AVX2.
    unsafe {
        let v = _mm256_set1_epi32(bits as i32);
        let shuf = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let v = _mm256_and_si256(_mm256_shuffle_epi8(v, shuf), mask);
        _mm256_cmpeq_epi8(v, mask)
    }
}

/// `Σ u·x` per lane over the eight groups, exact: `vpmaddubsw` pairs are summed in 16 bits only
/// as far as they cannot overflow (eight groups of 4-bit quants, four of 5-bit ones); Q8_0's
/// and IQ4_NL's values (plus 128) would overflow a pair, so they are multiplied signed and
/// `128·Σx` added.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the AVX2 panel table's features): this function has no
/// `target_feature` of its own and is inlined into one that enables them. `q` must be valid for
/// reading 32 bytes, at any alignment.
#[inline(always)]
pub(super) unsafe fn dot_groups_avx2<const F: u8>(u: &[__m256i; 8], q: *const i8) -> __m256i {
    // SAFETY: the caller guarantees AVX2, FMA and F16C. The reads are the unaligned `i32`s at bytes
    // `4 * g`, `g < 8`, and (Q8_0, IQ4_NL) one unaligned 32-byte load: bytes 0..32 of `q`.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let qi = q as *const i32;
        let bcast = |g: usize| _mm256_set1_epi32(std::ptr::read_unaligned(qi.add(g)));
        match F {
            Q8_0 | IQ4_NL => {
                let flip = _mm256_set1_epi8(-128);
                let mut s = _mm256_setzero_si256();
                for (g, ug) in u.iter().enumerate() {
                    let w = _mm256_xor_si256(*ug, flip);
                    let p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(bcast(g), w));
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
                }
                // Σx over the block, times 128, in every lane.
                let xs = _mm256_loadu_si256(q as *const __m256i);
                let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), xs), ones);
                let sums = _mm_add_epi32(
                    _mm256_castsi256_si128(sums),
                    _mm256_extracti128_si256(sums, 1),
                );
                let sums = _mm_add_epi32(sums, _mm_shuffle_epi32(sums, 0b01_00_11_10));
                let sums = _mm_add_epi32(sums, _mm_shuffle_epi32(sums, 0b10_11_00_01));
                let total = _mm256_broadcastd_epi32(_mm_slli_epi32(sums, 7));
                _mm256_add_epi32(s, total)
            }
            Q5_0 | Q5_1 => {
                let mut half = [_mm256_setzero_si256(); 2];
                for (g, ug) in u.iter().enumerate() {
                    let p = _mm256_maddubs_epi16(*ug, bcast(g));
                    half[g / 4] = _mm256_add_epi16(half[g / 4], p);
                }
                _mm256_add_epi32(
                    _mm256_madd_epi16(half[0], ones),
                    _mm256_madd_epi16(half[1], ones),
                )
            }
            _ => {
                let mut s = _mm256_setzero_si256();
                for (g, ug) in u.iter().enumerate() {
                    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(*ug, bcast(g)));
                }
                _mm256_madd_epi16(s, ones)
            }
        }
    }
}

/// One step of an AVX2 panel kernel: half `h` (rows `8h..8h+8`) of the panel block at `p`,
/// block `b` of every activation row of `x`, into `acc`. Callers guarantee AVX2, FMA and
/// F16C, a whole block at `p`, `b` below every `x[r].len()` and `h < 2`.
pub(super) type HalfStep<A, const NR: usize> =
    unsafe fn(*const u8, &[&[A]; NR], usize, usize, &mut [__m256; NR]);

/// How far ahead of the block being read (in bytes) the one-row kernels ask for the weights.
/// The hardware prefetchers alone let a panel kernel read Gemma 3's Q8_0 LM head at 65-86%
/// of the read floor and its 0.1-1 MB layer matrices at 52-76%; a software prefetch of every
/// cache line 4 KiB ahead, issued half a block at a time, gave 93-117% and 64-95% (Q4_K
/// alone, whose blocks are 2.3 KB, stayed where it was), and decode 61-83 -> 84-104 tok/s.
/// 3 KiB ahead rather than 4 (distances alternated step by step in one decode, on this Zen 3
/// machine, after each thread's panels became one contiguous run): +1-2% on SmolLM2, Qwen2.5
/// and Gemma 3 in 12 of 14 repetitions; 2 KiB about as good, 1 KiB 3-7% slower.
const PREFETCH_AHEAD: usize = 3072;

/// An AVX2 panel kernel's outputs: `step` over every half of every panel block of `w`
/// (`pbb` bytes each) for which every row of `x` has a block.
///
/// A 256-bit vector holds half a panel's rows, so each panel block is two halves. With one
/// activation row the halves of a block are done together, so each cache line of the panel
/// is read once and used whole (decode), and each line is prefetched [`PREFETCH_AHEAD`]
/// bytes before it is read; with several, all of half 0 and then all of half 1,
/// so the accumulators of every row stay in registers (the second pass finds the panel in
/// the L1/L2 cache). Each lane sees the same steps in the same order either way.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the AVX2 panel table's features): this function has no
/// `target_feature` of its own and is inlined into one that enables them.
#[inline(always)]
pub(super) unsafe fn over_halves<A, const NR: usize>(
    w: &[u8],
    pbb: usize,
    x: &[&[A]; NR],
    step: HalfStep<A, NR>,
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees AVX2, FMA and F16C. `b < nb <= w.len() / pbb` puts the
    // block at `b * pbb` inside `w` and `b` below every row's length, and `h < 2`, as `step`
    // and `store_half` need.
    unsafe {
        let nb = x.iter().fold(w.len() / pbb, |n, r| n.min(r.len()));
        let mut acc = [[_mm256_setzero_ps(); NR]; 2];
        if NR == 1 {
            for b in 0..nb {
                // A prefetch never faults, so the lines ahead may lie past the panel (the next
                // panel of the same matrix, or nothing).
                let ahead = w.as_ptr().wrapping_add(b * pbb + PREFETCH_AHEAD);
                for (h, acc) in acc.iter_mut().enumerate() {
                    for line in (h * pbb / 2..(h + 1) * pbb / 2).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line) as *const i8);
                    }
                    step(w.as_ptr().add(b * pbb), x, b, h, acc);
                }
            }
        } else {
            for (h, acc) in acc.iter_mut().enumerate() {
                for b in 0..nb {
                    step(w.as_ptr().add(b * pbb), x, b, h, acc);
                }
            }
        }
        let mut out = [[0f32; PANEL]; NR];
        for (h, acc) in acc.into_iter().enumerate() {
            store_half(&mut out, acc, h);
        }
        out
    }
}

/// [`panel_dot`] with AVX2: the same per-block steps for each row, so the same results.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the AVX2 panel table's features): this function has no
/// `target_feature` of its own and is inlined into one that enables them. Any lengths are fine: the
/// kernel runs over the panel blocks of `w` for which every row of `x` has a block.
#[inline(always)]
pub(super) unsafe fn panel_dot_avx2<const F: u8, const NR: usize>(
    w: &[u8],
    x: [&[BlockQ8]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees AVX2, FMA and F16C; `over_halves` gives
    // `panel_block_avx2` whole blocks, `b` below every row's length and `h < 2`.
    unsafe {
        over_halves(
            w,
            format(F).panel_block_bytes(),
            &x,
            panel_block_avx2::<F, NR>,
        )
    }
}

/// Half `h` of panel block `p` (block `b` of the rows of `x`) into `acc`: one step of
/// [`panel_dot_avx2`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the AVX2 panel table's features): this function has no
/// `target_feature` of its own and is inlined into one that enables them. `p` must be valid for
/// reading one panel block of format `F`, `b` less than every `x[r].len()`, and `h` 0 or 1.
#[inline(always)]
pub(super) unsafe fn panel_block_avx2<const F: u8, const NR: usize>(
    p: *const u8,
    x: &[&[BlockQ8]; NR],
    b: usize,
    h: usize,
    acc: &mut [__m256; NR],
) {
    // SAFETY: the caller guarantees AVX2, FMA and F16C, the block at `p`, `b` and `h`. From `p`
    // it reads `d` at `16 * h..` and `m` at `32 + 16 * h..` (16 bytes each) and, through
    // `unpack_avx2`, half `h` of the quants; `dot_groups_avx2` reads the 32 bytes of `a.qs`.
    unsafe {
        let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * h) as *const __m128i));
        let bias = match F {
            Q4_1 | Q5_1 => _mm256_cvtph_ps(_mm_loadu_si128(p.add(32 + 16 * h) as *const __m128i)),
            Q4_0 => _mm256_mul_ps(d, _mm256_set1_ps(-8.0)),
            Q5_0 => _mm256_mul_ps(d, _mm256_set1_ps(-16.0)),
            // Q8_0, IQ4_NL.
            _ => _mm256_mul_ps(d, _mm256_set1_ps(-128.0)),
        };
        let u = unpack_avx2::<F>(p, h);
        for j in 0..NR {
            let a = x[j].get_unchecked(b);
            let s = _mm256_cvtepi32_ps(dot_groups_avx2::<F>(&u, a.qs.as_ptr()));
            let scale = _mm256_mul_ps(d, _mm256_set1_ps(a.d));
            acc[j] = _mm256_fmadd_ps(s, scale, acc[j]);
            acc[j] = _mm256_fmadd_ps(bias, _mm256_set1_ps(a.s), acc[j]);
        }
    }
}

/// A vector whose 32-bit lanes hold 16-bit lane `t` (0 or 1) of `pairs` twice, so that
/// `vpmaddwd` with it multiplies both halves of another lane by that one value.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the AVX2 panel table's features): this function has no
/// `target_feature` of its own and is inlined into one that enables them.
#[inline(always)]
pub(super) unsafe fn repeat_half(pairs: __m256i, t: usize) -> __m256i {
    // SAFETY: register-only AVX2 intrinsics, and the caller guarantees the CPU has AVX2.
    unsafe {
        let pattern = if t == 0 {
            _mm256_setr_epi8(
                0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13, 0, 1, 0, 1, 4, 5, 4, 5, 8, 9,
                8, 9, 12, 13, 12, 13,
            )
        } else {
            _mm256_setr_epi8(
                2, 3, 2, 3, 6, 7, 6, 7, 10, 11, 10, 11, 14, 15, 14, 15, 2, 3, 2, 3, 6, 7, 6, 7, 10,
                11, 10, 11, 14, 15, 14, 15,
            )
        };
        _mm256_shuffle_epi8(pairs, pattern)
    }
}

/// `acc[r] = fma(float(tot[r]), d·dx, acc[r])` for each activation row `r` (its block `b`):
/// the last step of a k-quant block in the AVX2 kernels without mins.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the AVX2 panel table's features): this function has no
/// `target_feature` of its own and is inlined into one that enables them. `b` must be less than
/// `x[r].len()` for every row `r`.
#[inline(always)]
pub(super) unsafe fn add_scaled_avx2<const NR: usize>(
    acc: &mut [__m256; NR],
    tot: &[__m256i; NR],
    d: __m256,
    x: &[&[BlockQ8K]; NR],
    b: usize,
) {
    // SAFETY: the caller guarantees AVX2, FMA and F16C. The caller guarantees `b < x[r].len()`, so
    // `get_unchecked(b)` is in bounds.
    unsafe {
        for r in 0..NR {
            let scale = _mm256_mul_ps(d, _mm256_set1_ps(x[r].get_unchecked(b).d));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot[r]), scale, acc[r]);
        }
    }
}

/// Stores the accumulators of half `h` (rows `8h..8h+8`) of every activation row's outputs.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the AVX2 panel table's features): this function has no
/// `target_feature` of its own and is inlined into one that enables them. `h` must be 0 or 1.
#[inline(always)]
pub(super) unsafe fn store_half<const NR: usize>(
    out: &mut [[f32; PANEL]; NR],
    acc: [__m256; NR],
    h: usize,
) {
    // SAFETY: the caller guarantees AVX2, FMA and F16C. The caller guarantees `h < 2`, so each
    // store writes `o[8 * h..8 * h + 8]`, inside the sixteen floats of one row of `out`.
    unsafe {
        for (o, a) in out.iter_mut().zip(acc) {
            _mm256_storeu_ps(o.as_mut_ptr().add(8 * h), a);
        }
    }
}

/// [`panel_dot_q4_k`] with AVX2, eight rows at a time: the same integer sums (a Q4_K
/// sub-block's eight `vpmaddubsw` add up in 16 bits, 8 x 15 x 127 x 2 < 2^15, Q5_K's in two
/// fours; `vpmaddwd` with the scale repeated in both halves applies it), the same f32 steps.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the AVX2 panel table's features): this function has no
/// `target_feature` of its own and is inlined into one that enables them. Any lengths are fine: the
/// kernel runs over the panel blocks of `w` for which every row of `x` has a block.
#[inline(always)]
pub(super) unsafe fn panel_dot_q4_k_avx2<const HIGH: bool, const NR: usize>(
    w: &[u8],
    x: [&[BlockQ8K]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees AVX2, FMA and F16C; `over_halves` gives `panel_block_q4_k_avx2`
    // whole blocks, `b` below every row's length and `h < 2`.
    unsafe {
        let fmt = if HIGH {
            PanelFormat::Q5K
        } else {
            PanelFormat::Q4K
        };
        over_halves(
            w,
            fmt.panel_block_bytes(),
            &x,
            panel_block_q4_k_avx2::<HIGH, NR>,
        )
    }
}

/// Half `h` of the panel block at `p` (block `b` of every row of `x`) into `acc`: one step
/// of [`panel_dot_q4_k_avx2`], whose safety comment says what it reads.
///
/// # Safety
/// As [`HalfStep`]: AVX2, FMA and F16C, a whole block at `p`, `b` below every `x[r].len()`,
/// `h < 2`.
#[inline(always)]
pub(super) unsafe fn panel_block_q4_k_avx2<const HIGH: bool, const NR: usize>(
    p: *const u8,
    x: &[&[BlockQ8K]; NR],
    b: usize,
    h: usize,
    acc: &mut [__m256; NR],
) {
    // SAFETY: the caller guarantees AVX2, FMA and F16C. The caller guarantees the panel block `p`
    // (`pbb` bytes) and `b < x[r].len()` for every row, so `get_unchecked(b)` is in bounds. The
    // offsets below are those of half `h < 2`, and each lies inside the full-width part. From `p` it
    // reads `d` at `16 * h` and `dmin` at `32 + 16 * h` (16 bytes each), 8 scale bytes at `64 + 16 * j
    // + 8 * h` (below 192), 16 min bytes at `192 + 32 * k + 16 * h` (below 320), Q5_K's 4 mask bytes
    // at `320 + 8 * (8 * j + g) + 4 * h` (below 832) and 32 bytes of each 64-byte chunk `8 * k + g <
    // 32` past `quants_offset`, which end at `pbb`; from the activation block the unaligned `i32`s of
    // `qs[32 * j..][..32]`, `j < 8`, and `bsums` through safe indexing.
    unsafe {
        let fmt = if HIGH {
            PanelFormat::Q5K
        } else {
            PanelFormat::Q4K
        };
        let low = _mm256_set1_epi8(0x0F);
        let q = p.add(fmt.quants_offset() + 32 * h);
        let mut tot = [_mm256_setzero_si256(); NR];
        for j in 0..8 {
            let (k, t) = (j / 2, j % 2);
            let mut u = [_mm256_setzero_si256(); 8];
            for (g, v) in u.iter_mut().enumerate() {
                let c = _mm256_loadu_si256(q.add(64 * (8 * k + g)) as *const __m256i);
                let c = if t == 0 { c } else { _mm256_srli_epi16(c, 4) };
                *v = _mm256_and_si256(c, low);
                if HIGH {
                    let at = p.add(320 + 8 * (8 * j + g) + 4 * h) as *const u32;
                    let hb = bytes_from_bits(std::ptr::read_unaligned(at));
                    *v = _mm256_or_si256(*v, _mm256_and_si256(hb, _mm256_set1_epi8(16)));
                }
            }
            let sc =
                _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(64 + 16 * j + 8 * h) as *const __m128i));
            let sc = _mm256_or_si256(sc, _mm256_slli_epi32(sc, 16));
            for r in 0..NR {
                let a = x[r].get_unchecked(b).qs.as_ptr().add(32 * j) as *const i32;
                let mut s16 = [_mm256_setzero_si256(); 2];
                for (g, ug) in u.iter().enumerate() {
                    let xb = _mm256_set1_epi32(std::ptr::read_unaligned(a.add(g)));
                    let half = if HIGH { g / 4 } else { 0 };
                    s16[half] = _mm256_add_epi16(s16[half], _mm256_maddubs_epi16(*ug, xb));
                }
                tot[r] = _mm256_add_epi32(tot[r], _mm256_madd_epi16(s16[0], sc));
                if HIGH {
                    tot[r] = _mm256_add_epi32(tot[r], _mm256_madd_epi16(s16[1], sc));
                }
            }
        }
        let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * h) as *const __m128i));
        let dmin = _mm256_cvtph_ps(_mm_loadu_si128(p.add(32 + 16 * h) as *const __m128i));
        let m: [__m256i; 4] = std::array::from_fn(|k| {
            _mm256_cvtepu8_epi16(_mm_loadu_si128(
                p.add(192 + 32 * k + 16 * h) as *const __m128i
            ))
        });
        for r in 0..NR {
            let a = x[r].get_unchecked(b);
            let mut mins = _mm256_setzero_si256();
            for (k, mk) in m.iter().enumerate() {
                let bs = &a.bsums[4 * k..4 * k + 4];
                let pair = (bs[0] + bs[1]) as u16 as u32 | ((bs[2] + bs[3]) as u16 as u32) << 16;
                let pr = _mm256_set1_epi32(pair as i32);
                mins = _mm256_add_epi32(mins, _mm256_madd_epi16(*mk, pr));
            }
            let scale = _mm256_mul_ps(d, _mm256_set1_ps(a.d));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot[r]), scale, acc[r]);
            let mscale = _mm256_mul_ps(dmin, _mm256_set1_ps(-a.d));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), mscale, acc[r]);
        }
    }
}

/// [`panel_dot_q6_k`] with AVX2, eight rows at a time: the same integer sums (two groups'
/// `vpmaddubsw` add up in 16 bits: 2 x 63 x 127 x 2 < 2^15), the same f32 steps.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the AVX2 panel table's features): this function has no
/// `target_feature` of its own and is inlined into one that enables them. Any lengths are fine: the
/// kernel runs over the panel blocks of `w` for which every row of `x` has a block.
#[inline(always)]
pub(super) unsafe fn panel_dot_q6_k_avx2<const NR: usize>(
    w: &[u8],
    x: [&[BlockQ8K]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees AVX2, FMA and F16C; `over_halves` gives `panel_block_q6_k_avx2`
    // whole blocks, `b` below every row's length and `h < 2`.
    unsafe {
        let fmt = PanelFormat::Q6K;
        over_halves(w, fmt.panel_block_bytes(), &x, panel_block_q6_k_avx2::<NR>)
    }
}

/// Half `h` of the panel block at `p` (block `b` of every row of `x`) into `acc`: one step
/// of [`panel_dot_q6_k_avx2`], whose safety comment says what it reads.
///
/// # Safety
/// As [`HalfStep`]: AVX2, FMA and F16C, a whole block at `p`, `b` below every `x[r].len()`,
/// `h < 2`.
#[inline(always)]
pub(super) unsafe fn panel_block_q6_k_avx2<const NR: usize>(
    p: *const u8,
    x: &[&[BlockQ8K]; NR],
    b: usize,
    h: usize,
    acc: &mut [__m256; NR],
) {
    // SAFETY: the caller guarantees AVX2, FMA and F16C. The caller guarantees the panel block `p`
    // (`pbb` bytes) and `b < x[r].len()` for every row, so `get_unchecked(b)` is in bounds. The
    // offsets below are those of half `h < 2`, and each lies inside the full-width part. From `p` it
    // reads `d` at `16 * h` (16 bytes), 16 scale bytes at `32 + 32 * k + 16 * h`, `k < 8` (below 288 =
    // `quants_offset`), and 32 bytes of each 64-byte low chunk `c < 32` and high chunk `c % 16` after
    // it, which end at `pbb`; from the activation block the `i32` at `bsums[2 * k]`, `k < 8`, and the
    // unaligned `i32`s of `qs[16 * s..][..16]` and `qs[128 + 16 * s..][..16]`, `s < 8`; and
    // `add_scaled_avx2` gets `b`.
    unsafe {
        let fmt = PanelFormat::Q6K;
        let (low, two) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x30));
        let q = p.add(fmt.quants_offset() + 32 * h);
        let high = p.add(fmt.quants_offset() + 2048 + 32 * h);
        // Scales of sub-blocks 2k and 2k+1 as an i16 pair per lane.
        let pair = |k: usize| {
            _mm256_cvtepi8_epi16(_mm_loadu_si128(
                p.add(32 + 32 * k + 16 * h) as *const __m128i
            ))
        };
        let mut tot = [_mm256_setzero_si256(); NR];
        for k in 0..8 {
            let v = pair(k);
            for r in 0..NR {
                let bs = x[r].get_unchecked(b).bsums.as_ptr().add(2 * k) as *const i32;
                let bs = _mm256_set1_epi32(std::ptr::read_unaligned(bs));
                tot[r] = _mm256_add_epi32(tot[r], _mm256_madd_epi16(v, bs));
            }
        }
        for t in tot.iter_mut() {
            *t = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(*t, 5));
        }
        for s in 0..8 {
            let mut u = [_mm256_setzero_si256(); 8];
            for gi in 0..4 {
                let c = 4 * s + gi;
                let v = _mm256_loadu_si256(q.add(64 * c) as *const __m256i);
                let hb = _mm256_loadu_si256(high.add(64 * (c % 16)) as *const __m256i);
                let (h_lo, h_hi) = if c < 16 {
                    (_mm256_slli_epi16(hb, 4), hb)
                } else {
                    (_mm256_slli_epi16(hb, 2), _mm256_srli_epi16(hb, 2))
                };
                u[gi] = _mm256_or_si256(_mm256_and_si256(v, low), _mm256_and_si256(h_lo, two));
                let v_hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                u[4 + gi] = _mm256_or_si256(v_hi, _mm256_and_si256(h_hi, two));
            }
            let sc_lo = repeat_half(pair(s / 2), s % 2);
            let sc_hi = repeat_half(pair((s + 8) / 2), s % 2);
            for r in 0..NR {
                let a = x[r].get_unchecked(b).qs.as_ptr();
                for (half, (base, sc)) in [(16 * s, sc_lo), (128 + 16 * s, sc_hi)]
                    .into_iter()
                    .enumerate()
                {
                    let ai = a.add(base) as *const i32;
                    let m = |gi: usize| {
                        let xb = _mm256_set1_epi32(std::ptr::read_unaligned(ai.add(gi)));
                        _mm256_maddubs_epi16(u[4 * half + gi], xb)
                    };
                    let s01 = _mm256_add_epi16(m(0), m(1));
                    let s23 = _mm256_add_epi16(m(2), m(3));
                    let prod =
                        _mm256_add_epi32(_mm256_madd_epi16(s01, sc), _mm256_madd_epi16(s23, sc));
                    tot[r] = _mm256_add_epi32(tot[r], prod);
                }
            }
        }
        let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * h) as *const __m128i));
        add_scaled_avx2(acc, &tot, d, x, b);
    }
}

/// [`panel_dot_iq4_xs`] with AVX2, eight rows at a time: the same integer sums, `Σ level·x`
/// taken directly with signed bytes (`vpmaddubsw` of |level| and x signed like the level:
/// pairs up to 2 x 127 x 127 < 2^15) and the scale applied by `vpmaddwd`, the same f32 steps.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the AVX2 panel table's features): this function has no
/// `target_feature` of its own and is inlined into one that enables them. Any lengths are fine: the
/// kernel runs over the panel blocks of `w` for which every row of `x` has a block.
#[inline(always)]
pub(super) unsafe fn panel_dot_iq4_xs_avx2<const NR: usize>(
    w: &[u8],
    x: [&[BlockQ8K]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees AVX2, FMA and F16C. `b < nb <= w.len() / pbb` puts the panel
    // block `p` (`pbb` bytes) inside `w`, and `nb <= x[r].len()` for every row makes
    // `get_unchecked(b)` in bounds. the offsets below are those of half `h < 2`, and each lies
    // inside the full-width part. From `p` it reads `d` at `16 * h` (16 bytes), 8 scale bytes at
    // `32 + 16 * j + 8 * h` (below 160 = `quants_offset`) and 32 bytes of each 64-byte chunk
    // `8 * k + g < 32` after it, which end at `pbb`; from the activation block the unaligned `i32`s
    // of `qs[32 * j..][..32]`, `j < 8`; the IQ4_NL table is a 16-byte array; `add_scaled_avx2` gets
    // `b < nb` and `store_half` `h < 2`.
    unsafe {
        let fmt = PanelFormat::IQ4XS;
        let pbb = fmt.panel_block_bytes();
        let nb = x.iter().fold(w.len() / pbb, |n, r| n.min(r.len()));
        let (low, flip) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(-128));
        let table =
            _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4_NL_U8.as_ptr() as *const __m128i));
        let mut out = [[0f32; PANEL]; NR];
        for h in 0..2 {
            let mut acc = [_mm256_setzero_ps(); NR];
            for b in 0..nb {
                let p = w.as_ptr().add(b * pbb);
                let q = p.add(fmt.quants_offset() + 32 * h);
                let mut tot = [_mm256_setzero_si256(); NR];
                for j in 0..8 {
                    let (k, t) = (j / 2, j % 2);
                    // The signed levels of the eight groups of sub-block j.
                    let mut lv = [_mm256_setzero_si256(); 8];
                    for (g, v) in lv.iter_mut().enumerate() {
                        let c = _mm256_loadu_si256(q.add(64 * (8 * k + g)) as *const __m256i);
                        let c = if t == 0 { c } else { _mm256_srli_epi16(c, 4) };
                        let u = _mm256_shuffle_epi8(table, _mm256_and_si256(c, low));
                        *v = _mm256_xor_si256(u, flip);
                    }
                    // The scale as i16 in both halves of each row's 32-bit lane.
                    let sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        p.add(32 + 16 * j + 8 * h) as *const __m128i
                    ));
                    let sc = _mm256_or_si256(
                        _mm256_and_si256(sc, _mm256_set1_epi32(0xFFFF)),
                        _mm256_slli_epi32(sc, 16),
                    );
                    for r in 0..NR {
                        let a = x[r].get_unchecked(b).qs.as_ptr().add(32 * j) as *const i32;
                        for (g, lg) in lv.iter().enumerate() {
                            let xb = _mm256_set1_epi32(std::ptr::read_unaligned(a.add(g)));
                            let pr = _mm256_maddubs_epi16(
                                _mm256_abs_epi8(*lg),
                                _mm256_sign_epi8(xb, *lg),
                            );
                            tot[r] = _mm256_add_epi32(tot[r], _mm256_madd_epi16(pr, sc));
                        }
                    }
                }
                let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * h) as *const __m128i));
                add_scaled_avx2(&mut acc, &tot, d, &x, b);
            }
            store_half(&mut out, acc, h);
        }
        out
    }
}

/// MXFP4 panels against `NR` rows of [`BlockQ8`], eight weight rows per 256-bit vector: per
/// block the codes become their signed levels (one byte shuffle through ggml's
/// `kvalues_mxfp4`), `vpmaddubsw` of the levels' magnitudes against the activation bytes
/// carrying the levels' signs (at most 2 x 12 x 127 per pair) and `vpmaddwd` give the exact
/// `Σ k·x` per row, and `acc = fma(float(Σ), 2^(e-128)·dx, acc)`: the steps of
/// [`super::generic::vec_dot_mxfp4`], so its bits.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the AVX2 panel table's features): this function has no
/// `target_feature` of its own and is inlined into one that enables them. Any lengths are fine: the
/// kernel runs over the panel blocks of `w` for which every row of `x` has a block.
#[inline(always)]
pub(super) unsafe fn panel_dot_mxfp4_avx2<const NR: usize>(
    w: &[u8],
    x: [&[BlockQ8]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees AVX2, FMA and F16C. `b < nb <= w.len() / pbb` puts the panel
    // block `p` (`pbb` = 272 bytes) inside `w`, and `nb <= x[r].len()` for every row makes
    // `get_unchecked(b)` in bounds. From `p` it reads the eight exponents of half `h < 2` at
    // `8 * h` (inside the sixteen at 0..16) and 32 bytes at `16 + 32 * h + 64 * c`, `c < 4`,
    // which end at `pbb`; from the activation block the unaligned `i32`s at bytes `4 * g`,
    // `g < 8`, of its 32 `qs`; the level table is a 16-byte array; `store_half` gets `h < 2`.
    unsafe {
        let fmt = PanelFormat::MXFP4;
        let pbb = fmt.panel_block_bytes();
        let nb = x.iter().fold(w.len() / pbb, |n, r| n.min(r.len()));
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let table =
            _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_MXFP4.as_ptr() as *const __m128i));
        let mut out = [[0f32; PANEL]; NR];
        for h in 0..2 {
            let mut acc = [_mm256_setzero_ps(); NR];
            for b in 0..nb {
                let p = w.as_ptr().add(b * pbb);
                let d = e8m0_half_avx2(p.add(8 * h));
                let q = p.add(fmt.quants_offset() + 32 * h);
                // Levels of group g (elements 4g..4g+4), row i in lane i, and their magnitudes.
                let mut lv = [_mm256_setzero_si256(); 8];
                let mut mag = [_mm256_setzero_si256(); 8];
                for c in 0..4 {
                    let v = _mm256_loadu_si256(q.add(64 * c) as *const __m256i);
                    lv[c] = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low));
                    lv[c + 4] =
                        _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
                }
                for (m, l) in mag.iter_mut().zip(&lv) {
                    *m = _mm256_abs_epi8(*l);
                }
                for j in 0..NR {
                    let a = x[j].get_unchecked(b);
                    let qi = a.qs.as_ptr() as *const i32;
                    let mut s = _mm256_setzero_si256();
                    for g in 0..8 {
                        let xg = _mm256_set1_epi32(std::ptr::read_unaligned(qi.add(g)));
                        let pr = _mm256_maddubs_epi16(mag[g], _mm256_sign_epi8(xg, lv[g]));
                        s = _mm256_add_epi32(s, _mm256_madd_epi16(pr, ones));
                    }
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(a.d));
                    acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[j]);
                }
            }
            store_half(&mut out, acc, h);
        }
        out
    }
}

/// `2^(e - 128)` for the eight e8m0 exponents at `e`, one per 32-bit lane, from bits as
/// ggml's `GGML_E8M0_TO_FP32_HALF`: `(e - 1) << 23` from 2 up, the subnormals
/// `0x200000 << e` below.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the AVX2 panel table's features): this function has no
/// `target_feature` of its own and is inlined into one that enables them. `e` must be valid for
/// reading 8 bytes, at any alignment.
#[inline(always)]
pub(super) unsafe fn e8m0_half_avx2(e: *const u8) -> __m256 {
    // SAFETY: the caller guarantees AVX2 and the 8 bytes at `e` (one unaligned 64-bit load).
    unsafe {
        let e = _mm256_cvtepu8_epi32(_mm_loadl_epi64(e as *const __m128i));
        let normal = _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23);
        let tiny = _mm256_sllv_epi32(_mm256_set1_epi32(0x0020_0000), e);
        let is_normal = _mm256_cmpgt_epi32(e, _mm256_set1_epi32(1));
        _mm256_castsi256_ps(_mm256_blendv_epi8(tiny, normal, is_normal))
    }
}

/// [`panel_dot_q2_k`] with AVX2, eight rows at a time: the same integer sums (a sub-block's
/// four `vpmaddubsw` add up in 16 bits: 4 x 2 x 3 x 127 < 2^15; `vpmaddwd` with the scale
/// repeated in both halves applies it), the same f32 steps.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the AVX2 panel table's features): this function has no
/// `target_feature` of its own and is inlined into one that enables them. Any lengths are fine: the
/// kernel runs over the panel blocks of `w` for which every row of `x` has a block.
#[inline(always)]
pub(super) unsafe fn panel_dot_q2_k_avx2<const NR: usize>(
    w: &[u8],
    x: [&[BlockQ8K]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees AVX2, FMA and F16C. `b < nb <= w.len() / pbb` puts the panel
    // block `p` (`pbb` bytes) inside `w`, and `nb <= x[r].len()` for every row makes
    // `get_unchecked(b)` in bounds. the offsets below are those of half `h < 2`, and each lies
    // inside the full-width part. From `p` it reads `d` at `16 * h` and `dmin` at `32 + 16 * h` (16
    // bytes each), 8 scale bytes at `64 + 16 * s + 8 * h`, `s < 16` (below 320), 16 min bytes at
    // `320 + 32 * k + 16 * h`, `k < 8` (below 576 = `quants_offset`) and 32 bytes of each 64-byte
    // chunk `4 * c + gi < 16` after it, which end at `pbb`; from the activation block the unaligned
    // `i32`s of `qs[16 * s..][..16]` and the `i32` at `bsums[2 * k]`, `k < 8`; `store_half` gets
    // `h < 2`.
    unsafe {
        let fmt = PanelFormat::Q2K;
        let pbb = fmt.panel_block_bytes();
        let nb = x.iter().fold(w.len() / pbb, |n, r| n.min(r.len()));
        let three = _mm256_set1_epi8(3);
        let mut out = [[0f32; PANEL]; NR];
        for h in 0..2 {
            let mut acc = [_mm256_setzero_ps(); NR];
            for b in 0..nb {
                let p = w.as_ptr().add(b * pbb);
                let q = p.add(fmt.quants_offset() + 32 * h);
                let scale = |s: usize| {
                    let sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                        p.add(64 + 16 * s + 8 * h) as *const __m128i
                    ));
                    _mm256_or_si256(sc, _mm256_slli_epi32(sc, 16))
                };
                let mut tot = [_mm256_setzero_si256(); NR];
                for c in 0..4 {
                    let v: [__m256i; 4] = std::array::from_fn(|gi| {
                        _mm256_loadu_si256(q.add(64 * (4 * c + gi)) as *const __m256i)
                    });
                    for level in 0..4 {
                        let s = 4 * level + c;
                        let shift = _mm_cvtsi32_si128(2 * level as i32);
                        let sc = scale(s);
                        let u: [__m256i; 4] = std::array::from_fn(|gi| {
                            _mm256_and_si256(_mm256_srl_epi16(v[gi], shift), three)
                        });
                        for r in 0..NR {
                            let a = x[r].get_unchecked(b).qs.as_ptr().add(16 * s) as *const i32;
                            let mut s16 = _mm256_setzero_si256();
                            for (gi, ug) in u.iter().enumerate() {
                                let xb = _mm256_set1_epi32(std::ptr::read_unaligned(a.add(gi)));
                                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(*ug, xb));
                            }
                            tot[r] = _mm256_add_epi32(tot[r], _mm256_madd_epi16(s16, sc));
                        }
                    }
                }
                let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * h) as *const __m128i));
                let dmin = _mm256_cvtph_ps(_mm_loadu_si128(p.add(32 + 16 * h) as *const __m128i));
                let m: [__m256i; 8] = std::array::from_fn(|k| {
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(
                        p.add(320 + 32 * k + 16 * h) as *const __m128i
                    ))
                });
                for r in 0..NR {
                    let a = x[r].get_unchecked(b);
                    let mut mins = _mm256_setzero_si256();
                    for (k, mk) in m.iter().enumerate() {
                        let bs =
                            std::ptr::read_unaligned(a.bsums.as_ptr().add(2 * k) as *const i32);
                        mins =
                            _mm256_add_epi32(mins, _mm256_madd_epi16(*mk, _mm256_set1_epi32(bs)));
                    }
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(a.d));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot[r]), scale, acc[r]);
                    let mscale = _mm256_mul_ps(dmin, _mm256_set1_ps(-a.d));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), mscale, acc[r]);
                }
            }
            store_half(&mut out, acc, h);
        }
        out
    }
}

/// [`panel_dot_half`] with AVX2, eight rows at a time: the same per-lane steps, so the same
/// results.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the AVX2 panel table's features): this function has no
/// `target_feature` of its own and is inlined into one that enables them. Any lengths are fine: the
/// kernel runs over the first `min(w.len() / 32, x[r].len())` elements of every row.
#[inline(always)]
pub(super) unsafe fn panel_dot_half_avx2<const BF16: bool, const NR: usize>(
    w: &[u8],
    x: [&[f32]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees AVX2, FMA and F16C. `e < k <= w.len() / 32` makes the 16-byte
    // load at `32 * e + 16 * h`, `h < 2`, lie inside `w`, `k <= x[r].len()` makes
    // `get_unchecked(e)` in bounds, and `store_half` gets `h < 2`.
    unsafe {
        let k = x.iter().fold(w.len() / 32, |n, r| n.min(r.len()));
        let mut out = [[0f32; PANEL]; NR];
        for h in 0..2 {
            let load = |e: usize| {
                let v = _mm_loadu_si128(w.as_ptr().add(32 * e + 16 * h) as *const __m128i);
                if BF16 {
                    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16))
                } else {
                    _mm256_cvtph_ps(v)
                }
            };
            let mut acc = [[_mm256_setzero_ps(); 4]; NR];
            let k4 = k / 4 * 4;
            for e0 in (0..k4).step_by(4) {
                for (a, e) in (e0..e0 + 4).enumerate() {
                    let wv = load(e);
                    for r in 0..NR {
                        let xv = _mm256_set1_ps(*x[r].get_unchecked(e));
                        acc[r][a] = _mm256_fmadd_ps(wv, xv, acc[r][a]);
                    }
                }
            }
            for e in k4..k {
                let wv = load(e);
                for r in 0..NR {
                    let xv = _mm256_set1_ps(*x[r].get_unchecked(e));
                    acc[r][e % 4] = _mm256_fmadd_ps(wv, xv, acc[r][e % 4]);
                }
            }
            let sums =
                acc.map(|a| _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
            store_half(&mut out, sums, h);
        }
        out
    }
}
