// out[m, n] = Σ_k x[m, k] · w[n, k] (nn.Linear weights) for decode-sized m: one warp per output column,
// M rows at a time, the weight row streamed once with 16-byte loads, four in flight per lane; and the SwiGLU
// pair (gate and up) fused the same way. Prefill GEMMs
// go to cuBLAS (lib.rs); `split_bf16` prepares its input there (x = hi + lo, both bf16, so the tensor-core
// product of two bf16 GEMMs matches an f32 one to ~2^-17 relative).

template <int DT, int M, bool VEC>
__device__ void gemv(const float* __restrict__ x, const void* __restrict__ w, float* __restrict__ out, u32 m, u32 n,
                     u32 k) {
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32 col = blockIdx.x * (blockDim.x >> 5) + warp;
    const u32 r0 = blockIdx.y * M;
    if (col >= n) return;
    float acc[M];
#pragma unroll
    for (int r = 0; r < M; r++) acc[r] = 0.0f;
    const u64 wrow = (u64)col * k;
    if (VEC) {
        u32 kk = lane * 8;
        for (; kk + 3 * 256 < k; kk += 4 * 256) {
            float wv[4][8];
#pragma unroll
            for (int u = 0; u < 4; u++) ld8<DT>(w, wrow + kk + u * 256, wv[u]);
#pragma unroll
            for (int r = 0; r < M; r++) {
                if (r0 + r < m) {
                    const float* xr = x + (u64)(r0 + r) * k + kk;
#pragma unroll
                    for (int u = 0; u < 4; u++) {
                        float4 a = *(const float4*)(xr + u * 256), b = *(const float4*)(xr + u * 256 + 4);
                        acc[r] += a.x * wv[u][0] + a.y * wv[u][1] + a.z * wv[u][2] + a.w * wv[u][3] + b.x * wv[u][4] +
                                  b.y * wv[u][5] + b.z * wv[u][6] + b.w * wv[u][7];
                    }
                }
            }
        }
        for (; kk < k; kk += 256) {
            float wv[8];
            ld8<DT>(w, wrow + kk, wv);
#pragma unroll
            for (int r = 0; r < M; r++) {
                if (r0 + r < m) {
                    const float* xr = x + (u64)(r0 + r) * k + kk;
                    float4 a = *(const float4*)xr, b = *(const float4*)(xr + 4);
                    acc[r] += a.x * wv[0] + a.y * wv[1] + a.z * wv[2] + a.w * wv[3] + b.x * wv[4] + b.y * wv[5] +
                              b.z * wv[6] + b.w * wv[7];
                }
            }
        }
    } else {
        for (u32 kk = lane; kk < k; kk += 32) {
            float wv = ldw<DT>(w, wrow + kk);
#pragma unroll
            for (int r = 0; r < M; r++)
                if (r0 + r < m) acc[r] += x[(u64)(r0 + r) * k + kk] * wv;
        }
    }
#pragma unroll
    for (int r = 0; r < M; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0 && r0 + r < m) out[(u64)(r0 + r) * n + col] = s;
    }
}

struct MatmulParams {
    const float* x;
    const void* w;
    float* out;
    u32 m;
    u32 n;
    u32 k;
    u32 pad;
};

#define GEMV(DTN, DT, M)                                                                                            \
    extern "C" __global__ void __launch_bounds__(256)                                                               \
        matmul_gemv_##DTN##_##M(const MatmulParams prm) {                                                           \
        gemv<DT, M, true>(prm.x, prm.w, prm.out, prm.m, prm.n, prm.k);                                              \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(256)                                                               \
        matmul_gemv_##DTN##_##M##_scalar(const MatmulParams prm) {                                                  \
        gemv<DT, M, false>(prm.x, prm.w, prm.out, prm.m, prm.n, prm.k);                                             \
    }
#define GEMV_ALL(DTN, DT) GEMV(DTN, DT, 1) GEMV(DTN, DT, 2) GEMV(DTN, DT, 4) GEMV(DTN, DT, 8)
GEMV_ALL(f32, 0)
GEMV_ALL(bf16, 1)
GEMV_ALL(f16, 2)

// The SwiGLU pair fused: out[m, j] = silu(x·g_j) · (x·u_j), both weight rows streamed by the same warp.
template <int DT, int M, bool VEC>
__device__ void swiglu(const float* __restrict__ x, const void* __restrict__ wg, const void* __restrict__ wu,
                       float* __restrict__ out, u32 m, u32 n, u32 k) {
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32 col = blockIdx.x * (blockDim.x >> 5) + warp;
    const u32 r0 = blockIdx.y * M;
    if (col >= n) return;
    float ag[M], au[M];
#pragma unroll
    for (int r = 0; r < M; r++) ag[r] = au[r] = 0.0f;
    const u64 wrow = (u64)col * k;
    if (VEC) {
        u32 kk = lane * 8;
        for (; kk + 256 < k; kk += 2 * 256) {
            float g[2][8], u[2][8];
#pragma unroll
            for (int t = 0; t < 2; t++) {
                ld8<DT>(wg, wrow + kk + t * 256, g[t]);
                ld8<DT>(wu, wrow + kk + t * 256, u[t]);
            }
#pragma unroll
            for (int r = 0; r < M; r++) {
                if (r0 + r < m) {
                    const float* xr = x + (u64)(r0 + r) * k + kk;
#pragma unroll
                    for (int t = 0; t < 2; t++) {
                        float4 a = *(const float4*)(xr + t * 256), b = *(const float4*)(xr + t * 256 + 4);
                        float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
                        for (int j = 0; j < 8; j++) {
                            ag[r] += xv[j] * g[t][j];
                            au[r] += xv[j] * u[t][j];
                        }
                    }
                }
            }
        }
        for (; kk < k; kk += 256) {
            float g[8], u[8];
            ld8<DT>(wg, wrow + kk, g);
            ld8<DT>(wu, wrow + kk, u);
#pragma unroll
            for (int r = 0; r < M; r++) {
                if (r0 + r < m) {
                    const float* xr = x + (u64)(r0 + r) * k + kk;
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        ag[r] += xr[j] * g[j];
                        au[r] += xr[j] * u[j];
                    }
                }
            }
        }
    } else {
        for (u32 kk = lane; kk < k; kk += 32) {
            float g = ldw<DT>(wg, wrow + kk), u = ldw<DT>(wu, wrow + kk);
#pragma unroll
            for (int r = 0; r < M; r++) {
                if (r0 + r < m) {
                    float xv = x[(u64)(r0 + r) * k + kk];
                    ag[r] += xv * g;
                    au[r] += xv * u;
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < M; r++) {
        float g = warp_sum(ag[r]), u = warp_sum(au[r]);
        if (lane == 0 && r0 + r < m) out[(u64)(r0 + r) * n + col] = g / (1.0f + expf(-g)) * u;
    }
}

struct SwigluParams {
    const float* x;
    const void* wg;
    const void* wu;
    float* out;
    u32 m;
    u32 n;
    u32 k;
    u32 pad;
};

#define SWIGLU(DTN, DT, M)                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) matmul_swiglu_##DTN##_##M(const SwigluParams prm) {           \
        swiglu<DT, M, true>(prm.x, prm.wg, prm.wu, prm.out, prm.m, prm.n, prm.k);                                   \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(256) matmul_swiglu_##DTN##_##M##_scalar(const SwigluParams prm) {  \
        swiglu<DT, M, false>(prm.x, prm.wg, prm.wu, prm.out, prm.m, prm.n, prm.k);                                  \
    }
#define SWIGLU_ALL(DTN, DT) SWIGLU(DTN, DT, 1) SWIGLU(DTN, DT, 2) SWIGLU(DTN, DT, 4) SWIGLU(DTN, DT, 8)
SWIGLU_ALL(f32, 0)
SWIGLU_ALL(bf16, 1)
SWIGLU_ALL(f16, 2)

// The GEMV on quantized weights (groups along K, which they divide): a lane reads 16 bytes (32 q4 or 16 q8
// values) at a time, four such loads in flight, one scale per 8 values (group sizes are multiples of 8; the
// scale's index by a shift when the group is a power of two). Σ x·q per 8 values, times the scale.
template <int BITS, int M>
__device__ __forceinline__ void gemv_q_chunk(const float* __restrict__ x, uint4 v, const unsigned short* sc, u32 st,
                                             u64 srow, u32 kk, u32 group, int gsh, u32 r0, u32 m, u32 k, float* acc) {
    const u32 per = BITS == 4 ? 32 : 16;
    const u32 wd[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (u32 c = 0; c < per / 8; c++) {
        float q[8];
        if (BITS == 4) unpack_q4(wd[c], q);
        else unpack_q8(wd[2 * c], wd[2 * c + 1], q);
        const u32 gi = gsh >= 0 ? (kk + 8 * c) >> gsh : (kk + 8 * c) / group;
        const float s = ld_scale(sc, srow + gi, st);
#pragma unroll
        for (int r = 0; r < M; r++) {
            if (r0 + r < m) {
                const float* xr = x + (u64)(r0 + r) * k + kk + 8 * c;
                float4 a = *(const float4*)xr, b = *(const float4*)(xr + 4);
                float d = a.x * q[0] + a.y * q[1] + a.z * q[2] + a.w * q[3] + b.x * q[4] + b.y * q[5] + b.z * q[6] +
                          b.w * q[7];
                acc[r] += d * s;
            }
        }
    }
}

template <int BITS, int M, bool VEC>
__device__ void gemv_q(const float* __restrict__ x, const unsigned char* __restrict__ w, const unsigned short* sc,
                       u32 st, u32 group, float* __restrict__ out, u32 m, u32 n, u32 k) {
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32 col = blockIdx.x * (blockDim.x >> 5) + warp;
    const u32 r0 = blockIdx.y * M;
    if (col >= n) return;
    float acc[M];
#pragma unroll
    for (int r = 0; r < M; r++) acc[r] = 0.0f;
    const u64 base = (u64)col * k;
    if (VEC) {
        const u32 per = BITS == 4 ? 32 : 16, step = 32 * per;
        const int gsh = (group & (group - 1)) == 0 ? 31 - __clz(group) : -1;
        const u64 srow = (u64)col * (k / group);
        const unsigned char* wr = w + base * BITS / 8;
        u32 kk = lane * per;
        for (; kk + 3 * step < k; kk += 4 * step) {
            uint4 v[4];
#pragma unroll
            for (u32 u = 0; u < 4; u++) v[u] = __ldg((const uint4*)(wr + (u64)(kk + u * step) * BITS / 8));
#pragma unroll
            for (u32 u = 0; u < 4; u++) gemv_q_chunk<BITS, M>(x, v[u], sc, st, srow, kk + u * step, group, gsh, r0, m, k, acc);
        }
        for (; kk < k; kk += step) {
            const uint4 v = __ldg((const uint4*)(wr + (u64)kk * BITS / 8));
            gemv_q_chunk<BITS, M>(x, v, sc, st, srow, kk, group, gsh, r0, m, k, acc);
        }
    } else {
        for (u32 kk = lane; kk < k; kk += 32) {
            float wv = (float)ld_q<BITS>(w, base + kk) * ld_scale(sc, (base + kk) / group, st);
#pragma unroll
            for (int r = 0; r < M; r++)
                if (r0 + r < m) acc[r] += x[(u64)(r0 + r) * k + kk] * wv;
        }
    }
#pragma unroll
    for (int r = 0; r < M; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0 && r0 + r < m) out[(u64)(r0 + r) * n + col] = s;
    }
}

struct MatmulQParams {
    const float* x;
    const unsigned char* w;
    const unsigned short* sc;
    float* out;
    u32 st;
    u32 group;
    u32 m;
    u32 n;
    u32 k;
    u32 pad;
};

#define GEMVQ(B, M)                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256) matmul_gemv_q##B##_##M(const MatmulQParams prm) {             \
        gemv_q<B, M, true>(prm.x, prm.w, prm.sc, prm.st, prm.group, prm.out, prm.m, prm.n, prm.k);                  \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(256) matmul_gemv_q##B##_##M##_scalar(const MatmulQParams prm) {    \
        gemv_q<B, M, false>(prm.x, prm.w, prm.sc, prm.st, prm.group, prm.out, prm.m, prm.n, prm.k);                 \
    }
GEMVQ(4, 1) GEMVQ(4, 2) GEMVQ(4, 4) GEMVQ(4, 8)
GEMVQ(8, 1) GEMVQ(8, 2) GEMVQ(8, 4) GEMVQ(8, 8)

// Prefill on quantized weights: a CUDA-core tiled GEMM (32 rows × 64 columns per block of 256, K through
// shared memory 32 at a time), each weight dequantized once per 32 rows as it is staged.
template <int BITS>
__device__ void tiled_q(const float* __restrict__ x, const unsigned char* __restrict__ w, const unsigned short* sc,
                        u32 st, u32 group, float* __restrict__ out, u32 m, u32 n, u32 k) {
    __shared__ float xs[32][33];
    __shared__ float ws[32][65];
    const u32 n0 = blockIdx.x * 64, m0 = blockIdx.y * 32;
    const u32 tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
    float acc[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
    for (u32 k0 = 0; k0 < k; k0 += 32) {
        for (u32 q = tid; q < 32 * 32; q += 256) {
            u32 r = q >> 5, kk = q & 31;
            xs[r][kk] = (m0 + r < m && k0 + kk < k) ? x[(u64)(m0 + r) * k + k0 + kk] : 0.0f;
        }
        for (u32 q = tid; q < 64 * 32; q += 256) {
            u32 c = q >> 5, kk = q & 31;
            float v = 0.0f;
            if (n0 + c < n && k0 + kk < k) {
                const u64 e = (u64)(n0 + c) * k + k0 + kk;
                v = (float)ld_q<BITS>(w, e) * ld_scale(sc, e / group, st);
            }
            ws[kk][c] = v;
        }
        __syncthreads();
#pragma unroll 8
        for (u32 kk = 0; kk < 32; kk++) {
            const float a0 = xs[2 * ty][kk], a1 = xs[2 * ty + 1][kk];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float b = ws[kk][tx + 16 * j];
                acc[0][j] += a0 * b;
                acc[1][j] += a1 * b;
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const u32 r = m0 + 2 * ty + i;
        if (r >= m) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const u32 c = n0 + tx + 16 * j;
            if (c < n) out[(u64)r * n + c] = acc[i][j];
        }
    }
}
extern "C" __global__ void __launch_bounds__(256) matmul_tiled_q4(const MatmulQParams prm) { tiled_q<4>(prm.x, prm.w, prm.sc, prm.st, prm.group, prm.out, prm.m, prm.n, prm.k); }
extern "C" __global__ void __launch_bounds__(256) matmul_tiled_q8(const MatmulQParams prm) { tiled_q<8>(prm.x, prm.w, prm.sc, prm.st, prm.group, prm.out, prm.m, prm.n, prm.k); }

struct SplitBf16Params {
    const float* x;
    u16* hi;
    u16* lo;
    u32 n;
    u32 pad;
};

extern "C" __global__ void split_bf16(const SplitBf16Params prm) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= prm.n) return;
    float v = prm.x[i];
    u16 h = f2bf(v);
    prm.hi[i] = h;
    prm.lo[i] = f2bf(v - bf2f(h));
}
