// herd's CUDA emulator: the .cu kernels compiled as C++ and run on the CPU, so the CUDA backend (its host
// code and its kernels) is tested where there is no GPU. Prepended to common.cuh and one kernel family;
// src/emu/build.rs preprocesses the result, rewrites what C++ cannot express (static `__shared__` declarations,
// `__launch_bounds__`) and compiles it with the system C++ compiler into a shared library.
//
// A block runs on one OS thread, each CUDA thread a coroutine with its own stack (a small register switch on
// x86-64, ucontext elsewhere); a thread runs until it reaches __syncthreads (all live threads of the block),
// __syncwarp or a warp shuffle (all live lanes of its warp) or its end. Blocks run one after another. Exited
// threads leave barriers, as on the GPU. Shared memory, static and dynamic, is filled with NaN bytes before
// each block (on a GPU it holds whatever the previous block left), so reading what was never written shows up
// as a failure.
//
// Built with HERD_EMU_RACECHECK (and the compiler's thread-sanitizer instrumentation, but none of its
// runtime: the hooks below are the runtime), every load and store of a kernel is checked against the others
// of its launch: two threads touching the same byte, one of them writing, must be ordered by a __syncthreads,
// or by a __syncwarp when they are lanes of one warp. A warp shuffle exchanges values but orders no memory
// (as on Volta and later, where lanes are scheduled independently), and different blocks are never ordered.
// Code that relies on lanes running in lock-step, or on shuffles to publish stores, is reported as a race.

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
// Read by src/emu/build.rs from the preprocessed source (a launch's block size is checked against it), then removed.
#define __launch_bounds__(x) HERD_EMU_LAUNCH_BOUNDS(x)
// Rewritten by src/emu/build.rs into a static and a call of emu::shared_at.
#define __shared__ HERD_EMU_SHARED
#define __align__(n) __attribute__((aligned(n)))
// The emulator's own code is never checked for races (only the kernels' accesses are).
#define HERD_EMU_OWN __attribute__((no_sanitize_thread))

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
    // Barriers (__syncthreads) and warp barriers (__syncwarp) this thread has passed in its block.
    unsigned bars, warp_bars;
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
// Why the last launch failed, for src/emu/mod.rs.
inline char message[1024];

HERD_EMU_OWN inline void* dyn_smem() { return smem; }

// Static `__shared__` arrays: src/emu/build.rs follows each declaration with a call of `shared_at`, which records
// the array's bytes the first time; they are filled with NaN bytes then and before every later block.
struct Range {
    unsigned char* p;
    size_t n;
};
constexpr unsigned MAX_SHARED = 256;
inline Range shared[MAX_SHARED];
inline unsigned nshared = 0;
HERD_EMU_OWN inline void shared_at(void* p, size_t n) {
    for (unsigned i = 0; i < nshared; i++)
        if (shared[i].p == p) return;
    if (nshared < MAX_SHARED) shared[nshared++] = Range{(unsigned char*)p, n};
    memset(p, 0xff, n);
}
HERD_EMU_OWN inline void fill_shared(size_t dyn) {
    if (dyn) memset(smem, 0xff, dyn);
    for (unsigned i = 0; i < nshared; i++) memset(shared[i].p, 0xff, shared[i].n);
}

HERD_EMU_OWN inline void yield(State s) {
    threads[cur].state = s;
#ifdef HERD_EMU_FAST_SWITCH
    herd_emu_switch(&threads[cur].sp, main_sp);
#else
    swapcontext(&threads[cur].ctx, &main_ctx);
#endif
}

HERD_EMU_OWN inline void entry() {
    body(body_args);
    threads[cur].state = DONE;
#ifdef HERD_EMU_FAST_SWITCH
    herd_emu_switch(&threads[cur].sp, main_sp); // never resumed
    __builtin_trap();
#endif
}

HERD_EMU_OWN inline void resume(unsigned t) {
#ifdef HERD_EMU_FAST_SWITCH
    herd_emu_switch(&main_sp, threads[t].sp);
#else
    swapcontext(&main_ctx, &threads[t].ctx);
#endif
}

#ifdef HERD_EMU_RACECHECK
// The race check's shadow memory: for each byte of shared memory a kernel touched in this launch, and each
// byte of global memory it wrote, the last writer and the last reader. An open-addressed table keyed by
// address; entries of earlier launches count as empty. (So a global write after a read is caught only when
// the byte had been written before the read.)
struct Access {
    unsigned block; // linear block index + 1 (0: none)
    unsigned tid, bars, warp_bars;
};
struct Cell {
    unsigned long long addr;
    unsigned launch, owner; // owner: the block whose shared memory this byte was (shared bytes only)
    Access w, r;
};
inline Cell* table = nullptr;
inline size_t table_cap = 0, table_used = 0;
inline unsigned launch_no = 0;
inline unsigned block_no = 0; // linear index + 1 of the running block
inline bool checking = false, raced = false;

HERD_EMU_OWN inline bool is_shared(const unsigned char* a) {
    if (a >= smem && a < smem + smem_cap) return true;
    for (unsigned i = 0; i < nshared; i++)
        if (a >= shared[i].p && a < shared[i].p + shared[i].n) return true;
    return false;
}
HERD_EMU_OWN inline size_t slot(unsigned long long a, size_t cap) {
    unsigned long long h = a * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 20) & (cap - 1);
}
HERD_EMU_OWN inline void grow() {
    size_t cap = table_cap ? table_cap * 2 : (size_t)1 << 20;
    Cell* t = (Cell*)calloc(cap, sizeof(Cell));
    if (!t) abort();
    for (size_t i = 0; i < table_cap; i++) {
        if (table[i].launch != launch_no) continue;
        size_t j = slot(table[i].addr, cap);
        while (t[j].launch == launch_no) j = (j + 1) & (cap - 1);
        t[j] = table[i];
    }
    free(table);
    table = t;
    table_cap = cap;
}
// The byte's cell; a new one only when `add` (else null when there is none).
HERD_EMU_OWN inline Cell* cell(unsigned long long a, bool add) {
    if (2 * (table_used + 1) > table_cap) grow();
    size_t j = slot(a, table_cap);
    while (table[j].launch == launch_no) {
        if (table[j].addr == a) return &table[j];
        j = (j + 1) & (table_cap - 1);
    }
    if (!add) return nullptr;
    table_used++;
    table[j] = Cell{a, launch_no, 0, Access{}, Access{}};
    return &table[j];
}
// Whether `before` happens before `now` (an access of the running thread).
HERD_EMU_OWN inline bool ordered(const Access& before, const Access& now) {
    if (before.block != now.block) return false;
    if (before.tid == now.tid || now.bars > before.bars) return true;
    return (before.tid >> 5) == (now.tid >> 5) && now.warp_bars > before.warp_bars;
}
HERD_EMU_OWN inline void report(const char* what, const unsigned char* a, bool sh, const Access& x, const Access& y) {
    if (raced) return;
    raced = true;
    snprintf(message, sizeof message,
             "data race (%s) on %s memory at %p: thread %u of block %u, then thread %u of block %u, with no "
             "__syncthreads%s between them",
             what, sh ? "shared" : "global", (const void*)a, x.tid, x.block - 1, y.tid, y.block - 1,
             x.block == y.block && (x.tid >> 5) == (y.tid >> 5) ? " or __syncwarp (a shuffle orders no memory)" : "");
}
HERD_EMU_OWN inline void access(const void* p, size_t n, bool write) {
    const unsigned char* a = (const unsigned char*)p;
    if (!checking || raced) return;
    if (a >= (const unsigned char*)stacks && a < (const unsigned char*)stacks + STACK * MAX_THREADS) return;
    const Thread& t = threads[cur];
    const Access now{block_no, cur, t.bars, t.warp_bars};
    const bool sh = is_shared(a);
    for (size_t i = 0; i < n; i++) {
        // Global bytes are tracked from their first write on (a kernel reads megabytes of weights that nothing
        // writes): a read of global memory before any write to it in the launch is not recorded.
        Cell* cp = cell((unsigned long long)(a + i), write || sh);
        if (!cp) continue;
        Cell& c = *cp;
        if (sh && c.owner != block_no) {
            c.owner = block_no;
            c.w = Access{};
            c.r = Access{};
        }
        if (c.w.block && !ordered(c.w, now)) report(write ? "write after write" : "read after write", a + i, sh, c.w, now);
        if (write) {
            if (c.r.block && !ordered(c.r, now)) report("write after read", a + i, sh, c.r, now);
            c.w = now;
            c.r = Access{};
        } else {
            c.r = now;
        }
    }
}
#endif

// Runs one block to completion; returns false on a barrier that can never be passed.
HERD_EMU_OWN inline bool run_block(unsigned n) {
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
        threads[t].bars = 0;
        threads[t].warp_bars = 0;
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

// 0: done; 1: block too large; 2: a barrier that live threads never all reach (a kernel bug); 5: a data race
// (the race check only; `message` says where).
HERD_EMU_OWN inline int run_grid(void (*fn)(void**), void** args, dim3 g, dim3 b, size_t dyn) {
    message[0] = 0;
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
#ifdef HERD_EMU_RACECHECK
    launch_no++;
    table_used = 0;
    raced = false;
    checking = true;
#endif
    int rc = 0;
    for (unsigned z = 0; z < g.z && !rc; z++)
        for (unsigned y = 0; y < g.y && !rc; y++)
            for (unsigned x = 0; x < g.x && !rc; x++) {
                bidx = dim3{x, y, z};
                fill_shared(dyn);
#ifdef HERD_EMU_RACECHECK
                block_no = 1 + x + g.x * (y + g.y * z);
#endif
                if (!run_block(b.x)) rc = 2;
#ifdef HERD_EMU_RACECHECK
                else if (raced) rc = 5;
#endif
            }
#ifdef HERD_EMU_RACECHECK
    checking = false;
#endif
    return rc;
}
} // namespace emu

#ifdef HERD_EMU_RACECHECK
// The hooks the thread-sanitizer instrumentation calls (this is its whole runtime here).
extern "C" {
HERD_EMU_OWN void __tsan_init() {}
HERD_EMU_OWN void __tsan_func_entry(void*) {}
HERD_EMU_OWN void __tsan_func_exit() {}
#define HERD_EMU_HOOKS(N)                                                                                     \
    HERD_EMU_OWN void __tsan_read##N(void* p) { emu::access(p, N, false); }                                     \
    HERD_EMU_OWN void __tsan_write##N(void* p) { emu::access(p, N, true); }                                     \
    HERD_EMU_OWN void __tsan_unaligned_read##N(void* p) { emu::access(p, N, false); }                           \
    HERD_EMU_OWN void __tsan_unaligned_write##N(void* p) { emu::access(p, N, true); }
HERD_EMU_HOOKS(1)
HERD_EMU_HOOKS(2)
HERD_EMU_HOOKS(4)
HERD_EMU_HOOKS(8)
HERD_EMU_HOOKS(16)
HERD_EMU_OWN void __tsan_read_range(void* p, unsigned long n) { emu::access(p, n, false); }
HERD_EMU_OWN void __tsan_write_range(void* p, unsigned long n) { emu::access(p, n, true); }
}
#endif

#define threadIdx (emu::tidx)
#define blockIdx (emu::bidx)
#define blockDim (emu::block)
#define gridDim (emu::grid)

HERD_EMU_OWN inline void __syncthreads() {
    emu::yield(emu::AT_BLOCK);
    emu::threads[emu::cur].bars++;
}

// Waits for the live lanes of the warp, and orders their memory accesses (unlike a shuffle).
HERD_EMU_OWN inline void __syncwarp(unsigned = 0xffffffffu) {
    emu::yield(emu::AT_WARP);
    emu::threads[emu::cur].warp_bars++;
}

// Leading zero bits of a 32-bit integer (32 for zero), as the CUDA intrinsic.
HERD_EMU_OWN inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }

template <class T> HERD_EMU_OWN inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
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
HERD_EMU_OWN inline float bf16_bits(unsigned h) {
    unsigned u = h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
} // namespace emu
HERD_EMU_OWN inline void herd_emu_mma_bf16(float* c, const unsigned* a, const unsigned* b) {
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
HERD_EMU_OWN inline unsigned atomicAdd(unsigned* p, unsigned v) {
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
