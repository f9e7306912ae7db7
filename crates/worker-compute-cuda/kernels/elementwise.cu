// Element-wise and row-wise ops on f32 activation matrices (row-major [rows, cols]).

extern "C" __global__ void add_f32(float* dst, const float* src, long long n) {
    pdl_start();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] += src[i];
}

extern "C" __global__ void mul_f32(float* dst, const float* src, long long n) {
    pdl_start();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] *= src[i];
}

extern "C" __global__ void scale_f32(float* x, float s, long long n) {
    pdl_start();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}

extern "C" __global__ void add_bias_f32(float* dst, const float* bias, long long n, int cols) {
    pdl_start();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] += bias[i % cols];
}

// out = silu(g) * u
extern "C" __global__ void swiglu_f32(float* out, const float* g, const float* u, long long n) {
    pdl_start();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float a = g[i];
        out[i] = a / (1.0f + expf(-a)) * u[i];
    }
}

// GELU, tanh approximation (ggml gelu, GPT-2 gelu_new).
extern "C" __global__ void gelu_f32(float* x, long long n) {
    pdl_start();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float c = 0.7978845608f;
        float a = x[i];
        x[i] = 0.5f * a * (1.0f + tanhf(c * (a + 0.044715f * a * a * a)));
    }
}

// out[r] = src[index[r]]; one block per output row.
extern "C" __global__ void gather_rows_f32(float* out, const float* src, const u32* index, int cols) {
    pdl_start();
    int r = blockIdx.x;
    const float* s = src + (size_t)index[r] * cols;
    float* o = out + (size_t)r * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = s[i];
}

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w; one block per row.
extern "C" __global__ void rms_norm_f32(float* out, const float* x, const float* w, float eps, int cols) {
    pdl_start();
    const float* xr = x + (size_t)blockIdx.x * cols;
    float* o = out + (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss);
    float r = 1.0f / sqrtf(ss / cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = xr[i] * r * w[i];
}

// out[r] = (x[r] - mean) / sqrt(var + eps) * w + b; one block per row.
extern "C" __global__ void layer_norm_f32(float* out, const float* x, const float* w, const float* b,
                                          float eps, int cols) {
    pdl_start();
    const float* xr = x + (size_t)blockIdx.x * cols;
    float* o = out + (size_t)blockIdx.x * cols;
    float s = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) s += xr[i];
    float mean = block_sum(s) / cols;
    float v = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float d = xr[i] - mean;
        v += d * d;
    }
    float r = 1.0f / sqrtf(block_sum(v) / cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = (xr[i] - mean) * r * w[i] + b[i];
}

// Rotary embedding in place, of one or two tensors at the same positions (q and k in one
// launch). Grid (rows, heads + heads2): block (r, h) rotates head h of x when h < heads, else
// head h - heads of x2 (cols2 columns); thread i of a block rotates pair i.
// theta_i = pos * freq_scale * base^(-2i/n_rot), in double like the CPU reference.
//
// With YaRN (`yarn`, ggml's rope_yarn, the CPU's rope_angles): with ext_factor 0 the cosines
// and sines are scaled by mscale (attn_factor) in f32; otherwise pair i rotates by
// interp (1 - ramp) + extrap ramp, extrap = pos base^(-2i/n_rot), interp = freq_scale extrap,
// ramp = (1 - clamp((i - low) / max(high - low, 0.001), 0, 1)) ext_factor between the
// correction dims low and high (from the host, as the CPU computes them), and its cosine and
// sine are scaled by mscale in double.
__device__ __forceinline__ void rope_heads(float* x, const u32* pos, int cols, int head_dim,
                                           int n_rot, float base, float freq_scale, int neox,
                                           int heads, float* x2, int cols2, bool yarn,
                                           float ext_factor, float low, float high,
                                           float mscale) {
    int r = blockIdx.x, h = blockIdx.y;
    int half = n_rot / 2;
    float* head = h < heads ? x + (size_t)r * cols + (size_t)h * head_dim
                            : x2 + (size_t)r * cols2 + (size_t)(h - heads) * head_dim;
    double t = (double)pos[r] * (double)freq_scale;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double f = pow((double)base, -2.0 * (double)i / (double)n_rot);
        double theta = t * f;
        float s, c;
        if (yarn && ext_factor != 0.0f) {
            double extrap = (double)pos[r] * f;
            double interp = (double)freq_scale * extrap;
            float y = ((float)i - low) / fmaxf(high - low, 0.001f);
            double ramp = (double)((1.0f - fminf(fmaxf(y, 0.0f), 1.0f)) * ext_factor);
            double sd, cd;
            sincos(__dadd_rn(__dmul_rn(interp, 1.0 - ramp), __dmul_rn(extrap, ramp)), &sd, &cd);
            c = (float)(cd * (double)mscale);
            s = (float)(sd * (double)mscale);
        } else {
            double sd, cd;
            sincos(theta, &sd, &cd);
            s = (float)sd;
            c = (float)cd;
            if (yarn) {
                c *= mscale;
                s *= mscale;
            }
        }
        int a = neox ? i : 2 * i;
        int b = neox ? i + half : 2 * i + 1;
        float x0 = head[a], x1 = head[b];
        head[a] = x0 * c - x1 * s;
        head[b] = x0 * s + x1 * c;
    }
}

extern "C" __global__ void rope_f32(float* x, const u32* pos, int cols, int head_dim, int n_rot,
                                    float base, float freq_scale, int neox, int heads, float* x2,
                                    int cols2) {
    pdl_start();
    rope_heads(x, pos, cols, head_dim, n_rot, base, freq_scale, neox, heads, x2, cols2, false,
               0.0f, 0.0f, 0.0f, 1.0f);
}

// rope_f32 with YaRN scaling (see rope_heads).
extern "C" __global__ void rope_yarn_f32(float* x, const u32* pos, int cols, int head_dim,
                                         int n_rot, float base, float freq_scale, int neox,
                                         int heads, float* x2, int cols2, float ext_factor,
                                         float low, float high, float mscale) {
    pdl_start();
    rope_heads(x, pos, cols, head_dim, n_rot, base, freq_scale, neox, heads, x2, cols2, true,
               ext_factor, low, high, mscale);
}

// The residual add fused with the next RMS norm: x[r] += y[r]; out[r] = x[r] / rms(x[r]) * w.
// One block per row; each thread reads back only the elements it wrote.
extern "C" __global__ void add_rms_norm_f32(float* out, float* x, const float* y, const float* w,
                                            float eps, int cols) {
    pdl_start();
    float* xr = x + (size_t)blockIdx.x * cols;
    const float* yr = y + (size_t)blockIdx.x * cols;
    float* o = out + (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = xr[i] + yr[i];
        xr[i] = v;
        ss += v * v;
    }
    ss = block_sum(ss);
    float r = 1.0f / sqrtf(ss / cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = xr[i] * r * w[i];
}

// Index of the largest value of each row (the first on ties); one block per row.
extern "C" __global__ void argmax_f32(u32* out, const float* x, int cols) {
    pdl_start();
    __shared__ float bv[1024];
    __shared__ int bi[1024];
    const float* xr = x + (size_t)blockIdx.x * cols;
    float best = __int_as_float(0xff800000);
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = xr[i];
        if (v > best) { best = v; idx = i; }
    }
    bv[threadIdx.x] = best;
    bi[threadIdx.x] = idx;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = bv[threadIdx.x + s];
            int oi = bi[threadIdx.x + s];
            if (ov > bv[threadIdx.x] || (ov == bv[threadIdx.x] && oi < bi[threadIdx.x])) {
                bv[threadIdx.x] = ov;
                bi[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = bi[0] == 0x7fffffff ? 0u : (u32)bi[0];
}
