// Shared by every kernel family (prepended to each .cu before NVRTC compiles it): integer types, weight
// loads for each format (f32, bf16, f16) as f32, and warp/block reductions. No CUDA headers are needed.
//
// Every kernel takes one argument, its parameter struct (`const XParams prm`), declared in its .cu file and
// read by name; the host fills the Rust twin declared with `params!` in kernels/src/ (docs/backends.md).
// Fields: pointers, then 64-bit, then 32-bit values, padded with `u32 pad` to a multiple of 8 bytes, so the
// struct has no hidden padding. kernels/src/layout_tests.rs checks every pair.

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

#define NEG_BIG (-3.0e38f)
#define F32_MAX 3.4028234663852886e38f

// Weight formats (DType in herd-core): 0 f32, 1 bf16, 2 f16.
__device__ __forceinline__ float bf2f(u32 h) { return __uint_as_float(h << 16); }
#ifdef HERD_EMU
// The CPU emulator (emu.h): the compiler's IEEE half type converts exactly as the PTX instructions do.
__device__ __forceinline__ float h2f(u16 h) {
    _Float16 x;
    memcpy(&x, &h, 2);
    return (float)x;
}
__device__ __forceinline__ u16 f2h(float f) {
    _Float16 x = (_Float16)f;
    u16 h;
    memcpy(&h, &x, 2);
    return h;
}
#define DYN_SHARED(T, name) T* name = (T*)emu::dyn_smem()
#else
__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif
// Dynamic shared memory (sized at launch).
#define DYN_SHARED(T, name) extern __shared__ T name[]
#endif
// Round to nearest, ties to even (NaN stays NaN).
__device__ __forceinline__ u16 f2bf(float f) {
    u32 b = __float_as_uint(f);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (u16)((b >> 16) | 0x40u);
    b += 0x7fffu + ((b >> 16) & 1u);
    return (u16)(b >> 16);
}
template <int DT> __device__ __forceinline__ float ldw(const void* w, u64 i) {
    if (DT == 0) return __ldg((const float*)w + i);
    u16 h = __ldg((const unsigned short*)w + i);
    return DT == 1 ? bf2f(h) : h2f(h);
}

// Two 16-bit weights packed in a u32 (element 2j in the low half).
template <int DT> __device__ __forceinline__ void unpack2(u32 p, float& a, float& b) {
    if (DT == 1) {
        a = __uint_as_float(p << 16);
        b = __uint_as_float(p & 0xffff0000u);
    } else {
        a = h2f((u16)(p & 0xffffu));
        b = h2f((u16)(p >> 16));
    }
}

// Eight consecutive weights from element i (16-byte aligned for 16-bit formats, 32 for f32): one or two
// 16-byte loads through the read-only path.
template <int DT> __device__ __forceinline__ void ld8(const void* w, u64 i, float* o) {
    if (DT == 0) {
        const float4* p = (const float4*)((const float*)w + i);
        float4 a = __ldg(p), b = __ldg(p + 1);
        o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w;
        o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
    } else {
        uint4 v = __ldg((const uint4*)((const unsigned short*)w + i));
        unpack2<DT>(v.x, o[0], o[1]);
        unpack2<DT>(v.y, o[2], o[3]);
        unpack2<DT>(v.z, o[4], o[5]);
        unpack2<DT>(v.w, o[6], o[7]);
    }
}

// Quantized weights (herd_core::quant): integer values, then scales (st: 0 f16, 1 bf16). Element i's integer:
template <int BITS> __device__ __forceinline__ int ld_q(const unsigned char* v, u64 i) {
    if (BITS == 8) return (int)(signed char)__ldg(v + i);
    unsigned char b = __ldg(v + (i >> 1));
    return (int)((i & 1) ? (b >> 4) : (b & 15)) - 8;
}
__device__ __forceinline__ float ld_scale(const unsigned short* s, u64 i, u32 st) {
    unsigned short h = __ldg(s + i);
    return st ? bf2f(h) : h2f(h);
}
// The eight integers of one u32 of q4 values (element 2j in the low nibble of byte j) or two u32 of q8.
__device__ __forceinline__ void unpack_q4(u32 w, float* q) {
#pragma unroll
    for (int j = 0; j < 8; j++) q[j] = (float)((int)((w >> (4 * j)) & 15u) - 8);
}
__device__ __forceinline__ void unpack_q8(u32 a, u32 b, float* q) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
        q[j] = (float)(signed char)(a >> (8 * j));
        q[4 + j] = (float)(signed char)(b >> (8 * j));
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `sh` holds 33 floats; the call ends with a barrier, so it may be reused at once.
__device__ float block_sum(float v, float* sh) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < nw ? sh[lane] : 0.0f;
        s = warp_sum(s);
        if (lane == 0) sh[32] = s;
    }
    __syncthreads();
    float r = sh[32];
    __syncthreads();
    return r;
}
