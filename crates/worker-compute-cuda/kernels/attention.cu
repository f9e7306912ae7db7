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

#define AD_WARPS 16

// Decode attention for one row (rows == 1), with the KV store fused in. Grid (heads), AD_WARPS
// warps per block; the row is at position last = pos[0] of slot[0].
//
// The block of the first query head of each kv head group stores the row's key and value
// (f16) at `last`; no block reads that cache cell: every block takes position `last` from the
// row's own k/v, rounded through f16 exactly as the store does, so the result equals the
// unfused kv_store + attention_f16.
//
// Warp w takes tiles of 32 positions t0 = 32 w, 32 (w + AD_WARPS), ...: lane l scores
// position t0 + l against q (in shared memory) with 16-byte loads of its key row, the warp
// updates its online softmax (max, sum) once per tile, and then accumulates the 32 value rows
// with lanes over pairs of dimensions. The warps are merged at the end as in attention_f16.
// Needs hd % 8 == 0 (16-byte key loads), vhd even (u32 value loads) and hd, vhd <=
// ATT_MAX_DIM (checked by the host).
extern "C" __global__ void __launch_bounds__(AD_WARPS * 32)
attention_decode_f16(float* out, const float* q, const float* k, const float* v, u16* kc,
                     u16* vc, const u32* pos, const u32* slot, int heads, int kv_heads, int hd,
                     int vhd, float scale, int layer, int slots, int max_pos) {
    __shared__ float sq[ATT_MAX_DIM], sk[ATT_MAX_DIM], sv[ATT_MAX_DIM];
    __shared__ float sm_m[AD_WARPS], sm_s[AD_WARPS];
    __shared__ float sm_acc[AD_WARPS * ATT_MAX_DIM];
    int h = blockIdx.x;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int group = heads / kv_heads, kh = h / group;
    int last = (int)pos[0];
    size_t base = (((size_t)layer * slots + slot[0]) * kv_heads + kh) * max_pos;
    const float* qr = q + (size_t)h * hd;
    const float* kr = k + (size_t)kh * hd;
    const float* vr = v + (size_t)kh * vhd;
    bool store = (h % group) == 0;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        u16 kh16 = f2h(kr[i]);
        sq[i] = qr[i];
        sk[i] = h2f(kh16);
        if (store) kc[(base + last) * hd + i] = kh16;
    }
    for (int i = threadIdx.x; i < vhd; i += blockDim.x) {
        u16 vh16 = f2h(vr[i]);
        sv[i] = h2f(vh16);
        if (store) vc[(base + last) * vhd + i] = vh16;
    }
    __syncthreads();

    float m = __int_as_float(0xff800000), s = 0.0f, acc[ATT_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATT_PER_LANE; ++i) acc[i] = 0.0f;
    for (int t0 = 32 * warp; t0 <= last; t0 += 32 * AD_WARPS) {
        int t = t0 + lane;
        float sc = __int_as_float(0xff800000);
        if (t < last) {
            const uint4* kp = (const uint4*)(kc + (base + t) * hd);
            float dot = 0.0f;
            for (int d8 = 0; d8 < (hd >> 3); ++d8) {
                uint4 u = kp[d8];
                u32 w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    dot += sq[8 * d8 + 2 * e] * h2f((u16)(w[e] & 0xffffu));
                    dot += sq[8 * d8 + 2 * e + 1] * h2f((u16)(w[e] >> 16));
                }
            }
            sc = dot * scale;
        } else if (t == last) {
            float dot = 0.0f;
            for (int d = 0; d < hd; ++d) dot += sq[d] * sk[d];
            sc = dot * scale;
        }
        // Lane 0's position t0 <= last is always live, so the tile max is finite.
        float mn = fmaxf(m, warp_max(sc));
        float c = expf(m - mn);
        float p = t <= last ? expf(sc - mn) : 0.0f;
        s = s * c + warp_sum(p);
#pragma unroll
        for (int i = 0; i < ATT_PER_LANE; ++i) acc[i] *= c;
        // Values: lane l holds dimensions 2 (l + 32 i) and 2 (l + 32 i) + 1 (one u32 of two
        // halves per row). The 32 rows' loads do not depend on each other or on acc, and the
        // loop is unrolled, so they are all in flight at once; rows past the tile's end read
        // a valid row (clamped) and are weighted by p = 0 through a select, never a multiply
        // of a stale value.
        int lastc = last > 0 ? last - 1 : 0;
#pragma unroll
        for (int l = 0; l < 32; ++l) {
            float pl = __shfl_sync(0xffffffffu, p, l);
            int tl = t0 + l;
            const u32* vrow = (const u32*)(vc + (base + min(tl, lastc)) * vhd);
#pragma unroll
            for (int i = 0; i < ATT_PER_LANE / 2; ++i) {
                int d = 2 * (lane + 32 * i);
                if (d < vhd) {
                    u32 w = vrow[d >> 1];
                    float v0 = h2f((u16)(w & 0xffffu)), v1 = h2f((u16)(w >> 16));
                    v0 = tl < last ? v0 : (tl == last ? sv[d] : 0.0f);
                    v1 = tl < last ? v1 : (tl == last ? sv[d + 1] : 0.0f);
                    acc[2 * i] += pl * v0;
                    acc[2 * i + 1] += pl * v1;
                }
            }
        }
        m = mn;
    }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_s[warp] = s;
    }
#pragma unroll
    for (int i = 0; i < ATT_PER_LANE / 2; ++i) {
        int d = 2 * (lane + 32 * i);
        sm_acc[warp * ATT_MAX_DIM + d] = acc[2 * i];
        sm_acc[warp * ATT_MAX_DIM + d + 1] = acc[2 * i + 1];
    }
    __syncthreads();
    float mx = sm_m[0];
    for (int w = 1; w < AD_WARPS; ++w) mx = fmaxf(mx, sm_m[w]);
    float den = 0.0f;
    for (int w = 0; w < AD_WARPS; ++w) den += sm_s[w] > 0.0f ? sm_s[w] * expf(sm_m[w] - mx) : 0.0f;
    float* o = out + (size_t)h * vhd;
    for (int d = threadIdx.x; d < vhd; d += blockDim.x) {
        float num = 0.0f;
        for (int w = 0; w < AD_WARPS; ++w)
            num += sm_s[w] > 0.0f ? sm_acc[w * ATT_MAX_DIM + d] * expf(sm_m[w] - mx) : 0.0f;
        o[d] = num / den;
    }
}
