// Causal attention over an f16 KV cache with GQA.
// Cache layout (keys; values alike with value_head_dim): [layer][slot][kv_head][pos][head_dim].

// Stores row r's keys and values at (slot[r], pos[r]) of `layer`, as f16. Grid (rows, kv_heads).
extern "C" __global__ void kv_store(u16* kc, u16* vc, const float* k, const float* v,
                                    const u32* pos, const u32* slot, int layer, int slots,
                                    int max_pos, int kv_heads, int hd, int vhd) {
    int r = blockIdx.x, h = blockIdx.y;
    size_t cell = (((size_t)layer * slots + slot[r]) * kv_heads + h) * max_pos + pos[r];
    const float* kr = k + (size_t)r * kv_heads * hd + (size_t)h * hd;
    const float* vr = v + (size_t)r * kv_heads * vhd + (size_t)h * vhd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) kc[cell * hd + i] = f2h(kr[i]);
    for (int i = threadIdx.x; i < vhd; i += blockDim.x) vc[cell * vhd + i] = f2h(vr[i]);
}

#define ATT_WARPS 4
#define ATT_MAX_DIM 256
#define ATT_PER_LANE (ATT_MAX_DIM / 32)

// Grid (rows, heads), ATT_WARPS warps per block. Row r, query head h attends to positions
// 0..=pos[r] of its slot, reading kv head h / (heads / kv_heads). Each warp keeps an online
// softmax over positions t = warp, warp + ATT_WARPS, ...; the warps are merged at the end.
extern "C" __global__ void attention_f16(float* out, const float* q, const u16* kc, const u16* vc,
                                         const u32* pos, const u32* slot, int heads, int kv_heads,
                                         int hd, int vhd, float scale, int layer, int slots,
                                         int max_pos) {
    __shared__ float sm_m[ATT_WARPS], sm_s[ATT_WARPS];
    __shared__ float sm_acc[ATT_WARPS * ATT_MAX_DIM];
    int r = blockIdx.x, h = blockIdx.y;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int kh = h / (heads / kv_heads);
    int last = (int)pos[r];
    size_t base = (((size_t)layer * slots + slot[r]) * kv_heads + kh) * max_pos;
    const float* qr = q + (size_t)r * heads * hd + (size_t)h * hd;
    float qv[ATT_PER_LANE], acc[ATT_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATT_PER_LANE; ++i) {
        int d = lane + 32 * i;
        qv[i] = d < hd ? qr[d] : 0.0f;
        acc[i] = 0.0f;
    }
    float m = __int_as_float(0xff800000), s = 0.0f;
    for (int t = warp; t <= last; t += ATT_WARPS) {
        const u16* kr = kc + (base + t) * hd;
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_PER_LANE; ++i) {
            int d = lane + 32 * i;
            if (d < hd) dot += qv[i] * h2f(kr[d]);
        }
        dot = warp_sum(dot) * scale;
        float mn = fmaxf(m, dot);
        float c = expf(m - mn), p = expf(dot - mn);
        s = s * c + p;
        const u16* vr = vc + (base + t) * vhd;
#pragma unroll
        for (int i = 0; i < ATT_PER_LANE; ++i) {
            int d = lane + 32 * i;
            acc[i] = acc[i] * c + (d < vhd ? p * h2f(vr[d]) : 0.0f);
        }
        m = mn;
    }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_s[warp] = s;
    }
#pragma unroll
    for (int i = 0; i < ATT_PER_LANE; ++i) sm_acc[warp * ATT_MAX_DIM + lane + 32 * i] = acc[i];
    __syncthreads();
    float mx = sm_m[0];
    for (int w = 1; w < ATT_WARPS; ++w) mx = fmaxf(mx, sm_m[w]);
    float den = 0.0f, f[ATT_WARPS];
    for (int w = 0; w < ATT_WARPS; ++w) {
        f[w] = sm_s[w] > 0.0f ? expf(sm_m[w] - mx) : 0.0f;
        den += sm_s[w] * f[w];
    }
    float* o = out + (size_t)r * heads * vhd + (size_t)h * vhd;
    for (int d = threadIdx.x; d < vhd; d += blockDim.x) {
        float num = 0.0f;
        for (int w = 0; w < ATT_WARPS; ++w) num += sm_acc[w * ATT_MAX_DIM + d] * f[w];
        o[d] = num / den;
    }
}
