#include "fiber.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vector>

#include "api.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#error "tests/cuda_harness: the context switch is written for x86-64 (System V); port fiber.cpp"
#endif

// koala_harness_swap_context(save, load): pushes the callee-saved
// registers and the MXCSR / x87 control words, stores rsp in *save, loads
// rsp = load and pops the same frame there. koala_harness_fiber_start is
// where a prepared stack "returns" to: it calls r13(r12).
__asm__(R"(
    .text
    .p2align 4
    .globl koala_harness_swap_context
    .hidden koala_harness_swap_context
    .type koala_harness_swap_context, @function
koala_harness_swap_context:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size koala_harness_swap_context, .-koala_harness_swap_context

    .p2align 4
    .globl koala_harness_fiber_start
    .hidden koala_harness_fiber_start
    .type koala_harness_fiber_start, @function
koala_harness_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size koala_harness_fiber_start, .-koala_harness_fiber_start
)");

extern "C" void koala_harness_swap_context(void **save, void *load);
extern "C" void koala_harness_fiber_start();

namespace koala_harness {

namespace {

size_t page_bytes() {
    static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    return page;
}

// Inaccessible memory below each stack: larger than any frame a kernel
// thread is likely to allocate, so an overflow cannot jump over it.
constexpr size_t kGuardBytes = 64 * 1024;

// Every stack ever mapped (for guard lookups) and the free ones (LIFO).
std::vector<Stack *> &all_stacks() {
    static std::vector<Stack *> &v = *new std::vector<Stack *>;
    return v;
}
std::vector<Stack *> &free_stacks() {
    static std::vector<Stack *> &v = *new std::vector<Stack *>;
    return v;
}

// The context a fresh fiber was switched from: its stack bounds are
// learned from ASan at the fiber's first instruction.
Context *g_switching_from = nullptr;

void asan_start(void **fake_stack_save, const Context &to) {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_start_switch_fiber(fake_stack_save, to.stack_bottom, to.stack_size);
#else
    (void)fake_stack_save;
    (void)to;
#endif
}

void asan_finish(void *fake_stack, Context *from) {
#if defined(__SANITIZE_ADDRESS__)
    const void *bottom = nullptr;
    size_t size = 0;
    __sanitizer_finish_switch_fiber(fake_stack, &bottom, &size);
    if (from && from->stack_size == 0) {
        from->stack_bottom = bottom;
        from->stack_size = size;
    }
#else
    (void)fake_stack;
    (void)from;
#endif
}

}  // namespace

Stack *acquire_stack() {
    std::vector<Stack *> &pool = free_stacks();
    if (!pool.empty()) {
        Stack *s = pool.back();
        pool.pop_back();
        if (s->dirty) {
#if defined(__SANITIZE_ADDRESS__)
            ASAN_UNPOISON_MEMORY_REGION(s->base, s->size);
#endif
            s->dirty = false;
        }
        return s;
    }
    const size_t page = page_bytes();
    const size_t size = (fiber_stack_bytes() + page - 1) / page * page;
    void *m = mmap(nullptr, size + kGuardBytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED || mprotect(m, kGuardBytes, PROT_NONE) != 0) {
        fprintf(stderr, "koala-harness: cannot map a %zu-byte fiber stack\n", size);
        abort();
    }
    Stack *s = new Stack{static_cast<char *>(m) + kGuardBytes, size, false};
    all_stacks().push_back(s);
    return s;
}

void release_stack(Stack *s) { free_stacks().push_back(s); }

bool in_stack_guard(const void *addr) {
    const char *a = static_cast<const char *>(addr);
    for (const Stack *s : all_stacks())
        if (a >= s->base - kGuardBytes && a < s->base) return true;
    return false;
}

void prepare_context(Context &ctx, Stack &stack, void (*entry)(void *), void *arg) {
    // The frame koala_harness_swap_context pops, lowest address first:
    // control words, r15, r14, r13, r12, rbx, rbp, return address. After
    // its `ret` the stack pointer is the 16-byte aligned top, as the ABI
    // wants before koala_harness_fiber_start's call.
    const uintptr_t top = reinterpret_cast<uintptr_t>(stack.base + stack.size) & ~uintptr_t(15);
    void **frame = reinterpret_cast<void **>(top) - 8;
    uint32_t csr[2] = {0, 0};
    __asm__ volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(csr[0]), "=m"(csr[1]));
    __builtin_memcpy(&frame[0], csr, sizeof csr);
    frame[1] = nullptr;                          // r15
    frame[2] = nullptr;                          // r14
    frame[3] = reinterpret_cast<void *>(entry);  // r13
    frame[4] = arg;                              // r12
    frame[5] = nullptr;                          // rbx
    frame[6] = nullptr;                          // rbp: ends frame-pointer unwinds
    frame[7] = reinterpret_cast<void *>(&koala_harness_fiber_start);
    ctx.sp = frame;
    ctx.stack_bottom = stack.base;
    ctx.stack_size = stack.size;
    ctx.asan_fake_stack = nullptr;
}

void switch_context(Context &from, Context &to) {
    g_switching_from = &from;
    asan_start(&from.asan_fake_stack, to);
    koala_harness_swap_context(&from.sp, to.sp);
    asan_finish(from.asan_fake_stack, nullptr);
}

void leave_context(Context &to) {
    void *discarded = nullptr;
    asan_start(nullptr, to);
    koala_harness_swap_context(&discarded, to.sp);
    __builtin_unreachable();
}

void fiber_started() { asan_finish(nullptr, g_switching_from); }

}  // namespace koala_harness
