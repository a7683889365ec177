// The vision tower's row ops. layer_norm: nn.LayerNorm per row (one block per row), two passes in f32 (the
// mean, then the mean square deviation from it): y = (x − mean) · rsqrt(var + eps) · w + b, in place
// allowed (each thread re-reads only what it reads before the last barrier). w and b share one format.
// bias_act: in place, x[r, c] += b[c] when a bias is given, then the activation (0 none, 1 exact GELU).

template <int DT>
__device__ void layer_norm_impl(const float* x, const void* w, const void* b, float* out, u32 dim, float eps) {
    __shared__ float sh[33];
    const float* xr = x + (u64)blockIdx.x * dim;
    float* yr = out + (u64)blockIdx.x * dim;
    float s = 0.0f;
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i];
    const float mean = block_sum(s, sh) / (float)dim;
    float ss = 0.0f;
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) {
        float d = xr[i] - mean;
        ss += d * d;
    }
    const float r = 1.0f / sqrtf(block_sum(ss, sh) / (float)dim + eps);
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = (xr[i] - mean) * r * ldw<DT>(w, i) + ldw<DT>(b, i);
}
struct LayerNormParams {
    const float* x;
    const void* w;
    const void* b;
    float* out;
    u32 dim;
    float eps;
};

extern "C" __global__ void layer_norm_f32(const LayerNormParams prm) { layer_norm_impl<0>(prm.x, prm.w, prm.b, prm.out, prm.dim, prm.eps); }
extern "C" __global__ void layer_norm_bf16(const LayerNormParams prm) { layer_norm_impl<1>(prm.x, prm.w, prm.b, prm.out, prm.dim, prm.eps); }
extern "C" __global__ void layer_norm_f16(const LayerNormParams prm) { layer_norm_impl<2>(prm.x, prm.w, prm.b, prm.out, prm.dim, prm.eps); }

__device__ __forceinline__ float gelu_erf(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }

template <int DT> __device__ void bias_act_impl(float* x, const void* b, u32 n, u32 dim, u32 has_bias, u32 act) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    if (has_bias) v += ldw<DT>(b, i % dim);
    if (act == 1) v = gelu_erf(v);
    x[i] = v;
}
struct BiasActParams {
    float* x;
    const void* b;
    u32 n;
    u32 dim;
    u32 has_bias;
    u32 act;
};

extern "C" __global__ void bias_act_f32(const BiasActParams prm) { bias_act_impl<0>(prm.x, prm.b, prm.n, prm.dim, prm.has_bias, prm.act); }
extern "C" __global__ void bias_act_bf16(const BiasActParams prm) { bias_act_impl<1>(prm.x, prm.b, prm.n, prm.dim, prm.has_bias, prm.act); }
extern "C" __global__ void bias_act_f16(const BiasActParams prm) { bias_act_impl<2>(prm.x, prm.b, prm.n, prm.dim, prm.has_bias, prm.act); }
