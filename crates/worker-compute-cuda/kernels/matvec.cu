// Matrix-vector products for decode (one activation row): out[j] = dot(x, w[j]) (+ bias[j]).
//
// One warp per output row (the fused gate/up kernel: one row of each), MV_WARPS warps per block. A row is processed in segments
// of 32 chunks of 32 elements: the warp stages a segment's bytes in shared memory with
// coalesced 16-byte loads, then lane l takes chunk l: it reads the chunk's quantized bytes
// with the widest loads the block layout's alignment allows (u32 where blocks are 4-byte
// aligned, u16 otherwise) and its 32 activations (8 float4 loads, once for both rows of
// the gate/up kernel, which halved its L1 traffic), and accumulates in f32; the lanes are
// summed with shuffles. Every row length here is a
// multiple of 32 (checked by the host), and a chunk never straddles a block (block sizes
// are 32 or 256; a segment of a 256-block type is 4 whole blocks).
//
// Each `dot32_<type>(row, c, xs, sx)` returns sum_{e<32} w[32c + e] * xs[e] (xs: the chunk's
// 32 activations in registers, sx: their sum, for the types with an offset), with exactly the
// dequantization of the `dq_<type>` element functions in quant.cu (ggml's block layouts).

#define MV_WARPS 4

__device__ __forceinline__ void load_x32(const float* xc, float* xs) {
    const float4* p = (const float4*)xc;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        float4 v = p[i];
        xs[4 * i] = v.x;
        xs[4 * i + 1] = v.y;
        xs[4 * i + 2] = v.z;
        xs[4 * i + 3] = v.w;
    }
}

__device__ __forceinline__ float sum32(const float* xs) {
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; ++i) s += xs[i];
    return s;
}

// Byte i of 16 bytes held as 8 u16 or 4 u32 words (little-endian).
__device__ __forceinline__ u32 byte16(const u16* w, int i) { return (w[i >> 1] >> (8 * (i & 1))) & 0xffu; }
__device__ __forceinline__ u32 byte32(const u32* w, int i) { return (w[i >> 2] >> (8 * (i & 3))) & 0xffu; }

// sum_e nib(e) * x[e] for a 4-bit chunk stored as 16 bytes: element e < 16 is the low
// nibble of byte e, element e >= 16 the high nibble of byte e - 16 (q4_0/q4_1/q5 layout).
__device__ __forceinline__ float dot_nib16(const u16* q, const float* xs) {
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < 16; ++e) {
        u32 b = byte16(q, e);
        s += (float)(b & 15u) * xs[e] + (float)(b >> 4) * xs[e + 16];
    }
    return s;
}

__device__ __forceinline__ float dot32_f32(const u8* row, int c, const float* xs, float sx) {
    float ws[32];
    load_x32((const float*)(row + (size_t)c * 128), ws);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; ++i) s += ws[i] * xs[i];
    return s;
}

__device__ __forceinline__ float dot32_f16(const u8* row, int c, const float* xs, float sx) {
    const uint4* p = (const uint4*)(row + (size_t)c * 64);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint4 v = p[i];
        u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int h = 0; h < 4; ++h) {
            s += h2f((u16)(w[h] & 0xffffu)) * xs[8 * i + 2 * h];
            s += h2f((u16)(w[h] >> 16)) * xs[8 * i + 2 * h + 1];
        }
    }
    return s;
}

__device__ __forceinline__ float dot32_bf16(const u8* row, int c, const float* xs, float sx) {
    const uint4* p = (const uint4*)(row + (size_t)c * 64);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint4 v = p[i];
        u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int h = 0; h < 4; ++h) {
            s += __uint_as_float(w[h] << 16) * xs[8 * i + 2 * h];
            s += __uint_as_float(w[h] & 0xffff0000u) * xs[8 * i + 2 * h + 1];
        }
    }
    return s;
}

// block_q4_0 (18 bytes, 2-byte aligned): d, qs[16]; value nib - 8.
__device__ __forceinline__ float dot32_q4_0(const u8* row, int c, const float* xs, float sx) {
    const u8* b = row + (size_t)c * 18;
    const u16* q16 = (const u16*)(b + 2);
    u16 q[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) q[i] = q16[i];
    return ldh(b) * (dot_nib16(q, xs) - 8.0f * sx);
}

// block_q4_1 (20 bytes, 4-byte aligned): d, m, qs[16]; value d * nib + m.
__device__ __forceinline__ float dot32_q4_1(const u8* row, int c, const float* xs, float sx) {
    const u8* b = row + (size_t)c * 20;
    const u32* q32 = (const u32*)(b + 4);
    u32 q[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) q[i] = q32[i];
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < 16; ++e) {
        u32 v = byte32(q, e);
        s += (float)(v & 15u) * xs[e] + (float)(v >> 4) * xs[e + 16];
    }
    return ldh(b) * s + ldh(b + 2) * sx;
}

// sum_e (nib(e) | bit(e) << 4) * x[e] for a q5 chunk: 16 nibble bytes plus a u32 of high bits.
__device__ __forceinline__ float dot_q5(const u32* q, u32 qh, const float* xs) {
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < 16; ++e) {
        u32 v = byte32(q, e);
        u32 lo = (v & 15u) | (((qh >> e) & 1u) << 4);
        u32 hi = (v >> 4) | (((qh >> (e + 16)) & 1u) << 4);
        s += (float)lo * xs[e] + (float)hi * xs[e + 16];
    }
    return s;
}

// block_q5_0 (22 bytes, 2-byte aligned): d, qh[4], qs[16]; value (nib | bit << 4) - 16.
__device__ __forceinline__ float dot32_q5_0(const u8* row, int c, const float* xs, float sx) {
    const u8* b = row + (size_t)c * 22;
    const u16* p = (const u16*)(b + 2);
    u16 w[10];
#pragma unroll
    for (int i = 0; i < 10; ++i) w[i] = p[i];
    u32 qh = (u32)w[0] | ((u32)w[1] << 16);
    u32 q[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) q[i] = (u32)w[2 + 2 * i] | ((u32)w[3 + 2 * i] << 16);
    return ldh(b) * (dot_q5(q, qh, xs) - 16.0f * sx);
}

// block_q5_1 (24 bytes, 8-byte aligned): d, m, qh[4], qs[16]; value d * (nib | bit << 4) + m.
__device__ __forceinline__ float dot32_q5_1(const u8* row, int c, const float* xs, float sx) {
    const u8* b = row + (size_t)c * 24;
    const u32* p = (const u32*)(b + 4);
    u32 w[5];
#pragma unroll
    for (int i = 0; i < 5; ++i) w[i] = p[i];
    return ldh(b) * dot_q5(w + 1, w[0], xs) + ldh(b + 2) * sx;
}

// block_q8_0 (34 bytes, 2-byte aligned): d, qs[32] (i8).
__device__ __forceinline__ float dot32_q8_0(const u8* row, int c, const float* xs, float sx) {
    const u8* b = row + (size_t)c * 34;
    const u16* p = (const u16*)(b + 2);
    u16 w[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) w[i] = p[i];
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        s += (float)(i8)(w[i] & 0xffu) * xs[2 * i];
        s += (float)(i8)(w[i] >> 8) * xs[2 * i + 1];
    }
    return ldh(b) * s;
}

// block_q4_K (144 bytes, 16-byte aligned): d, dmin, scales[12], qs[128]. Chunk j (0..8) of a
// super-block uses scale/min j and the low (j even) or high (j odd) nibbles of
// qs[32 (j / 2) .. + 32].
__device__ __forceinline__ float dot32_q4_k(const u8* row, int c, const float* xs, float sx) {
    const u8* b = row + (size_t)(c >> 3) * 144;
    int j = c & 7;
    const uint4* p = (const uint4*)(b + 16 + 32 * (j >> 1));
    uint4 v0 = p[0], v1 = p[1];
    u32 q[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
    int shift = (j & 1) * 4;
    float s = 0.0f;
#pragma unroll
    for (int l = 0; l < 32; ++l) s += (float)((byte32(q, l) >> shift) & 15u) * xs[l];
    int sc, m;
    scale_min_k4(j, b + 4, &sc, &m);
    return ldh(b) * (float)sc * s - ldh(b + 2) * (float)m * sx;
}

// block_q5_K (176 bytes, 16-byte aligned): d, dmin, scales[12], qh[32], qs[128]; chunk j adds
// bit j of qh[l] as the 5th bit.
__device__ __forceinline__ float dot32_q5_k(const u8* row, int c, const float* xs, float sx) {
    const u8* b = row + (size_t)(c >> 3) * 176;
    int j = c & 7;
    const uint4* p = (const uint4*)(b + 48 + 32 * (j >> 1));
    const uint4* ph = (const uint4*)(b + 16);
    uint4 v0 = p[0], v1 = p[1], h0 = ph[0], h1 = ph[1];
    u32 q[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
    u32 qh[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
    int shift = (j & 1) * 4;
    float s = 0.0f;
#pragma unroll
    for (int l = 0; l < 32; ++l) {
        u32 v = ((byte32(q, l) >> shift) & 15u) | (((byte32(qh, l) >> j) & 1u) << 4);
        s += (float)v * xs[l];
    }
    int sc, m;
    scale_min_k4(j, b + 4, &sc, &m);
    return ldh(b) * (float)sc * s - ldh(b + 2) * (float)m * sx;
}

// block_q6_K (210 bytes, 2-byte aligned): ql[128], qh[64], scales[16] (i8), d. Chunk j is
// quarter j % 4 of half j / 4: low bits from ql[64 half + 32 (quarter & 1) + l] (low nibble
// for quarters 0, 1, high for 2, 3), high bits (qh[32 half + l] >> 2 quarter) & 3, value - 32,
// scale scales[8 half + 2 quarter + l / 16].
__device__ __forceinline__ float dot32_q6_k(const u8* row, int c, const float* xs, float sx) {
    const u8* b = row + (size_t)(c >> 3) * 210;
    int j = c & 7, half = j >> 2, quarter = j & 3;
    const u16* pl = (const u16*)(b + 64 * half + 32 * (quarter & 1));
    const u16* ph = (const u16*)(b + 128 + 32 * half);
    u16 ql[16], qh[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        ql[i] = pl[i];
        qh[i] = ph[i];
    }
    int lshift = quarter < 2 ? 0 : 4, hshift = 2 * quarter;
    float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
    for (int l = 0; l < 32; ++l) {
        u32 lo = (byte16(ql, l) >> lshift) & 15u;
        u32 hi = (byte16(qh, l) >> hshift) & 3u;
        float v = (float)((int)(lo | (hi << 4)) - 32);
        if (l < 16) s0 += v * xs[l];
        else s1 += v * xs[l];
    }
    const i8* sc = (const i8*)(b + 192) + 8 * half + 2 * quarter;
    return ldh(b + 208) * ((float)sc[0] * s0 + (float)sc[1] * s1);
}

// block_q2_K (84 bytes, 4-byte aligned): scales[16], qs[64], d, dmin. Chunk j (0..8) of a
// super-block is bit pair j % 4 of qs[32 (j / 4) .. + 32], sub-blocks 2j and 2j + 1.
__device__ __forceinline__ float dot32_q2_k(const u8* row, int c, const float* xs, float sx) {
    const u8* b = row + (size_t)(c >> 3) * 84;
    int jc = c & 7, shift = 2 * (jc & 3);
    const u32* p = (const u32*)(b + 16 + 32 * (jc >> 2));
    u32 q[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) q[i] = p[i];
    float s0 = 0.0f, s1 = 0.0f, x0 = 0.0f, x1 = 0.0f;
#pragma unroll
    for (int l = 0; l < 32; ++l) {
        float v = (float)((byte32(q, l) >> shift) & 3u);
        if (l < 16) {
            s0 += v * xs[l];
            x0 += xs[l];
        } else {
            s1 += v * xs[l];
            x1 += xs[l];
        }
    }
    u32 sa = b[2 * jc], sb = b[2 * jc + 1];
    return ldh(b + 80) * ((float)(sa & 15u) * s0 + (float)(sb & 15u) * s1) -
           ldh(b + 82) * ((float)(sa >> 4) * x0 + (float)(sb >> 4) * x1);
}

// block_q3_K (110 bytes, 2-byte aligned): hmask[32], qs[64], scales[12], d. Chunk j (0..8) of
// a super-block: bit pair j % 4 of qs[32 (j / 4) + l], high bit 4 (j / 4) + j % 4 of
// hmask[l], sub-blocks 2j and 2j + 1 (see dq_q3_k).
__device__ __forceinline__ float dot32_q3_k(const u8* row, int c, const float* xs, float sx) {
    const u8* b = row + (size_t)(c >> 3) * 110;
    int jc = c & 7, n = jc >> 2, j = jc & 3;
    const u16* pq = (const u16*)(b + 32 + 32 * n);
    const u16* ph = (const u16*)b;
    u16 q[16], h[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        q[i] = pq[i];
        h[i] = ph[i];
    }
    float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
    for (int l = 0; l < 32; ++l) {
        int low = (int)((byte16(q, l) >> (2 * j)) & 3u);
        int high = (int)((byte16(h, l) >> (4 * n + j)) & 1u);
        float v = (float)(low - (high ? 0 : 4));
        if (l < 16) s0 += v * xs[l];
        else s1 += v * xs[l];
    }
    return ldh(b + 108) *
           ((float)q3k_scale(b + 96, 2 * jc) * s0 + (float)q3k_scale(b + 96, 2 * jc + 1) * s1);
}

// sum_e level(code e) * x[e] for 16 bytes of IQ4 codes in q4_0's nibble order.
__device__ __forceinline__ float dot_iq4(const u32* q, const float* xs) {
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < 16; ++e) {
        u32 v = byte32(q, e);
        s += (float)iq4_level(v & 15u) * xs[e] + (float)iq4_level(v >> 4) * xs[e + 16];
    }
    return s;
}

// block_iq4_nl (18 bytes, 2-byte aligned): d, qs[16].
__device__ __forceinline__ float dot32_iq4_nl(const u8* row, int c, const float* xs, float sx) {
    const u8* b = row + (size_t)c * 18;
    const u16* p = (const u16*)(b + 2);
    u32 q[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) q[i] = (u32)p[2 * i] | ((u32)p[2 * i + 1] << 16);
    return ldh(b) * dot_iq4(q, xs);
}

// block_iq4_xs (136 bytes, 8-byte aligned): d, scales_h, scales_l[4], qs[128]; chunk j (0..8)
// of a super-block is sub-block j: codes qs[16 j .. 16 j + 16], scale ls - 32 (see dq_iq4_xs).
__device__ __forceinline__ float dot32_iq4_xs(const u8* row, int c, const float* xs, float sx) {
    const u8* b = row + (size_t)(c >> 3) * 136;
    int j = c & 7;
    const uint2* p = (const uint2*)(b + 8 + 16 * j);
    uint2 v0 = p[0], v1 = p[1];
    u32 q[4] = {v0.x, v0.y, v1.x, v1.y};
    float sc = (float)iq4xs_scale(b, j);
    return ldh(b) * sc * dot_iq4(q, xs);
}

// block_mxfp4 (17 bytes, byte aligned): e (e8m0), qs[16]; value level 2^(e - 128), the codes in
// q4_0's nibble order, read a byte at a time.
__device__ __forceinline__ float dot32_mxfp4(const u8* row, int c, const float* xs, float sx) {
    const u8* b = row + (size_t)c * 17;
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < 16; ++e) {
        u32 v = b[1 + e];
        s += (float)mxfp4_level(v & 15u) * xs[e] + (float)mxfp4_level(v >> 4) * xs[e + 16];
    }
    return e8m0_half(b[0]) * s;
}

// Most bytes 32 chunks take (f32: 32 x 32 x 4); a warp stages one such segment at a time.
#define MV_SEG_MAX 4096

// Copies `bytes` bytes at `start` into the warp's shared buffer with coalesced 16-byte loads
// of the enclosing 16-byte aligned range (never below the allocation, which is 256-byte
// aligned; at most 15 bytes past a row end, which the host pads). Returns where `start`
// landed in the buffer.
__device__ __forceinline__ const u8* stage(const u8* start, long long bytes, u8* buf, int lane) {
    size_t s = (size_t)start;
    size_t a0 = s & ~(size_t)15, a1 = (s + (size_t)bytes + 15) & ~(size_t)15;
    int n16 = (int)((a1 - a0) >> 4);
    const uint4* src = (const uint4*)a0;
    uint4* dst = (uint4*)buf;
    __syncwarp();
    for (int i = lane; i < n16; i += 32) dst[i] = src[i];
    __syncwarp();
    return buf + (s - a0);
}

// The warp's dot products of x with rows r0 and (when two) r1 over k elements, in segments
// of 32 chunks: lane l loads chunk l's activations once and applies them to both rows.
#define DEFINE_MATVEC(NAME)                                                                    \
__device__ __forceinline__ void mv_rows_##NAME(const u8* r0, const u8* r1, bool two,           \
                                               const float* x, int k, long long row_bytes,     \
                                               int seg_bytes, u8* buf, int lane, float* d0,    \
                                               float* d1) {                                    \
    float acc0 = 0.0f, acc1 = 0.0f;                                                            \
    int chunks = k >> 5;                                                                       \
    long long off = 0;                                                                         \
    for (int c0 = 0; c0 < chunks; c0 += 32, off += seg_bytes) {                                \
        long long bytes = min((long long)seg_bytes, row_bytes - off);                          \
        int c = c0 + lane;                                                                     \
        bool live = c < chunks;                                                                \
        float xs[32], sx = 0.0f;                                                               \
        if (live) {                                                                            \
            load_x32(x + ((size_t)c << 5), xs);                                                \
            sx = sum32(xs);                                                                    \
        }                                                                                      \
        const u8* s0 = stage(r0 + off, bytes, buf, lane);                                      \
        if (live) acc0 += dot32_##NAME(s0, lane, xs, sx);                                      \
        if (two) {                                                                             \
            const u8* s1 = stage(r1 + off, bytes, buf, lane);                                  \
            if (live) acc1 += dot32_##NAME(s1, lane, xs, sx);                                  \
        }                                                                                      \
    }                                                                                          \
    *d0 = warp_sum(acc0);                                                                      \
    *d1 = warp_sum(acc1);                                                                      \
}                                                                                              \
/* One row per warp: small matrices are latency-bound, and a second row per warp (sharing */  \
/* the activations) measured slower on them.                                               */  \
extern "C" __global__ void __launch_bounds__(MV_WARPS * 32)                                    \
matvec_##NAME(float* out, const float* x, const u8* w, const float* bias, int n, int k,        \
              long long row_bytes, int seg_bytes) {                                            \
    pdl_start();                                                                               \
    __shared__ __align__(16) u8 sbuf[MV_WARPS][MV_SEG_MAX + 32];                               \
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                      \
    int j = blockIdx.x * MV_WARPS + warp;                                                      \
    if (j >= n) return;                                                                        \
    const u8* r0 = w + (size_t)j * row_bytes;                                                  \
    float d0, d1;                                                                              \
    mv_rows_##NAME(r0, r0, false, x, k, row_bytes, seg_bytes, sbuf[warp], lane, &d0, &d1);     \
    if (lane == 0) out[j] = d0 + (bias ? bias[j] : 0.0f);                                      \
}                                                                                              \
/* The MLP's gate and up projections of one row and the SwiGLU between them: gate[j],     */   \
/* up[j] and act[j] = silu(gate[j]) * up[j] (the formula of swiglu_f32); one j per warp.  */   \
extern "C" __global__ void __launch_bounds__(MV_WARPS * 32)                                    \
matvec_glu_##NAME(float* act, float* gate, float* up, const float* x, const u8* wg,            \
                  const u8* wu, int n, int k, long long row_bytes, int seg_bytes) {            \
    pdl_start();                                                                               \
    __shared__ __align__(16) u8 sbuf[MV_WARPS][MV_SEG_MAX + 32];                               \
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                      \
    int j = blockIdx.x * MV_WARPS + warp;                                                      \
    if (j >= n) return;                                                                        \
    float g, u;                                                                                \
    mv_rows_##NAME(wg + (size_t)j * row_bytes, wu + (size_t)j * row_bytes, true, x, k,         \
                   row_bytes, seg_bytes, sbuf[warp], lane, &g, &u);                            \
    if (lane == 0) {                                                                           \
        gate[j] = g;                                                                           \
        up[j] = u;                                                                             \
        act[j] = g / (1.0f + expf(-g)) * u;                                                    \
    }                                                                                          \
}

// Up to three one-row mat-vecs of the same input, weight type and row length in one launch
// (experimental: q, k and v): warp g takes row g of matrix 0, then of matrix 1, then of
// matrix 2 (n2 may be 0); one row per warp as in matvec_<type>.
#define DEFINE_MATVEC3(NAME)                                                                   \
extern "C" __global__ void __launch_bounds__(MV_WARPS * 32)                                    \
matvec3_##NAME(const float* x, int k, long long row_bytes, int seg_bytes, float* o0,           \
               const u8* w0, const float* b0, int n0, float* o1, const u8* w1,                 \
               const float* b1, int n1, float* o2, const u8* w2, const float* b2, int n2) {    \
    pdl_start();                                                                               \
    __shared__ __align__(16) u8 sbuf[MV_WARPS][MV_SEG_MAX + 32];                               \
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                      \
    int j = blockIdx.x * MV_WARPS + warp;                                                      \
    float* o = o0;                                                                             \
    const u8* w = w0;                                                                          \
    const float* b = b0;                                                                       \
    if (j >= n0) {                                                                             \
        j -= n0;                                                                               \
        o = o1;                                                                                \
        w = w1;                                                                                \
        b = b1;                                                                                \
        if (j >= n1) {                                                                         \
            j -= n1;                                                                           \
            o = o2;                                                                            \
            w = w2;                                                                            \
            b = b2;                                                                            \
            if (j >= n2) return;                                                               \
        }                                                                                      \
    }                                                                                          \
    const u8* r0 = w + (size_t)j * row_bytes;                                                  \
    float d0, d1;                                                                              \
    mv_rows_##NAME(r0, r0, false, x, k, row_bytes, seg_bytes, sbuf[warp], lane, &d0, &d1);     \
    if (lane == 0) o[j] = d0 + (b ? b[j] : 0.0f);                                              \
}

// Long rows (experimental, `CudaConfig::experimental`): one block of MV_WARPS warps per
// output row, warp w taking the row's segments w, w + MV_WARPS, ...; the warps' sums are
// added in shared memory. A warp then walks a quarter of the segments one after the other
// instead of all of them (the down projections: K = 4864 is 5 segments).
#define DEFINE_MATVEC_WIDE(NAME)                                                               \
extern "C" __global__ void __launch_bounds__(MV_WARPS * 32)                                    \
matvec_wide_##NAME(float* out, const float* x, const u8* w, const float* bias, int n, int k,   \
                   long long row_bytes, int seg_bytes) {                                       \
    pdl_start();                                                                               \
    __shared__ __align__(16) u8 sbuf[MV_WARPS][MV_SEG_MAX + 32];                               \
    __shared__ float part[MV_WARPS];                                                           \
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                      \
    int j = blockIdx.x;                                                                        \
    const u8* row = w + (size_t)j * row_bytes;                                                 \
    float acc = 0.0f;                                                                          \
    int chunks = k >> 5;                                                                       \
    for (int s = warp; 32 * s < chunks; s += MV_WARPS) {                                       \
        long long off = (long long)s * seg_bytes;                                              \
        long long bytes = min((long long)seg_bytes, row_bytes - off);                          \
        int c = 32 * s + lane;                                                                 \
        bool live = c < chunks;                                                                \
        float xs[32], sx = 0.0f;                                                               \
        if (live) {                                                                            \
            load_x32(x + ((size_t)c << 5), xs);                                                \
            sx = sum32(xs);                                                                    \
        }                                                                                      \
        const u8* s0 = stage(row + off, bytes, sbuf[warp], lane);                              \
        if (live) acc += dot32_##NAME(s0, lane, xs, sx);                                       \
    }                                                                                          \
    acc = warp_sum(acc);                                                                       \
    if (lane == 0) part[warp] = acc;                                                           \
    __syncthreads();                                                                           \
    if (threadIdx.x == 0) {                                                                    \
        float t = 0.0f;                                                                        \
        for (int i = 0; i < MV_WARPS; ++i) t += part[i];                                       \
        out[j] = t + (bias ? bias[j] : 0.0f);                                                  \
    }                                                                                          \
}

// Mixture of experts, one (row, rank) slot per grid row (llama.cpp's mul_mat_id as mat-vecs):
// grid (ceil(n / MV_WARPS), rows * used); block (b, y) takes slot y = r used + rank and the
// expert ids[y] that moe_route chose for row r; warp w takes output row j = b MV_WARPS + w of
// that expert's weights, found by id in tables of device addresses (one entry per expert;
// a bias table entry 0 means no bias), as in matvec_<type>.
//
// moe_glu: the gate and up rows j of the expert times x[r], each plus its bias, and the
// activation between them: act[y][j] = silu(g) u (oai = 0, swiglu_f32's formula), or
// gpt-oss's clamped min(g, limit) sigmoid(alpha min(g, limit)) (clamp(u, -limit, limit) + 1)
// (oai = 1, the CPU's swiglu_oai_row). moe_down: out[y][j] = act[y] . down[ids[y]][j] + bias.
#define DEFINE_MOE(NAME)                                                                       \
extern "C" __global__ void __launch_bounds__(MV_WARPS * 32)                                    \
moe_glu_##NAME(float* act, const float* x, const u32* ids, const unsigned long long* wg,       \
               const unsigned long long* wu, const unsigned long long* bg,                     \
               const unsigned long long* bu, int used, int n, int k, long long row_bytes,      \
               int seg_bytes, int oai, float alpha, float limit) {                             \
    pdl_start();                                                                               \
    __shared__ __align__(16) u8 sbuf[MV_WARPS][MV_SEG_MAX + 32];                               \
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                      \
    int j = blockIdx.x * MV_WARPS + warp, y = blockIdx.y;                                      \
    if (j >= n) return;                                                                        \
    u32 e = ids[y];                                                                            \
    const u8* rg = (const u8*)wg[e] + (size_t)j * row_bytes;                                   \
    const u8* ru = (const u8*)wu[e] + (size_t)j * row_bytes;                                   \
    float g, u;                                                                                \
    mv_rows_##NAME(rg, ru, true, x + (size_t)(y / used) * k, k, row_bytes, seg_bytes,          \
                   sbuf[warp], lane, &g, &u);                                                  \
    if (lane == 0) {                                                                           \
        if (bg[e]) g += ((const float*)bg[e])[j];                                              \
        if (bu[e]) u += ((const float*)bu[e])[j];                                              \
        float a;                                                                               \
        if (oai) {                                                                             \
            float gc = fminf(g, limit), uc = fminf(fmaxf(u, -limit), limit);                   \
            a = gc / (1.0f + expf(alpha * -gc)) * (uc + 1.0f);                                 \
        } else {                                                                               \
            a = g / (1.0f + expf(-g)) * u;                                                     \
        }                                                                                      \
        act[(size_t)y * n + j] = a;                                                            \
    }                                                                                          \
}                                                                                              \
extern "C" __global__ void __launch_bounds__(MV_WARPS * 32)                                    \
moe_down_##NAME(float* out, const float* act, const u32* ids, const unsigned long long* wd,    \
                const unsigned long long* bd, int n, int k, long long row_bytes,               \
                int seg_bytes) {                                                               \
    pdl_start();                                                                               \
    __shared__ __align__(16) u8 sbuf[MV_WARPS][MV_SEG_MAX + 32];                               \
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                      \
    int j = blockIdx.x * MV_WARPS + warp, y = blockIdx.y;                                      \
    if (j >= n) return;                                                                        \
    u32 e = ids[y];                                                                            \
    const u8* r0 = (const u8*)wd[e] + (size_t)j * row_bytes;                                   \
    float d0, d1;                                                                              \
    mv_rows_##NAME(r0, r0, false, act + (size_t)y * k, k, row_bytes, seg_bytes, sbuf[warp],    \
                   lane, &d0, &d1);                                                            \
    if (lane == 0) out[(size_t)y * n + j] = d0 + (bd[e] ? ((const float*)bd[e])[j] : 0.0f);    \
}

DEFINE_MATVEC(f32)
DEFINE_MATVEC(f16)
DEFINE_MATVEC(bf16)
DEFINE_MATVEC(q4_0)
DEFINE_MATVEC(q4_1)
DEFINE_MATVEC(q5_0)
DEFINE_MATVEC(q5_1)
DEFINE_MATVEC(q8_0)
DEFINE_MATVEC(q4_k)
DEFINE_MATVEC(q5_k)
DEFINE_MATVEC(q6_k)
DEFINE_MATVEC(iq4_nl)
DEFINE_MATVEC(iq4_xs)
DEFINE_MATVEC(q2_k)
DEFINE_MATVEC(q3_k)
DEFINE_MATVEC(mxfp4)

DEFINE_MATVEC_WIDE(f32)
DEFINE_MATVEC_WIDE(f16)
DEFINE_MATVEC_WIDE(bf16)
DEFINE_MATVEC_WIDE(q4_0)
DEFINE_MATVEC_WIDE(q4_1)
DEFINE_MATVEC_WIDE(q5_0)
DEFINE_MATVEC_WIDE(q5_1)
DEFINE_MATVEC_WIDE(q8_0)
DEFINE_MATVEC_WIDE(q4_k)
DEFINE_MATVEC_WIDE(q5_k)
DEFINE_MATVEC_WIDE(q6_k)
DEFINE_MATVEC_WIDE(iq4_nl)
DEFINE_MATVEC_WIDE(iq4_xs)
DEFINE_MATVEC_WIDE(q2_k)
DEFINE_MATVEC_WIDE(q3_k)
DEFINE_MATVEC_WIDE(mxfp4)

DEFINE_MATVEC3(f32)
DEFINE_MATVEC3(f16)
DEFINE_MATVEC3(bf16)
DEFINE_MATVEC3(q4_0)
DEFINE_MATVEC3(q4_1)
DEFINE_MATVEC3(q5_0)
DEFINE_MATVEC3(q5_1)
DEFINE_MATVEC3(q8_0)
DEFINE_MATVEC3(q4_k)
DEFINE_MATVEC3(q5_k)
DEFINE_MATVEC3(q6_k)
DEFINE_MATVEC3(iq4_nl)
DEFINE_MATVEC3(iq4_xs)
DEFINE_MATVEC3(q2_k)
DEFINE_MATVEC3(q3_k)
DEFINE_MATVEC3(mxfp4)

DEFINE_MOE(f32)
DEFINE_MOE(f16)
DEFINE_MOE(bf16)
DEFINE_MOE(q4_0)
DEFINE_MOE(q4_1)
DEFINE_MOE(q5_0)
DEFINE_MOE(q5_1)
DEFINE_MOE(q8_0)
DEFINE_MOE(q4_k)
DEFINE_MOE(q5_k)
DEFINE_MOE(q6_k)
DEFINE_MOE(iq4_nl)
DEFINE_MOE(iq4_xs)
DEFINE_MOE(q2_k)
DEFINE_MOE(q3_k)
DEFINE_MOE(mxfp4)
