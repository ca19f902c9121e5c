// Fibers: the machine contexts the CUDA threads of a block run on. A
// context switch saves the callee-saved registers (and the SSE/x87 control
// words) on the running stack and loads another stack pointer: no system
// call, so a barrier costs a few nanoseconds per thread. AddressSanitizer
// is told about every switch (__sanitizer_start/finish_switch_fiber), so
// ASan builds see each fiber's stack as a stack.
#pragma once
#include <stddef.h>

namespace koala_harness {

struct Context {
    void *sp = nullptr;  // saved stack pointer of a suspended context
    const void *stack_bottom = nullptr;
    size_t stack_size = 0;  // 0: not known yet (a thread's own stack)
    void *asan_fake_stack = nullptr;
};

// A fiber stack with an inaccessible guard region below it: a kernel thread
// that overflows its stack faults instead of overwriting another one.
struct Stack {
    char *base;  // lowest usable byte
    size_t size;
    bool dirty;  // left mid-call (a fault): its ASan frame poisoning is stale
};

// From a LIFO pool, so threads that finish without waiting reuse one hot
// stack; released stacks stay mapped for the next block.
Stack *acquire_stack();
void release_stack(Stack *s);
// Whether addr is in the guard region of a fiber stack (a stack overflow).
bool in_stack_guard(const void *addr);

// Makes `ctx` start entry(arg) on `stack` when it is switched to.
void prepare_context(Context &ctx, Stack &stack, void (*entry)(void *), void *arg);
// Suspends the running context into `from` and continues `to`; returns
// when something switches back to `from`.
void switch_context(Context &from, Context &to);
// Leaves the running context for good (finished or abandoned) for `to`.
[[noreturn]] void leave_context(Context &to);
// First thing a fiber's entry must call.
void fiber_started();

}  // namespace koala_harness
