// The routing and the weighted sum of the mixture-of-experts op; the experts' products are the
// moe_glu_<type> and moe_down_<type> kernels of matvec.cu.

// Each row's `used` experts: the largest router logits, ties to the lower index, exactly as
// the CPU's route (expert e replaces the best so far unless that one's logit is >= e's), and
// their weights, the softmax of the chosen logits in rank order. One thread per row (the
// experts are few: 32 for gpt-oss); ids and weights are [rows][used].
extern "C" __global__ void moe_route(u32* ids, float* weights, const float* logits, int rows,
                                     int experts, int used) {
    pdl_start();
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const float* l = logits + (size_t)r * experts;
    u32* id = ids + (size_t)r * used;
    float* w = weights + (size_t)r * used;
    for (int rank = 0; rank < used; ++rank) {
        int best = -1;
        for (int e = 0; e < experts; ++e) {
            bool taken = false;
            for (int i = 0; i < rank; ++i) taken = taken || id[i] == (u32)e;
            if (taken) continue;
            if (best < 0 || !(l[best] >= l[e])) best = e;
        }
        id[rank] = (u32)best;
        w[rank] = l[best];
    }
    float mx = __int_as_float(0xff800000);
    for (int rank = 0; rank < used; ++rank) mx = fmaxf(mx, w[rank]);
    float sum = 0.0f;
    for (int rank = 0; rank < used; ++rank) {
        w[rank] = expf(w[rank] - mx);
        sum += w[rank];
    }
    for (int rank = 0; rank < used; ++rank) w[rank] /= sum;
}

// out[r] = sum over rank of weights[r][rank] ranked[r used + rank], in rank order, each
// product rounded before its add as the CPU does (no fused multiply-add). Grid (rows).
extern "C" __global__ void moe_combine(float* out, const float* ranked, const float* weights,
                                       int used, int cols) {
    pdl_start();
    int r = blockIdx.x;
    const float* w = weights + (size_t)r * used;
    const float* y = ranked + (size_t)r * used * cols;
    float* o = out + (size_t)r * cols;
    for (int d = threadIdx.x; d < cols; d += blockDim.x) {
        float acc = __fmul_rn(y[d], w[0]);
        for (int rank = 1; rank < used; ++rank)
            acc = __fadd_rn(acc, __fmul_rn(y[(size_t)rank * cols + d], w[rank]));
        o[d] = acc;
    }
}
