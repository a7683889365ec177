// RMS norm per row (one block per row): y = x · 1/sqrt(mean(x²) + eps) (· w), f32, in place allowed;
// and the residual add fused with it: acc += x, then out = norm(acc) · w.

template <int DT, bool W>
__device__ void rms_norm_impl(const float* x, const void* w, float* out, u32 dim, float eps) {
    __shared__ float sh[33];
    const float* xr = x + (u64)blockIdx.x * dim;
    float* yr = out + (u64)blockIdx.x * dim;
    float s = 0.0f;
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i] * xr[i];
    s = block_sum(s, sh);
    float r = 1.0f / sqrtf(s / (float)dim + eps);
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = W ? xr[i] * r * ldw<DT>(w, i) : xr[i] * r;
}
struct RmsNormParams {
    const float* x;
    const void* w;
    float* out;
    u32 dim;
    float eps;
};

extern "C" __global__ void rms_norm_none(const RmsNormParams prm) { rms_norm_impl<0, false>(prm.x, prm.w, prm.out, prm.dim, prm.eps); }
extern "C" __global__ void rms_norm_f32(const RmsNormParams prm) { rms_norm_impl<0, true>(prm.x, prm.w, prm.out, prm.dim, prm.eps); }
extern "C" __global__ void rms_norm_bf16(const RmsNormParams prm) { rms_norm_impl<1, true>(prm.x, prm.w, prm.out, prm.dim, prm.eps); }
extern "C" __global__ void rms_norm_f16(const RmsNormParams prm) { rms_norm_impl<2, true>(prm.x, prm.w, prm.out, prm.dim, prm.eps); }

template <int DT>
__device__ void add_rms_norm_impl(float* acc, const float* x, const void* w, float* out, u32 dim, float eps) {
    __shared__ float sh[33];
    float* ar = acc + (u64)blockIdx.x * dim;
    const float* xr = x + (u64)blockIdx.x * dim;
    float* yr = out + (u64)blockIdx.x * dim;
    float s = 0.0f;
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = ar[i] + xr[i];
        ar[i] = v;
        s += v * v;
    }
    s = block_sum(s, sh);
    float r = 1.0f / sqrtf(s / (float)dim + eps);
    // Each thread reads back only what it wrote.
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = ar[i] * r * ldw<DT>(w, i);
}
struct AddRmsNormParams {
    float* acc;
    const float* x;
    const void* w;
    float* out;
    u32 dim;
    float eps;
};

extern "C" __global__ void add_rms_norm_f32(const AddRmsNormParams prm) { add_rms_norm_impl<0>(prm.acc, prm.x, prm.w, prm.out, prm.dim, prm.eps); }
extern "C" __global__ void add_rms_norm_bf16(const AddRmsNormParams prm) { add_rms_norm_impl<1>(prm.acc, prm.x, prm.w, prm.out, prm.dim, prm.eps); }
extern "C" __global__ void add_rms_norm_f16(const AddRmsNormParams prm) { add_rms_norm_impl<2>(prm.acc, prm.x, prm.w, prm.out, prm.dim, prm.eps); }
