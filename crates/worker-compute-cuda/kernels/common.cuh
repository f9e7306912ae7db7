// Helpers shared by every kernel file. The Rust side prepends this text to each .cu source
// before NVRTC compiles it, so the kernels need no include paths and no CUDA headers.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef signed char i8;

// IEEE half -> float through PTX, so no cuda_fp16.h is needed.
__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
}

// float -> IEEE half, round to nearest even.
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
    return h;
}

// A little-endian half at an even byte offset.
__device__ __forceinline__ float ldh(const u8* p) {
    return h2f(*(const u16*)p);
}

// Sum over the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over a block of at most 1024 threads (a multiple of 32); every thread gets the result.
__device__ float block_sum(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    int nw = blockDim.x >> 5;
    v = lane < nw ? part[lane] : 0.0f;
    return warp_sum(v);
}

// The 6-bit scale and min `j` (0..8) of a q4_K/q5_K super-block.
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Max over the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Programmatic dependent launch (sm_90+), called first by every kernel. A kernel launched with
// programmatic stream serialization may start while the kernel before it still runs: `wait`
// blocks until that kernel has finished and its writes are visible, so nothing the previous
// kernel wrote is read early. `launch_dependents` then lets the next kernel's launch begin
// while this one runs (it too waits before reading). Launched without the attribute, or on
// older GPUs, both are no-ops.
__device__ __forceinline__ void pdl_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Q3_K's sub-block scale k (0..16) minus 32: 6 bits, the low nibble in byte k % 8 of the
// 12 scale bytes (nibble k / 8), the high pair in byte 8 + k % 4 (pair k / 4).
__device__ __forceinline__ int q3k_scale(const u8* s, int k) {
    int low = (s[k & 7] >> (4 * (k >> 3))) & 15;
    int high = (s[8 + (k & 3)] >> (2 * (k >> 2))) & 3;
    return (low | (high << 4)) - 32;
}

// IQ4_XS's sub-block scale j (0..8) minus 32: the low nibble j of scales_l (bytes 4..8 of
// the block), the high pair j of scales_h (the u16 at byte 2).
__device__ __forceinline__ int iq4xs_scale(const u8* b, int j) {
    int low = (b[4 + (j >> 1)] >> (4 * (j & 1))) & 15;
    int high = (*(const u16*)(b + 2) >> (2 * j)) & 3;
    return (low | (high << 4)) - 32;
}

// The IQ4_NL level (ggml's kvalues_iq4nl: -127, -104, ..., 113) of 4-bit code q, from the
// table packed four bytes to a word and picked with byte_perm (no local-memory array).
__device__ __forceinline__ int iq4_level(u32 q) {
    u32 lo = q < 8 ? 0xbfad9881u : 0x26190d01u;
    u32 hi = q < 8 ? 0xf6eaddcfu : 0x71594535u;
    return (int)(signed char)(__byte_perm(lo, hi, q & 7u) & 0xffu);
}

// The MXFP4 level (ggml's kvalues_mxfp4: the e2m1 values doubled, 0, 1, 2, 3, 4, 6, 8, 12 and
// their negatives) of 4-bit code q, picked from the table packed four bytes to a word.
__device__ __forceinline__ int mxfp4_level(u32 q) {
    u32 lo = q < 8 ? 0x03020100u : 0xfdfeff00u;
    u32 hi = q < 8 ? 0x0c080604u : 0xf4f8fafcu;
    return (int)(signed char)(__byte_perm(lo, hi, q & 7u) & 0xffu);
}

// Half the value of e8m0 exponent e, 2^(e - 128), from its bits (subnormal for e < 2), as
// ggml's GGML_E8M0_TO_FP32_HALF.
__device__ __forceinline__ float e8m0_half(u32 e) {
    return __uint_as_float(e < 2 ? 0x00200000u << e : (e - 1) << 23);
}
