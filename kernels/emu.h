// herd's CUDA emulator: the .cu kernels compiled as C++ and run on the CPU, so the CUDA backend (its host
// code and its kernels) is tested where there is no GPU. Prepended to common.cuh and one kernel family;
// src/emu.rs compiles the result with the system C++ compiler into a shared library.
//
// A block runs on one OS thread, each CUDA thread a coroutine with its own stack (a small register switch on
// x86-64, ucontext elsewhere); a thread runs
// until it reaches __syncthreads (all live threads of the block), a warp shuffle (all live lanes of its warp)
// or its end. Blocks run one after another, so `__shared__` variables can simply be statics. Exited threads
// leave barriers, as on the GPU. Dynamic shared memory is filled with NaN bytes before each block, so reading
// what was never written shows up as a failure.

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#define HERD_EMU 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(x)
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
};
struct float4 {
    float x, y, z, w;
};
struct uint4 {
    unsigned x, y, z, w;
};
struct uint2 {
    unsigned x, y;
};

#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores the stack pointer in *from, switches to `to`.
extern "C" __attribute__((visibility("hidden"))) void herd_emu_switch(void** from, void* to);
asm(R"(
.text
.globl herd_emu_switch
.hidden herd_emu_switch
.type herd_emu_switch,@function
herd_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
)");
#define HERD_EMU_FAST_SWITCH 1
#endif

namespace emu {
enum State { READY, AT_BLOCK, AT_WARP, DONE };
struct Thread {
#ifdef HERD_EMU_FAST_SWITCH
    void* sp;
#else
    ucontext_t ctx;
#endif
    State state;
};
inline dim3 grid, block, bidx, tidx;
#ifdef HERD_EMU_FAST_SWITCH
inline void* main_sp;
#else
inline ucontext_t main_ctx;
#endif
inline Thread* threads = nullptr;
inline char* stacks = nullptr;
inline unsigned cur = 0;
inline unsigned char* smem = nullptr;
inline size_t smem_cap = 0;
inline unsigned warpbuf[32][32];
inline void (*body)(void**) = nullptr;
inline void** body_args = nullptr;
constexpr size_t STACK = 128 << 10;
constexpr unsigned MAX_THREADS = 1024;

inline void* dyn_smem() { return smem; }

inline void yield(State s) {
    threads[cur].state = s;
#ifdef HERD_EMU_FAST_SWITCH
    herd_emu_switch(&threads[cur].sp, main_sp);
#else
    swapcontext(&threads[cur].ctx, &main_ctx);
#endif
}

inline void entry() {
    body(body_args);
    threads[cur].state = DONE;
#ifdef HERD_EMU_FAST_SWITCH
    herd_emu_switch(&threads[cur].sp, main_sp); // never resumed
    __builtin_trap();
#endif
}

inline void resume(unsigned t) {
#ifdef HERD_EMU_FAST_SWITCH
    herd_emu_switch(&main_sp, threads[t].sp);
#else
    swapcontext(&main_ctx, &threads[t].ctx);
#endif
}

// Runs one block to completion; returns false on a barrier that can never be passed.
inline bool run_block(unsigned n) {
    for (unsigned t = 0; t < n; t++) {
#ifdef HERD_EMU_FAST_SWITCH
        // A fresh stack that "returns" into entry(): six zeroed callee-saved registers, then the return
        // address, 16-byte aligned as a call would leave it.
        char* top = stacks + (size_t)(t + 1) * STACK;
        void** sp = (void**)(top - 64);
        sp[6] = (void*)&entry;
        sp[7] = nullptr;
        for (int i = 0; i < 6; i++) sp[i] = nullptr;
        threads[t].sp = sp;
#else
        getcontext(&threads[t].ctx);
        threads[t].ctx.uc_stack.ss_sp = stacks + (size_t)t * STACK;
        threads[t].ctx.uc_stack.ss_size = STACK;
        threads[t].ctx.uc_link = &main_ctx;
        makecontext(&threads[t].ctx, entry, 0);
#endif
        threads[t].state = READY;
    }
    unsigned alive = n;
    while (alive > 0) {
        bool ran = false;
        for (unsigned t = 0; t < n; t++) {
            if (threads[t].state != READY) continue;
            cur = t;
            tidx = dim3{t, 0, 0};
            resume(t);
            ran = true;
            if (threads[t].state == DONE) alive--;
        }
        if (alive == 0) break;
        bool released = false;
        for (unsigned w = 0; w * 32 < n; w++) {
            unsigned at = 0, live = 0;
            for (unsigned t = w * 32; t < n && t < w * 32 + 32; t++) {
                if (threads[t].state != DONE) live++;
                if (threads[t].state == AT_WARP) at++;
            }
            if (live > 0 && at == live) {
                for (unsigned t = w * 32; t < n && t < w * 32 + 32; t++)
                    if (threads[t].state == AT_WARP) threads[t].state = READY;
                released = true;
            }
        }
        if (!released) {
            unsigned at = 0;
            for (unsigned t = 0; t < n; t++) at += threads[t].state == AT_BLOCK;
            if (at == alive) {
                for (unsigned t = 0; t < n; t++)
                    if (threads[t].state == AT_BLOCK) threads[t].state = READY;
                released = true;
            }
        }
        if (!released && !ran) return false;
    }
    return true;
}

// 0: done; 1: block too large; 2: a barrier that live threads never all reach (a kernel bug).
inline int run_grid(void (*fn)(void**), void** args, dim3 g, dim3 b, size_t dyn) {
    if (b.x == 0 || b.x > MAX_THREADS || b.y != 1 || b.z != 1) return 1;
    if (!threads) {
        threads = (Thread*)calloc(MAX_THREADS, sizeof(Thread));
        stacks = (char*)malloc(STACK * MAX_THREADS);
    }
    if (dyn > smem_cap) {
        free(smem);
        smem = (unsigned char*)malloc(dyn);
        smem_cap = dyn;
    }
    grid = g;
    block = b;
    body = fn;
    body_args = args;
    for (unsigned z = 0; z < g.z; z++)
        for (unsigned y = 0; y < g.y; y++)
            for (unsigned x = 0; x < g.x; x++) {
                bidx = dim3{x, y, z};
                if (dyn) memset(smem, 0xff, dyn);
                if (!run_block(b.x)) return 2;
            }
    return 0;
}
} // namespace emu

#define threadIdx (emu::tidx)
#define blockIdx (emu::bidx)
#define blockDim (emu::block)
#define gridDim (emu::grid)

inline void __syncthreads() { emu::yield(emu::AT_BLOCK); }

template <class T> inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    static_assert(sizeof(T) == 4, "32-bit shuffles only");
    const unsigned w = emu::cur >> 5, l = emu::cur & 31;
    memcpy(&emu::warpbuf[w][l], &v, 4);
    emu::yield(emu::AT_WARP);
    T r;
    memcpy(&r, &emu::warpbuf[w][l ^ (unsigned)lane_mask], 4);
    emu::yield(emu::AT_WARP);
    return r;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, lane by lane as the PTX ISA lays the fragments out:
// groupID g = lane / 4, t = lane % 4; A regs {row g, k 2t..}, {row g+8, k 2t..}, {row g, k 2t+8..},
// {row g+8, k 2t+8..}; B regs {k 2t, 2t+1; n g}, {k 2t+8, 2t+9; n g}; C {row g, n 2t, 2t+1}, {row g+8, ...}.
namespace emu {
inline unsigned mma_a[32][32][4];
inline unsigned mma_b[32][32][2];
inline float bf16_bits(unsigned h) {
    unsigned u = h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
} // namespace emu
inline void herd_emu_mma_bf16(float* c, const unsigned* a, const unsigned* b) {
    const unsigned w = emu::cur >> 5, l = emu::cur & 31;
    memcpy(emu::mma_a[w][l], a, 16);
    memcpy(emu::mma_b[w][l], b, 8);
    emu::yield(emu::AT_WARP);
    const unsigned g = l >> 2, t = l & 3;
    float out[4];
    for (unsigned i = 0; i < 4; i++) {
        const unsigned row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        float s = 0.0f;
        for (unsigned kk = 0; kk < 16; kk++) {
            unsigned av = emu::mma_a[w][(row % 8) * 4 + (kk % 8) / 2][(row >= 8 ? 1 : 0) + (kk >= 8 ? 2 : 0)];
            unsigned bv = emu::mma_b[w][col * 4 + (kk % 8) / 2][kk >= 8 ? 1 : 0];
            s += emu::bf16_bits((kk & 1) ? av >> 16 : av & 0xffff) * emu::bf16_bits((kk & 1) ? bv >> 16 : bv & 0xffff);
        }
        out[i] = s;
    }
    emu::yield(emu::AT_WARP);
    for (int i = 0; i < 4; i++) c[i] += out[i];
}

// One OS thread runs the block and threads switch only at barriers: updates are atomic by construction.
inline unsigned atomicAdd(unsigned* p, unsigned v) {
    unsigned old = *p;
    *p = old + v;
    return old;
}

template <class T> inline T __ldg(const T* p) { return *p; }
inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline float __fmul_rn(float a, float b) { return a * b; }
template <class T> inline T min(T a, T b) { return a < b ? a : b; }
template <class T> inline T max(T a, T b) { return a > b ? a : b; }
