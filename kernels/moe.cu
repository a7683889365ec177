// The Llama 4 router (top-k by raw logit, sigmoid scores) and the routed experts, with the expert index
// read on the device (no host round trip per layer).
//
// Entries are the (row, choice) pairs, ent = r·k + c, expert idx[ent], score s = score[ent]. Weights are
// input-major: gate_up [E, D, 2F] and down [E, F, D], so each output column is a contiguous run per input
// element and 16-byte loads cover 8 columns.
//
// * Few entries (decode): moe_gemv per entry, the input dimension split across blocks, partial sums per
//   split; moe_act sums the splits of the gate/up pass and applies silu(s·g)·(s·u); moe_sum adds the down
//   pass (its splits, then the k choices in order) into out.
// * Many entries (prefill): moe_route groups the entries by expert into tiles of up to 32 (on the device),
//   and each tile is multiplied by its expert's weights, 32 × 64 outputs per block: on tensor cores for bf16
//   weights (moe_mma_bf16: x split into bf16 hi + lo, two mma.sync each, f32 accumulation, so the result
//   keeps f32 accuracy), on CUDA cores otherwise (moe_tile); moe_act and moe_sum then run with one split.

__device__ __forceinline__ bool beats(float a, u32 ai, float b, u32 bi) {
    bool an = isnan(a), bn = isnan(b);
    if (an != bn) return bn; // NaN sorts last
    if (an) return ai < bi;
    return a > b || (a == b && ai < bi);
}

#define MAXK 16
struct RouterTopkParams {
    const float* logits;
    u32* idx;
    float* score;
    u32 rows;
    u32 e;
    u32 k;
    u32 pad;
};

extern "C" __global__ void router_topk(const RouterTopkParams prm) {
    u32 r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= prm.rows) return;
    const float* l = prm.logits + (u64)r * prm.e;
    u32 chosen[MAXK];
    for (u32 c = 0; c < prm.k && c < MAXK; c++) {
        u32 bi = 0xffffffffu;
        float bv = 0.0f;
        for (u32 x = 0; x < prm.e; x++) {
            bool taken = false;
            for (u32 t = 0; t < c; t++) taken |= chosen[t] == x;
            if (taken) continue;
            float v = l[x];
            if (bi == 0xffffffffu || beats(v, x, bv, bi)) {
                bi = x;
                bv = v;
            }
        }
        chosen[c] = bi;
        prm.idx[(u64)r * prm.k + c] = bi;
        prm.score[(u64)r * prm.k + c] = 1.0f / (1.0f + expf(-bv));
    }
}

// part[(ent·splits + sp)·n + col] = Σ_{i in split sp} in[in_row, i] · w[e, i, col], in_row = ent / in_div.
template <int DT, bool VEC>
__device__ void moe_gemv_impl(const float* __restrict__ in, u32 in_div, const u32* __restrict__ idx,
                              const void* __restrict__ w, float* __restrict__ part, u32 kin, u32 n, u32 chunk,
                              u32 splits, u32 ne) {
    const u32 ent = blockIdx.z, sp = blockIdx.y;
    const u32 per = VEC ? 8 : 1;
    const u32 col = (blockIdx.x * blockDim.x + threadIdx.x) * per;
    if (col >= n) return;
    const u32 e = idx[ent];
    if (e >= ne) return; // skipped (the expert cache's other rounds)
    const float* x = in + (u64)(ent / in_div) * kin;
    const u32 i0 = sp * chunk, i1 = min(kin, i0 + chunk);
    const u64 wbase = (u64)e * kin * n + col;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (VEC) {
        u32 i = i0;
        for (; i + 3 < i1; i += 4) {
            float wv[4][8];
#pragma unroll
            for (int u = 0; u < 4; u++) ld8<DT>(w, wbase + (u64)(i + u) * n, wv[u]);
#pragma unroll
            for (int u = 0; u < 4; u++) {
                float xv = x[i + u];
#pragma unroll
                for (int j = 0; j < 8; j++) acc[j] += xv * wv[u][j];
            }
        }
        for (; i < i1; i++) {
            float wv[8];
            ld8<DT>(w, wbase + (u64)i * n, wv);
            float xv = x[i];
#pragma unroll
            for (int j = 0; j < 8; j++) acc[j] += xv * wv[j];
        }
        float* o = part + ((u64)ent * splits + sp) * n + col;
#pragma unroll
        for (int j = 0; j < 8; j++) o[j] = acc[j];
    } else {
        for (u32 i = i0; i < i1; i++) acc[0] += x[i] * ldw<DT>(w, wbase + (u64)i * n);
        part[((u64)ent * splits + sp) * n + col] = acc[0];
    }
}
struct MoeGemvParams {
    const float* input;
    const u32* idx;
    const void* w;
    float* part;
    u32 in_div;
    u32 kin;
    u32 n;
    u32 chunk;
    u32 splits;
    u32 ne;
};

#define MOE_GEMV(DTN, DT)                                                                                           \
    extern "C" __global__ void __launch_bounds__(256) moe_gemv_##DTN(const MoeGemvParams prm) {                     \
        moe_gemv_impl<DT, true>(prm.input, prm.in_div, prm.idx, prm.w, prm.part, prm.kin, prm.n, prm.chunk, prm.splits, prm.ne); \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(256) moe_gemv_##DTN##_scalar(const MoeGemvParams prm) {            \
        moe_gemv_impl<DT, false>(prm.input, prm.in_div, prm.idx, prm.w, prm.part, prm.kin, prm.n, prm.chunk, prm.splits, prm.ne); \
    }
MOE_GEMV(f32, 0)
MOE_GEMV(bf16, 1)
MOE_GEMV(f16, 2)

// moe_gemv on quantized weights (groups along the input axis, scales [E, K/G, N]): 8 columns per thread
// as one u32 of q4 or two of q8, four input rows' loads in flight; the 8 scales are reloaded when the input
// row enters a new group (found by comparison, no division per row).
template <int BITS>
__device__ __forceinline__ void moe_q_row(u32 a, u32 b, float xv, const float* s, float* acc) {
    float q[8];
    if (BITS == 4) unpack_q4(a, q);
    else unpack_q8(a, b, q);
#pragma unroll
    for (int j = 0; j < 8; j++) acc[j] += xv * (q[j] * s[j]);
}

template <int BITS, bool VEC>
__device__ void moe_gemv_q_impl(const float* __restrict__ in, u32 in_div, const u32* __restrict__ idx,
                                const unsigned char* __restrict__ w, const unsigned short* __restrict__ sc, u32 st,
                                u32 group, float* __restrict__ part, u32 kin, u32 n, u32 chunk, u32 splits,
                                u32 ne) {
    const u32 ent = blockIdx.z, sp = blockIdx.y;
    const u32 per = VEC ? 8 : 1;
    const u32 col = (blockIdx.x * blockDim.x + threadIdx.x) * per;
    if (col >= n) return;
    const u32 e = idx[ent];
    if (e >= ne) return; // skipped (the expert cache's other rounds)
    const float* x = in + (u64)(ent / in_div) * kin;
    const u32 i0 = sp * chunk, i1 = min(kin, i0 + chunk);
    const u64 wb = (u64)e * kin * n + col;
    const u64 sb = (u64)e * (kin / group) * n + col;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    u32 gnext = i0; // the first row past the current group's scales (i0: none loaded yet)
#define HERD_MOE_SCALES(ROW)                                                                                        \
    if ((ROW) >= gnext) {                                                                                           \
        const u32 g = (ROW) / group;                                                                                \
        gnext = (g + 1) * group;                                                                                    \
        for (u32 j = 0; j < per; j++) s[j] = ld_scale(sc, sb + (u64)g * n + j, st);                                 \
    }
    if (VEC) {
        u32 i = i0;
        for (; i + 3 < i1; i += 4) {
            u32 a[4], b[4];
#pragma unroll
            for (u32 u = 0; u < 4; u++) {
                const u64 e0 = wb + (u64)(i + u) * n;
                if (BITS == 4) {
                    a[u] = __ldg((const u32*)(w + e0 / 2));
                    b[u] = 0;
                } else {
                    const uint2 v = __ldg((const uint2*)(w + e0));
                    a[u] = v.x;
                    b[u] = v.y;
                }
            }
#pragma unroll
            for (u32 u = 0; u < 4; u++) {
                HERD_MOE_SCALES(i + u)
                moe_q_row<BITS>(a[u], b[u], x[i + u], s, acc);
            }
        }
        for (; i < i1; i++) {
            const u64 e0 = wb + (u64)i * n;
            u32 a, b = 0;
            if (BITS == 4) {
                a = __ldg((const u32*)(w + e0 / 2));
            } else {
                const uint2 v = __ldg((const uint2*)(w + e0));
                a = v.x;
                b = v.y;
            }
            HERD_MOE_SCALES(i)
            moe_q_row<BITS>(a, b, x[i], s, acc);
        }
    } else {
        for (u32 i = i0; i < i1; i++) {
            HERD_MOE_SCALES(i)
            acc[0] += x[i] * ((float)ld_q<BITS>(w, wb + (u64)i * n) * s[0]);
        }
    }
#undef HERD_MOE_SCALES
    float* o = part + ((u64)ent * splits + sp) * n + col;
    for (u32 j = 0; j < per; j++) o[j] = acc[j];
}
struct MoeGemvQParams {
    const float* input;
    const u32* idx;
    const unsigned char* w;
    const unsigned short* sc;
    float* part;
    u32 in_div;
    u32 st;
    u32 group;
    u32 kin;
    u32 n;
    u32 chunk;
    u32 splits;
    u32 ne;
};

#define MOE_GEMV_Q(B)                                                                                               \
    extern "C" __global__ void __launch_bounds__(256) moe_gemv_q##B(const MoeGemvQParams prm) {                     \
        moe_gemv_q_impl<B, true>(prm.input, prm.in_div, prm.idx, prm.w, prm.sc, prm.st, prm.group, prm.part, prm.kin, prm.n, prm.chunk, prm.splits, prm.ne); \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(256) moe_gemv_q##B##_scalar(const MoeGemvQParams prm) {            \
        moe_gemv_q_impl<B, false>(prm.input, prm.in_div, prm.idx, prm.w, prm.sc, prm.st, prm.group, prm.part, prm.kin, prm.n, prm.chunk, prm.splits, prm.ne); \
    }
MOE_GEMV_Q(4)
MOE_GEMV_Q(8)

struct MoeActParams {
    const float* gu;
    const float* score;
    float* h;
    u32 nent;
    u32 f;
    u32 splits;
    u32 pad;
};

// h[ent, j] = silu(s·g)·(s·u), g and u the split sums of gu[ent] (columns j and F + j).
extern "C" __global__ void moe_act(const MoeActParams prm) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)prm.nent * prm.f) return;
    u32 ent = (u32)(i / prm.f), j = (u32)(i % prm.f);
    float g = 0.0f, u = 0.0f;
    for (u32 sp = 0; sp < prm.splits; sp++) {
        const float* p = prm.gu + ((u64)ent * prm.splits + sp) * 2 * prm.f;
        g += p[j];
        u += p[prm.f + j];
    }
    float s = prm.score[ent];
    g *= s;
    u *= s;
    prm.h[i] = g / (1.0f + expf(-g)) * u;
}

struct MoeSumParams {
    const float* y;
    float* out;
    const u32* idx;
    u32 rows;
    u32 k;
    u32 d;
    u32 splits;
    u32 ne;
    u32 pad;
};

// out[r, c] += Σ_choice Σ_split y[(r·k + choice)·splits + split, c], over the choices of an expert < ne.
extern "C" __global__ void moe_sum(const MoeSumParams prm) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)prm.rows * prm.d) return;
    u32 r = (u32)(i / prm.d), c = (u32)(i % prm.d);
    float acc = prm.out[i];
    for (u32 ch = 0; ch < prm.k; ch++) {
        if (prm.idx[(u64)r * prm.k + ch] >= prm.ne) continue;
        float s = 0.0f;
        for (u32 sp = 0; sp < prm.splits; sp++) s += prm.y[(((u64)r * prm.k + ch) * prm.splits + sp) * prm.d + c];
        acc += s;
    }
    prm.out[i] = acc;
}

// route: [0] number of tiles, then tmax tiles (expert, first, count) into the entry list, then the entries
// grouped by expert (nent). One block; `counts` is dynamic shared memory of 2·E u32.
#define TM 32
struct MoeRouteParams {
    const u32* idx;
    u32* route;
    u32 nent;
    u32 e;
    u32 tmax;
    u32 pad;
};

extern "C" __global__ void __launch_bounds__(1024) moe_route(const MoeRouteParams prm) {
    DYN_SHARED(u32, cnt); // [E] counts, then [E] cursors
    u32* cur = cnt + prm.e;
    for (u32 x = threadIdx.x; x < prm.e; x += blockDim.x) cnt[x] = 0;
    __syncthreads();
    for (u32 i = threadIdx.x; i < prm.nent; i += blockDim.x) {
        u32 x = prm.idx[i];
        if (x < prm.e) atomicAdd(&cnt[x], 1u);
    }
    __syncthreads();
    u32* tiles = prm.route + 1;
    u32* ents = prm.route + 1 + 3 * prm.tmax;
    if (threadIdx.x == 0) {
        u32 off = 0, nt = 0;
        for (u32 x = 0; x < prm.e; x++) {
            u32 c = cnt[x];
            cur[x] = off;
            for (u32 s = 0; s < c && nt < prm.tmax; s += TM) {
                tiles[3 * nt] = x;
                tiles[3 * nt + 1] = off + s;
                tiles[3 * nt + 2] = min((u32)TM, c - s);
                nt++;
            }
            off += c;
        }
        prm.route[0] = nt;
    }
    __syncthreads();
    for (u32 i = threadIdx.x; i < prm.nent; i += blockDim.x) {
        u32 x = prm.idx[i];
        if (x < prm.e) ents[atomicAdd(&cur[x], 1u)] = i;
    }
}

// y[ent, col] = Σ_i in[ent / in_div, i] · w[e, i, col] for the entries of tile blockIdx.y; 256 threads,
// 32 entries × 64 columns per block, 2 × 4 outputs per thread, K in steps of 32 through shared memory.
// DT 0-2: the float formats; 4 and 8: q4 and q8 (scales `sc` of type `st`, groups of `group` along K).
template <int DT>
__device__ void moe_tile_impl(const float* __restrict__ in, u32 in_div, const u32* __restrict__ route, u32 tmax,
                              const void* __restrict__ w, float* __restrict__ y, u32 kin, u32 n,
                              const unsigned short* __restrict__ sc, u32 st, u32 group) {
    __shared__ float xs[TM][33];
    __shared__ float ws[32][64];
    __shared__ u32 rows_s[TM];
    const u32 t = blockIdx.y;
    if (t >= route[0]) return;
    const u32 e = route[1 + 3 * t], first = route[2 + 3 * t], cnt = route[3 + 3 * t];
    const u32* ents = route + 1 + 3 * tmax + first;
    const u32 n0 = blockIdx.x * 64;
    const u32 tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
    if (tid < TM) rows_s[tid] = tid < cnt ? ents[tid] : 0xffffffffu;
    float acc[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
    const u64 wb = (u64)e * kin * n;
    __syncthreads();
    for (u32 k0 = 0; k0 < kin; k0 += 32) {
        for (u32 q = tid; q < TM * 32; q += 256) {
            u32 r = q >> 5, kk = q & 31;
            u32 ent = rows_s[r];
            xs[r][kk] = (ent != 0xffffffffu && k0 + kk < kin) ? in[(u64)(ent / in_div) * kin + k0 + kk] : 0.0f;
        }
        for (u32 q = tid; q < 32 * 64; q += 256) {
            u32 kk = q >> 6, c = q & 63;
            float wv = 0.0f;
            if (k0 + kk < kin && n0 + c < n) {
                const u64 i = wb + (u64)(k0 + kk) * n + n0 + c;
                if (DT >= 4) {
                    const u64 si = ((u64)e * (kin / group) + (k0 + kk) / group) * n + n0 + c;
                    wv = (float)ld_q<(DT == 4 ? 4 : 8)>((const unsigned char*)w, i) * ld_scale(sc, si, st);
                } else {
                    wv = ldw<(DT < 3 ? DT : 0)>(w, i);
                }
            }
            ws[kk][c] = wv;
        }
        __syncthreads();
#pragma unroll 8
        for (u32 kk = 0; kk < 32; kk++) {
            float a0 = xs[2 * ty][kk], a1 = xs[2 * ty + 1][kk];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                float b = ws[kk][tx + 16 * j];
                acc[0][j] += a0 * b;
                acc[1][j] += a1 * b;
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        u32 ent = rows_s[2 * ty + i];
        if (ent == 0xffffffffu) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            u32 c = n0 + tx + 16 * j;
            if (c < n) y[(u64)ent * n + c] = acc[i][j];
        }
    }
}
struct MoeTileParams {
    const float* input;
    const u32* route;
    const void* w;
    float* y;
    const unsigned short* sc;
    u32 in_div;
    u32 tmax;
    u32 kin;
    u32 n;
    u32 st;
    u32 group;
};

#define MOE_TILE(NAME, DT)                                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                                               \
        moe_tile_##NAME(const MoeTileParams prm) {                                                                  \
        moe_tile_impl<DT>(prm.input, prm.in_div, prm.route, prm.tmax, prm.w, prm.y, prm.kin, prm.n, prm.sc, prm.st, prm.group); \
    }
MOE_TILE(f32, 0)
MOE_TILE(bf16, 1)
MOE_TILE(f16, 2)
MOE_TILE(q4, 4)
MOE_TILE(q8, 8)

// D += A·B for one m16n8k16 bf16 tile (fragments as the PTX ISA lays them out; see emu.h).
__device__ __forceinline__ void mma_bf16(float* c, const u32* a, const u32* b) {
#ifdef HERD_EMU
    herd_emu_mma_bf16(c, a, b);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// y[ent, col] = Σ_i in[ent / in_div, i] · w[e, i, col] for the entries of tile blockIdx.y, w in bf16, on tensor
// cores. 128 threads: warp w owns columns 16w..16w+16 of the block's 64, as 2 × 2 m16n8 tiles over the 32 rows.
// `exact` 0 drops the lo half of x (bf16 activations: half the tensor work, bf16 accuracy).
#define MMA_K 32
struct MoeMmaParams {
    const float* input;
    const u32* route;
    const void* w;
    float* y;
    u32 in_div;
    u32 tmax;
    u32 kin;
    u32 n;
    u32 exact;
    u32 pad;
};

extern "C" __global__ void __launch_bounds__(128) moe_mma_bf16(const MoeMmaParams prm) {
    const float* __restrict__ in = prm.input;
    u32 in_div = prm.in_div;
    const u32* __restrict__ route = prm.route;
    u32 tmax = prm.tmax;
    const void* __restrict__ w = prm.w;
    float* __restrict__ y = prm.y;
    u32 kin = prm.kin;
    u32 n = prm.n;
    u32 exact = prm.exact;
    // xh and xl are read as u32 pairs below (rows of an even number of u16, even columns), so they must be
    // at least 4-byte aligned, which a u16 array is not by itself.
    __shared__ __align__(16) u16 xh[TM][MMA_K + 2];
    __shared__ __align__(16) u16 xl[TM][MMA_K + 2];
    __shared__ u16 ws[MMA_K][64 + 2];
    __shared__ u32 rows_s[TM];
    const u32 t = blockIdx.y;
    if (t >= route[0]) return;
    const u32 e = route[1 + 3 * t], first = route[2 + 3 * t], cnt = route[3 + 3 * t];
    const u32* ents = route + 1 + 3 * tmax + first;
    const u32 n0 = blockIdx.x * 64;
    const u32 tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    if (tid < TM) rows_s[tid] = tid < cnt ? ents[tid] : 0xffffffffu;
    float acc[2][2][4];
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int b = 0; b < 2; b++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[a][b][i] = 0.0f;
    const unsigned short* wv = (const unsigned short*)w;
    const u64 wb = (u64)e * kin * n;
    __syncthreads();
    for (u32 k0 = 0; k0 < kin; k0 += MMA_K) {
        for (u32 q = tid; q < TM * MMA_K; q += 128) {
            u32 r = q / MMA_K, kk = q % MMA_K;
            u32 ent = rows_s[r];
            float v = (ent != 0xffffffffu && k0 + kk < kin) ? in[(u64)(ent / in_div) * kin + k0 + kk] : 0.0f;
            u16 h = f2bf(v);
            xh[r][kk] = h;
            xl[r][kk] = f2bf(v - bf2f(h));
        }
        for (u32 q = tid; q < MMA_K * 64; q += 128) {
            u32 kk = q >> 6, c = q & 63;
            ws[kk][c] = (k0 + kk < kin && n0 + c < n) ? __ldg(wv + wb + (u64)(k0 + kk) * n + n0 + c) : (u16)0;
        }
        __syncthreads();
#pragma unroll
        for (u32 ks = 0; ks < MMA_K; ks += 16) {
            u32 ah[2][4], al[2][4], bf[2][2];
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const u32 r = mt * 16 + g, c = ks + 2 * tq;
                ah[mt][0] = *(const u32*)&xh[r][c];
                ah[mt][1] = *(const u32*)&xh[r + 8][c];
                ah[mt][2] = *(const u32*)&xh[r][c + 8];
                ah[mt][3] = *(const u32*)&xh[r + 8][c + 8];
                al[mt][0] = *(const u32*)&xl[r][c];
                al[mt][1] = *(const u32*)&xl[r + 8][c];
                al[mt][2] = *(const u32*)&xl[r][c + 8];
                al[mt][3] = *(const u32*)&xl[r + 8][c + 8];
            }
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                const u32 col = warp * 16 + nt * 8 + g, k = ks + 2 * tq;
                bf[nt][0] = (u32)ws[k][col] | ((u32)ws[k + 1][col] << 16);
                bf[nt][1] = (u32)ws[k + 8][col] | ((u32)ws[k + 9][col] << 16);
            }
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int nt = 0; nt < 2; nt++) {
                    mma_bf16(acc[mt][nt], ah[mt], bf[nt]);
                    if (exact) mma_bf16(acc[mt][nt], al[mt], bf[nt]);
                }
        }
        __syncthreads();
    }
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const u32 r = mt * 16 + g + (i >= 2 ? 8 : 0);
                const u32 c = n0 + warp * 16 + nt * 8 + 2 * tq + (i & 1);
                const u32 ent = rows_s[r];
                if (ent != 0xffffffffu && c < n) y[(u64)ent * n + c] = acc[mt][nt][i];
            }
}
