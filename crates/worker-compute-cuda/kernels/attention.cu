// Causal attention over an f16 KV cache with GQA.
// Cache layout (keys; values alike with value_head_dim): [layer][slot][kv_head][pos][head_dim].

// Stores row r's keys and values at (slot[r], pos[r]) of `layer`, as f16. Grid (rows, kv_heads).
extern "C" __global__ void kv_store(u16* kc, u16* vc, const float* k, const float* v,
                                    const u32* pos, const u32* slot, int layer, int slots,
                                    int max_pos, int kv_heads, int hd, int vhd) {
    pdl_start();
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

// The first position a row at `last` attends to: last + 1 - window with a sliding window
// (window > 0), else 0.
__device__ __forceinline__ int window_start(int last, int window) {
    return window > 0 ? max(0, last + 1 - window) : 0;
}

// Grid (rows, heads), ATT_WARPS warps per block. Row r, query head h attends to positions
// window_start(pos[r], window)..=pos[r] of its slot, reading kv head h / (heads / kv_heads).
// Each warp keeps an online softmax over positions t = first + warp, first + warp +
// ATT_WARPS, ...; the warps are merged at the end, with head h's sink logit sinks[h] (when
// sinks is not null) joining the maximum and the denominator (a sink has no value).
__device__ __forceinline__ void attention_rows(float* out, const float* q, const u16* kc,
                                               const u16* vc, const u32* pos, const u32* slot,
                                               int heads, int kv_heads, int hd, int vhd,
                                               float scale, int layer, int slots, int max_pos,
                                               int window, const float* sinks) {
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
    for (int t = window_start(last, window) + warp; t <= last; t += ATT_WARPS) {
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
    if (sinks) mx = fmaxf(mx, sinks[h]);
    float den = sinks ? expf(sinks[h] - mx) : 0.0f, f[ATT_WARPS];
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

// Every position up to the row's own, no sinks.
extern "C" __global__ void attention_f16(float* out, const float* q, const u16* kc, const u16* vc,
                                         const u32* pos, const u32* slot, int heads, int kv_heads,
                                         int hd, int vhd, float scale, int layer, int slots,
                                         int max_pos) {
    pdl_start();
    attention_rows(out, q, kc, vc, pos, slot, heads, kv_heads, hd, vhd, scale, layer, slots,
                   max_pos, 0, nullptr);
}

// With a sliding window of `window` positions (0: none) and per-head sink logits (null: none).
extern "C" __global__ void attention_window_f16(float* out, const float* q, const u16* kc,
                                                const u16* vc, const u32* pos, const u32* slot,
                                                int heads, int kv_heads, int hd, int vhd,
                                                float scale, int layer, int slots, int max_pos,
                                                int window, const float* sinks) {
    pdl_start();
    attention_rows(out, q, kc, vc, pos, slot, heads, kv_heads, hd, vhd, scale, layer, slots,
                   max_pos, window, sinks);
}

#define AD_WARPS 4
// Positions one decode attention block covers (one tile of 32 per warp).
#define AD_SPAN (32 * AD_WARPS)

// acc += sum over the 32 positions t0 + l of the tile of p_l * V[t0 + l], lane l holding p_l
// (0 for positions not to be read from the cache) and the dimension pairs 2 (lane + 32 i),
// i < VP. Rows are clamped to `lastc` (a written row) so every load is valid; the 32 rows'
// loads are independent of each other and of acc, so the unrolled loop keeps them in flight.
template <int VP>
__device__ __forceinline__ void acc_values(float* acc, const u16* vc, size_t base, int t0,
                                           int lastc, float p, int lane, int vhd) {
#pragma unroll
    for (int l = 0; l < 32; ++l) {
        float pl = __shfl_sync(0xffffffffu, p, l);
        const u32* vrow = (const u32*)(vc + (base + min(t0 + l, lastc)) * vhd);
#pragma unroll
        for (int i = 0; i < VP; ++i) {
            int d = 2 * (lane + 32 * i);
            if (d < vhd) {
                u32 w = vrow[d >> 1];
                acc[2 * i] += pl * h2f((u16)(w & 0xffffu));
                acc[2 * i + 1] += pl * h2f((u16)(w >> 16));
            }
        }
    }
}

// Decode attention for one row (rows == 1), with the KV store fused in, split over positions
// (flash-decoding): grid (heads, nsplit), AD_WARPS warps per block; block (h, s) covers
// positions [s AD_SPAN, (s + 1) AD_SPAN) up to last = pos[0] (slot slot[0]) and writes a
// partial result (max, sum, unnormalized values) that attention_combine merges. Blocks
// wholly past `last` exit at once; nsplit is fixed by the cache size, so the launch does
// not change from step to step (graph replay).
//
// The block of the first query head of each kv head group stores the row's key and value
// (f16) at `last`; no block reads that cache cell: every block takes position `last` from the
// row's own k/v, rounded through f16 exactly as the store does, so the result equals the
// unfused kv_store + attention_f16.
//
// Warp w takes the tile of 32 positions t0 = s AD_SPAN + 32 w: lane l scores
// position t0 + l against q (in shared memory) with 16-byte loads of its key row, the warp
// updates its online softmax (max, sum) once per tile, and then accumulates the 32 value rows
// with lanes over pairs of dimensions. The block's warps are merged into the partial.
// Needs hd % 8 == 0 (16-byte key loads), vhd even (u32 value loads) and hd, vhd <=
// ATT_MAX_DIM (checked by the host).
//
// With a sliding window (window > 0) positions before wstart = window_start(last, window) are
// masked: blocks wholly before wstart exit at once (attention_combine_window skips them),
// tiles wholly before it are skipped, and the block that holds `last` stores the row.
__device__ __forceinline__ void attention_decode_split(const float* q, const float* k,
                                                       const float* v, u16* kc, u16* vc,
                                                       const u32* pos, const u32* slot, int heads,
                                                       int kv_heads, int hd, int vhd, float scale,
                                                       int layer, int slots, int max_pos,
                                                       float* part, int nsplit, int window) {
    __shared__ float sq[ATT_MAX_DIM], sk[ATT_MAX_DIM], sv[ATT_MAX_DIM];
    __shared__ float sm_m[AD_WARPS], sm_s[AD_WARPS];
    __shared__ float sm_acc[AD_WARPS * ATT_MAX_DIM];
    int h = blockIdx.x;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int group = heads / kv_heads, kh = h / group;
    int last = (int)pos[0];
    int first = (int)blockIdx.y * AD_SPAN;
    int wstart = window_start(last, window);
    if (first > last || first + AD_SPAN <= wstart) return;
    size_t base = (((size_t)layer * slots + slot[0]) * kv_heads + kh) * max_pos;
    const float* qr = q + (size_t)h * hd;
    const float* kr = k + (size_t)kh * hd;
    const float* vr = v + (size_t)kh * vhd;
    int store_split = window > 0 ? last / AD_SPAN : 0;
    bool store = (h % group) == 0 && (int)blockIdx.y == store_split;
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
    // q . k at `last` (the row's own key, in shared memory), the same for every warp.
    float dot_last = 0.0f;
    for (int d = 0; d < hd; ++d) dot_last += sq[d] * sk[d];
    int lastc = last > 0 ? last - 1 : 0;
    for (int t0 = first + 32 * warp; t0 <= last && t0 < first + AD_SPAN; t0 += 32 * AD_WARPS) {
        if (t0 + 32 <= wstart) continue;  // the whole tile is before the window
        int t = t0 + lane;
        // Keys: lane l scores position t0 + l from its cached row (clamped to a written
        // row past the end; the select below drops it). The loads of a group of 64
        // dimensions are issued together, before any of them is used.
        const uint4* kp = (const uint4*)(kc + (base + min(t, lastc)) * hd);
        float dot = 0.0f;
        for (int g = 0; g < (hd >> 3); g += 8) {
            uint4 u[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                if (g + e < (hd >> 3)) u[e] = kp[g + e];
            }
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                if (g + e < (hd >> 3)) {
                    u32 w[4] = {u[e].x, u[e].y, u[e].z, u[e].w};
                    const float* qd = sq + 8 * (g + e);
#pragma unroll
                    for (int h2 = 0; h2 < 4; ++h2) {
                        dot += qd[2 * h2] * h2f((u16)(w[h2] & 0xffffu));
                        dot += qd[2 * h2 + 1] * h2f((u16)(w[h2] >> 16));
                    }
                }
            }
        }
        bool live = t <= last && t >= wstart;
        float sc = !live ? __int_as_float(0xff800000) : (t < last ? dot * scale : dot_last * scale);
        // The tile holds a live position (t0 <= last, t0 + 31 >= wstart), so its max is finite.
        float mn = fmaxf(m, warp_max(sc));
        float c = expf(m - mn);
        float p = live ? expf(sc - mn) : 0.0f;
        s = s * c + warp_sum(p);
#pragma unroll
        for (int i = 0; i < ATT_PER_LANE; ++i) acc[i] *= c;
        // Values of the positions before `last` from the cache, then `last` itself from
        // shared memory (the tile that holds it).
        // (Only tiles with a cached position: then every clamped row is one this sequence
        // wrote, so p = 0 never meets a stale non-finite value.)
        float pv = t < last ? p : 0.0f;
        int vp = (vhd + 63) >> 6;
        if (t0 < last) {
            if (vp == 1) acc_values<1>(acc, vc, base, t0, lastc, pv, lane, vhd);
            else if (vp == 2) acc_values<2>(acc, vc, base, t0, lastc, pv, lane, vhd);
            else acc_values<4>(acc, vc, base, t0, lastc, pv, lane, vhd);
        }
        if (last < t0 + 32) {
            float pl = __shfl_sync(0xffffffffu, p, last - t0);
#pragma unroll
            for (int i = 0; i < ATT_PER_LANE / 2; ++i) {
                int d = 2 * (lane + 32 * i);
                if (d < vhd) {
                    acc[2 * i] += pl * sv[d];
                    acc[2 * i + 1] += pl * sv[d + 1];
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
    float* pr = part + ((size_t)h * nsplit + blockIdx.y) * (vhd + 2);
    if (threadIdx.x == 0) {
        pr[0] = mx;
        pr[1] = den;
    }
    for (int d = threadIdx.x; d < vhd; d += blockDim.x) {
        float num = 0.0f;
        for (int w = 0; w < AD_WARPS; ++w)
            num += sm_s[w] > 0.0f ? sm_acc[w * ATT_MAX_DIM + d] * expf(sm_m[w] - mx) : 0.0f;
        pr[2 + d] = num;
    }
}

extern "C" __global__ void __launch_bounds__(AD_WARPS * 32)
attention_decode_f16(const float* q, const float* k, const float* v, u16* kc,
                     u16* vc, const u32* pos, const u32* slot, int heads, int kv_heads, int hd,
                     int vhd, float scale, int layer, int slots, int max_pos, float* part,
                     int nsplit) {
    pdl_start();
    attention_decode_split(q, k, v, kc, vc, pos, slot, heads, kv_heads, hd, vhd, scale, layer,
                           slots, max_pos, part, nsplit, 0);
}

// The decode attention with a sliding window of `window` positions; merged by
// attention_combine_window.
extern "C" __global__ void __launch_bounds__(AD_WARPS * 32)
attention_decode_window_f16(const float* q, const float* k, const float* v, u16* kc, u16* vc,
                            const u32* pos, const u32* slot, int heads, int kv_heads, int hd,
                            int vhd, float scale, int layer, int slots, int max_pos, float* part,
                            int nsplit, int window) {
    pdl_start();
    attention_decode_split(q, k, v, kc, vc, pos, slot, heads, kv_heads, hd, vhd, scale, layer,
                           slots, max_pos, part, nsplit, window);
}

// Merges the partials of attention_decode_f16: grid (heads); out[h] = sum_i num_i e^(m_i - M)
// / sum_i den_i e^(m_i - M) over the splits i <= last / AD_SPAN, M the largest m_i.
// With a window (window > 0) the splits from window_start(last, window) / AD_SPAN on; with
// sinks (not null) head h's sink logit joins M and the denominator.
__device__ __forceinline__ void combine_splits(float* out, const float* part, const u32* pos,
                                               int nsplit, int vhd, int window,
                                               const float* sinks) {
    int h = blockIdx.x;
    int last = (int)pos[0];
    int from = window_start(last, window) / AD_SPAN;
    int used = min(last / AD_SPAN + 1, nsplit);
    const float* p = part + (size_t)h * nsplit * (vhd + 2);
    float mx = sinks ? sinks[h] : __int_as_float(0xff800000);
    for (int i = from; i < used; ++i) mx = fmaxf(mx, p[(size_t)i * (vhd + 2)]);
    float den = sinks ? expf(sinks[h] - mx) : 0.0f;
    for (int i = from; i < used; ++i) {
        const float* q = p + (size_t)i * (vhd + 2);
        den += q[1] * expf(q[0] - mx);
    }
    for (int d = threadIdx.x; d < vhd; d += blockDim.x) {
        float num = 0.0f;
        for (int i = from; i < used; ++i) {
            const float* q = p + (size_t)i * (vhd + 2);
            num += q[2 + d] * expf(q[0] - mx);
        }
        out[(size_t)h * vhd + d] = num / den;
    }
}

extern "C" __global__ void attention_combine(float* out, const float* part, const u32* pos,
                                             int nsplit, int vhd) {
    pdl_start();
    combine_splits(out, part, pos, nsplit, vhd, 0, nullptr);
}

// Merges the partials of attention_decode_window_f16 (the same `window`), with sinks.
extern "C" __global__ void attention_combine_window(float* out, const float* part,
                                                    const u32* pos, int nsplit, int vhd,
                                                    int window, const float* sinks) {
    pdl_start();
    combine_splits(out, part, pos, nsplit, vhd, window, sinks);
}

#define AP_WARPS 4
// Query rows per warp, and per block.
#define AP_ROWS 4
#define AP_BLOCK_ROWS (AP_ROWS * AP_WARPS)
// Key positions staged in shared memory at once.
#define AP_TILE 32
// Largest head width (keys and values) of the tiled prefill kernel.
#define AP_MAX_DIM 128

// Prefill attention (rows > 1, every row in one slot, set by the host), tiled: grid
// (ceil(rows / AP_BLOCK_ROWS), heads), AP_WARPS warps per block. Block (b, h) takes query
// rows r0 = b AP_BLOCK_ROWS ... r0 + AP_BLOCK_ROWS - 1 of head h, warp w the AP_ROWS of them
// from r0 + w AP_ROWS. The block walks the cache in tiles of AP_TILE positions up to the
// furthest position of its rows, converting each tile's keys and values to f32 in shared
// memory once for all its rows (attention_f16 reads them once per row). Lane l scores
// position t0 + l against each of the warp's rows (key rows padded to AP_MAX_DIM + 1 floats,
// so the lanes' reads fall in different banks); positions past a row's own are masked; each
// row keeps an online softmax (max, sum) and its value sums with lanes over dimensions.
// The first tile always holds position 0, so every row's max is finite after it. Keys and
// values this batch stores are written by kv_store before (the host launches it first).
// Needs hd, vhd <= AP_MAX_DIM (checked by the host).
extern "C" __global__ void __launch_bounds__(AP_WARPS * 32)
attention_prefill_f16(float* out, const float* q, const u16* kc, const u16* vc, const u32* pos,
                      const u32* slot, int rows, int heads, int kv_heads, int hd, int vhd,
                      float scale, int layer, int slots, int max_pos) {
    pdl_start();
    __shared__ float sq[AP_BLOCK_ROWS][AP_MAX_DIM];
    __shared__ float sk[AP_TILE][AP_MAX_DIM + 1];
    __shared__ float sv[AP_TILE][AP_MAX_DIM];
    __shared__ int s_last;
    const float NEG_INF = __int_as_float(0xff800000);
    int h = blockIdx.y, r0 = blockIdx.x * AP_BLOCK_ROWS;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int kh = h / (heads / kv_heads);
    if (threadIdx.x == 0) s_last = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < AP_BLOCK_ROWS * hd; i += blockDim.x) {
        int rr = i / hd, d = i - rr * hd, r = r0 + rr;
        sq[rr][d] = r < rows ? q[(size_t)r * heads * hd + (size_t)h * hd + d] : 0.0f;
    }
    if (threadIdx.x < AP_BLOCK_ROWS && r0 + (int)threadIdx.x < rows)
        atomicMax(&s_last, (int)pos[r0 + threadIdx.x]);
    __syncthreads();
    int last = s_last;
    size_t base = (((size_t)layer * slots + slot[r0]) * kv_heads + kh) * max_pos;
    int my_pos[AP_ROWS];
    float m[AP_ROWS], s[AP_ROWS], acc[AP_ROWS][AP_MAX_DIM / 32];
#pragma unroll
    for (int j = 0; j < AP_ROWS; ++j) {
        int r = r0 + warp * AP_ROWS + j;
        my_pos[j] = r < rows ? (int)pos[r] : -1;
        m[j] = NEG_INF;
        s[j] = 0.0f;
#pragma unroll
        for (int i = 0; i < AP_MAX_DIM / 32; ++i) acc[j][i] = 0.0f;
    }
    for (int t0 = 0; t0 <= last; t0 += AP_TILE) {
        __syncthreads();  // the previous tile is no longer read
        for (int i = threadIdx.x; i < AP_TILE * hd; i += blockDim.x) {
            int tt = i / hd, d = i - tt * hd;
            sk[tt][d] = t0 + tt <= last ? h2f(kc[(base + t0 + tt) * hd + d]) : 0.0f;
        }
        for (int i = threadIdx.x; i < AP_TILE * vhd; i += blockDim.x) {
            int tt = i / vhd, d = i - tt * vhd;
            sv[tt][d] = t0 + tt <= last ? h2f(vc[(base + t0 + tt) * vhd + d]) : 0.0f;
        }
        __syncthreads();
        int t = t0 + lane;
#pragma unroll
        for (int j = 0; j < AP_ROWS; ++j) {
            if (my_pos[j] < 0) continue;  // past the batch: the same for the whole warp
            const float* qr = sq[warp * AP_ROWS + j];
            float dot = 0.0f;
            for (int d = 0; d < hd; ++d) dot += qr[d] * sk[lane][d];
            float sc = t <= my_pos[j] ? dot * scale : NEG_INF;
            float mn = fmaxf(m[j], warp_max(sc));
            float c = expf(m[j] - mn), p = expf(sc - mn);
            s[j] = s[j] * c + warp_sum(p);
#pragma unroll
            for (int i = 0; i < AP_MAX_DIM / 32; ++i) acc[j][i] *= c;
#pragma unroll 8
            for (int l = 0; l < AP_TILE; ++l) {
                float pl = __shfl_sync(0xffffffffu, p, l);
#pragma unroll
                for (int i = 0; i < AP_MAX_DIM / 32; ++i) {
                    int d = lane + 32 * i;
                    if (d < vhd) acc[j][i] += pl * sv[l][d];
                }
            }
            m[j] = mn;
        }
    }
#pragma unroll
    for (int j = 0; j < AP_ROWS; ++j) {
        if (my_pos[j] < 0) continue;
        float* o = out + (size_t)(r0 + warp * AP_ROWS + j) * heads * vhd + (size_t)h * vhd;
#pragma unroll
        for (int i = 0; i < AP_MAX_DIM / 32; ++i) {
            int d = lane + 32 * i;
            if (d < vhd) o[d] = acc[j][i] / s[j];
        }
    }
}
