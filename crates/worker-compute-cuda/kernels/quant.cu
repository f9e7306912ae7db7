// Weights in their GGUF storage types, dequantized inside the kernels: embedding rows and the
// matmul of f32 activations by a weight matrix. Each type has one element dequantizer
// `dq_<type>(row, i)`, the value of element i of a row; the kernels are stamped out per type.
// Block layouts follow ggml (see worker-gguf's quants for the Rust reference).

__device__ __forceinline__ float dq_f32(const u8* row, int i) { return ((const float*)row)[i]; }

__device__ __forceinline__ float dq_f16(const u8* row, int i) { return h2f(((const u16*)row)[i]); }

__device__ __forceinline__ float dq_bf16(const u8* row, int i) {
    return __uint_as_float(((u32)((const u16*)row)[i]) << 16);
}

// block_q4_0: d (f16), qs[16]; element e < 16 is the low nibble of qs[e], e >= 16 the high one.
__device__ __forceinline__ float dq_q4_0(const u8* row, int i) {
    const u8* b = row + (i >> 5) * 18;
    int e = i & 31;
    u8 q = b[2 + (e & 15)];
    int v = (e < 16 ? (q & 15) : (q >> 4)) - 8;
    return ldh(b) * (float)v;
}

// block_q4_1: d, m (f16), qs[16].
__device__ __forceinline__ float dq_q4_1(const u8* row, int i) {
    const u8* b = row + (i >> 5) * 20;
    int e = i & 31;
    u8 q = b[4 + (e & 15)];
    int v = e < 16 ? (q & 15) : (q >> 4);
    return ldh(b) * (float)v + ldh(b + 2);
}

// The 5th bit of element e of a q5 block: bit e of the little-endian u32 qh.
__device__ __forceinline__ int q5_high(const u8* qh, int e) { return (qh[e >> 3] >> (e & 7)) & 1; }

// block_q5_0: d (f16), qh[4], qs[16].
__device__ __forceinline__ float dq_q5_0(const u8* row, int i) {
    const u8* b = row + (i >> 5) * 22;
    int e = i & 31;
    u8 q = b[6 + (e & 15)];
    int lo = e < 16 ? (q & 15) : (q >> 4);
    int v = (lo | (q5_high(b + 2, e) << 4)) - 16;
    return ldh(b) * (float)v;
}

// block_q5_1: d, m (f16), qh[4], qs[16].
__device__ __forceinline__ float dq_q5_1(const u8* row, int i) {
    const u8* b = row + (i >> 5) * 24;
    int e = i & 31;
    u8 q = b[8 + (e & 15)];
    int lo = e < 16 ? (q & 15) : (q >> 4);
    int v = lo | (q5_high(b + 4, e) << 4);
    return ldh(b) * (float)v + ldh(b + 2);
}

// block_q8_0: d (f16), qs[32] (i8).
__device__ __forceinline__ float dq_q8_0(const u8* row, int i) {
    const u8* b = row + (i >> 5) * 34;
    return ldh(b) * (float)((const i8*)(b + 2))[i & 31];
}

// block_q4_K: d, dmin (f16), scales[12], qs[128]; 4 chunks of 64, each 32 low then 32 high
// nibbles of qs[32c..32c+32].
__device__ __forceinline__ float dq_q4_k(const u8* row, int i) {
    const u8* b = row + (i >> 8) * 144;
    int e = i & 255, c = e >> 6, w = e & 63, l = w & 31;
    int sc, m;
    scale_min_k4(2 * c + (w >> 5), b + 4, &sc, &m);
    u8 q = b[16 + 32 * c + l];
    int v = w < 32 ? (q & 15) : (q >> 4);
    return ldh(b) * (float)sc * (float)v - ldh(b + 2) * (float)m;
}

// block_q5_K: d, dmin (f16), scales[12], qh[32], qs[128].
__device__ __forceinline__ float dq_q5_k(const u8* row, int i) {
    const u8* b = row + (i >> 8) * 176;
    int e = i & 255, c = e >> 6, w = e & 63, l = w & 31;
    int sc, m;
    scale_min_k4(2 * c + (w >> 5), b + 4, &sc, &m);
    u8 q = b[48 + 32 * c + l];
    int v = w < 32 ? (q & 15) : (q >> 4);
    int hbit = (b[16 + l] >> (2 * c + (w >> 5))) & 1;
    return ldh(b) * (float)sc * (float)(v + 16 * hbit) - ldh(b + 2) * (float)m;
}

// block_q6_K: ql[128], qh[64], scales[16] (i8), d (f16); two halves of 128, each 4 quarters.
__device__ __forceinline__ float dq_q6_k(const u8* row, int i) {
    const u8* b = row + (i >> 8) * 210;
    int e = i & 255, half = e >> 7, w = e & 127, quarter = w >> 5, l = w & 31;
    const u8* ql = b + 64 * half;
    const u8* qh = b + 128 + 32 * half;
    const i8* sc = (const i8*)(b + 192) + 8 * half;
    u8 qlv = ql[l + 32 * (quarter & 1)];
    int lo = quarter < 2 ? (qlv & 15) : (qlv >> 4);
    int hi = (qh[l] >> (2 * quarter)) & 3;
    int v = (lo | (hi << 4)) - 32;
    return ldh(b + 208) * (float)sc[(l >> 4) + 2 * quarter] * (float)v;
}

// block_q2_K: scales[16] (scale in the low nibble, min in the high), qs[64], d, dmin. Element
// e: bit pair (e % 128) / 32 of qs[32 (e / 128) + e % 32], sub-block e / 16.
__device__ __forceinline__ float dq_q2_k(const u8* row, int i) {
    const u8* b = row + (i >> 8) * 84;
    int e = i & 255;
    int u = (b[16 + 32 * (e >> 7) + (e & 31)] >> (2 * ((e & 127) >> 5))) & 3;
    u8 sc = b[e >> 4];
    return ldh(b + 80) * (float)(sc & 15) * (float)u - ldh(b + 82) * (float)(sc >> 4);
}

// block_q3_K: hmask[32], qs[64], scales[12], d. Element e (n = e / 128, j = (e % 128) / 32,
// l = e % 32): bit pair j of qs[32 n + l], minus 4 unless bit 4n + j of hmask[l] is set;
// scale q3k_scale(e / 16).
__device__ __forceinline__ float dq_q3_k(const u8* row, int i) {
    const u8* b = row + (i >> 8) * 110;
    int e = i & 255, n = e >> 7, j = (e & 127) >> 5, l = e & 31;
    int low = (b[32 + 32 * n + l] >> (2 * j)) & 3;
    int high = (b[l] >> (4 * n + j)) & 1;
    return ldh(b + 108) * (float)q3k_scale(b + 96, e >> 4) * (float)(low - (high ? 0 : 4));
}

// block_iq4_nl: d (f16), qs[16]: 4-bit codes into the IQ4_NL levels, q4_0's nibble order.
__device__ __forceinline__ float dq_iq4_nl(const u8* row, int i) {
    const u8* b = row + (i >> 5) * 18;
    int e = i & 31;
    u8 q = b[2 + (e & 15)];
    return ldh(b) * (float)iq4_level(e < 16 ? (q & 15) : (q >> 4));
}

// block_iq4_xs: d (f16), scales_h (u16), scales_l[4], qs[128]; sub-block j of 32 has the
// 6-bit scale ls = low nibble j of scales_l | bits 2j..2j+2 of scales_h << 4, value
// d (ls - 32) level, codes in qs[16 j .. 16 j + 16] in q4_0's nibble order.
__device__ __forceinline__ float dq_iq4_xs(const u8* row, int i) {
    const u8* b = row + (i >> 8) * 136;
    int e = i & 255, j = e >> 5, l = e & 31;
    float sc = (float)iq4xs_scale(b, j);
    u8 q = b[8 + 16 * j + (l & 15)];
    return ldh(b) * sc * (float)iq4_level(l < 16 ? (q & 15) : (q >> 4));
}

// block_mxfp4 (17 bytes): e (e8m0), qs[16]: 4-bit codes into the MXFP4 levels, q4_0's nibble
// order; value level 2^(e - 128).
__device__ __forceinline__ float dq_mxfp4(const u8* row, int i) {
    const u8* b = row + (i >> 5) * 17;
    int e = i & 31;
    u8 q = b[1 + (e & 15)];
    return (float)mxfp4_level(e < 16 ? (q & 15) : (q >> 4)) * e8m0_half(b[0]);
}

// Activation rows each warp multiplies by one weight row (the weight row is dequantized once
// for all of them).
#define MM_ROWS 8

// embed: out[r] = row ids[r] of the table. dequant: out[r] = row r of w (grid: rows), the f32
// tile the prefill's cuBLAS GEMM multiplies by. matmul: out[r][j] = dot(x[r], w[j]) for
// r < rows, j < n; blocks of 4 warps, warp = one output column j, blockIdx.y picks a group of
// MM_ROWS activation rows.
#define DEFINE_TYPE(NAME)                                                                      \
extern "C" __global__ void embed_##NAME(float* out, const u8* table, const u32* ids, int cols, \
                                        long long row_bytes) {                                  \
    pdl_start();                                                                                \
    const u8* row = table + (size_t)ids[blockIdx.x] * row_bytes;                               \
    float* o = out + (size_t)blockIdx.x * cols;                                                 \
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = dq_##NAME(row, i);              \
}                                                                                               \
extern "C" __global__ void dequant_##NAME(float* out, const u8* w, int cols,                 \
                                          long long row_bytes) {                                \
    pdl_start();                                                                                \
    const u8* row = w + (size_t)blockIdx.x * row_bytes;                                         \
    float* o = out + (size_t)blockIdx.x * cols;                                                 \
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = dq_##NAME(row, i);              \
}                                                                                               \
extern "C" __global__ void matmul_##NAME(float* out, const float* x, const u8* w, int rows,     \
                                         int n, int k, long long row_bytes) {                   \
    pdl_start();                                                                                \
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;                                       \
    int j = blockIdx.x * (blockDim.x >> 5) + warp;                                              \
    int r0 = blockIdx.y * MM_ROWS;                                                              \
    if (j >= n) return;                                                                         \
    int nr = min(MM_ROWS, rows - r0);                                                           \
    const u8* wr = w + (size_t)j * row_bytes;                                                   \
    const float* xr = x + (size_t)r0 * k;                                                       \
    float acc[MM_ROWS];                                                                         \
    _Pragma("unroll") for (int rr = 0; rr < MM_ROWS; ++rr) acc[rr] = 0.0f;                      \
    for (int i = lane; i < k; i += 32) {                                                        \
        float wv = dq_##NAME(wr, i);                                                            \
        _Pragma("unroll") for (int rr = 0; rr < MM_ROWS; ++rr) {                                \
            if (rr < nr) acc[rr] += wv * xr[(size_t)rr * k + i];                                \
        }                                                                                       \
    }                                                                                           \
    _Pragma("unroll") for (int rr = 0; rr < MM_ROWS; ++rr) {                                    \
        float v = warp_sum(acc[rr]);                                                            \
        if (lane == 0 && rr < nr) out[(size_t)(r0 + rr) * n + j] = v;                           \
    }                                                                                           \
}

DEFINE_TYPE(f32)
DEFINE_TYPE(f16)
DEFINE_TYPE(bf16)
DEFINE_TYPE(q4_0)
DEFINE_TYPE(q4_1)
DEFINE_TYPE(q5_0)
DEFINE_TYPE(q5_1)
DEFINE_TYPE(q8_0)
DEFINE_TYPE(q4_k)
DEFINE_TYPE(q5_k)
DEFINE_TYPE(q6_k)
DEFINE_TYPE(iq4_nl)
DEFINE_TYPE(iq4_xs)
DEFINE_TYPE(q2_k)
DEFINE_TYPE(q3_k)
DEFINE_TYPE(mxfp4)
