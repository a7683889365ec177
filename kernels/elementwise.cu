// Element-wise and row ops: embedding lookup, residual add, SwiGLU's silu·up, row gather, and the
// synthetic weights of herd_core::synthetic made in place (the same values as the host generator).

template <int DT> __device__ void embed_impl(const void* table, const u32* ids, float* out, u32 n, u32 dim) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)n * dim) return;
    u32 r = (u32)(i / dim), c = (u32)(i % dim);
    out[i] = ldw<DT>(table, (u64)ids[r] * dim + c);
}
extern "C" __global__ void embed_f32(const void* t, const u32* ids, float* out, u32 n, u32 dim) { embed_impl<0>(t, ids, out, n, dim); }
extern "C" __global__ void embed_bf16(const void* t, const u32* ids, float* out, u32 n, u32 dim) { embed_impl<1>(t, ids, out, n, dim); }
extern "C" __global__ void embed_f16(const void* t, const u32* ids, float* out, u32 n, u32 dim) { embed_impl<2>(t, ids, out, n, dim); }

extern "C" __global__ void add(float* acc, const float* x, u32 n) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) acc[i] += x[i];
}

extern "C" __global__ void silu_mul(float* gate, const float* up, u32 n) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

extern "C" __global__ void gather_rows(const float* x, const u32* rows, float* out, u32 n, u32 dim) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n * dim) out[i] = x[(u64)rows[i / dim] * dim + i % dim];
}

// herd_core::synthetic::splitmix64 and uniform_at.
__device__ __forceinline__ u64 splitmix64(u64 seed, u64 i) {
    u64 z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
__device__ __forceinline__ float synth_value(u64 seed, float scale, u32 ones, u64 i) {
    if (ones) return 1.0f;
    u32 r = (u32)((splitmix64(seed, i / 4) >> (16 * (i % 4))) & 0xffffu);
    return (__fmul_rn((float)r, 1.0f / 32768.0f) - 1.0f) * scale;
}
extern "C" __global__ void synth_f32(float* out, u64 n, u64 seed, float scale, u32 ones) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = synth_value(seed, scale, ones, i);
}
extern "C" __global__ void synth_bf16(u16* out, u64 n, u64 seed, float scale, u32 ones) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = f2bf(synth_value(seed, scale, ones, i));
}
extern "C" __global__ void synth_f16(u16* out, u64 n, u64 seed, float scale, u32 ones) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = f2h(synth_value(seed, scale, ones, i));
}
