// koala_harness::launch, what KOALA_LAUNCH (cuda/launch.h) expands to
// outside nvcc:
//
//   koala_harness::launch(name, grid, block, shmem, stream, kernel)(args...)
//
// converts the arguments to the kernel's parameter types and copies them
// by value at the launch, as a real launch does (so a graph captured now
// replays these values), then hands the call to the runtime, which queues
// or captures it like any stream operation.
#pragma once
#include <stddef.h>

#include <memory>
#include <tuple>
#include <utility>

#include "device_api.h"
#include "runtime_api.h"

namespace koala_harness {

// Kernel parameter space of CUDA 12.1+ drivers; nvcc rejects more.
constexpr size_t kMaxParamBytes = 32764;

// One launch's kernel and arguments: run_thread() executes one CUDA thread
// (the scheduler has set the builtins).
class KOALA_HARNESS_API KernelCall {
public:
    virtual ~KernelCall();
    virtual void run_thread() const = 0;
};

struct LaunchSite {
    const char *kernel;  // the kernel expression as written at the launch
    const char *file;
    int line;
};

// Queues (or captures) one launch; errors are reported through
// cudaGetLastError of the calling runtime instance, as with <<< >>>.
KOALA_HARNESS_API void submit_launch(const void *instance, const LaunchSite &site, dim3 grid,
                                     dim3 block, size_t shmem, cudaStream_t stream,
                                     const void *kernel,
                                     std::shared_ptr<const KernelCall> kernel_call);

template <class... P>
constexpr size_t param_bytes() {
    size_t offset = 0;
    const size_t sizes[] = {sizeof(P)..., 0};
    const size_t aligns[] = {alignof(P)..., 1};
    for (size_t i = 0; i < sizeof...(P); ++i)
        offset = (offset + aligns[i] - 1) / aligns[i] * aligns[i] + sizes[i];
    return offset;
}

template <class... P>
class KernelCallOf final : public KernelCall {
public:
    template <class... A>
    KernelCallOf(void (*kernel)(P...), A &&...args)
        : kernel_(kernel), args_(std::forward<A>(args)...) {}
    void run_thread() const override { std::apply(kernel_, args_); }

private:
    void (*kernel_)(P...);
    std::tuple<P...> args_;
};

template <class... P>
class Launcher {
public:
    Launcher(const LaunchSite &site, dim3 grid, dim3 block, size_t shmem, cudaStream_t stream,
             void (*kernel)(P...))
        : site_(site),
          grid_(grid),
          block_(block),
          shmem_(shmem),
          stream_(stream),
          kernel_(kernel) {}

    template <class... A>
    void operator()(A &&...args) const {
        static_assert(sizeof...(A) == sizeof...(P), "wrong number of kernel arguments");
        static_assert(param_bytes<P...>() <= kMaxParamBytes,
                      "kernel parameters exceed the 32764 bytes CUDA allows");
        submit_launch(
            &koala_harness_instance, site_, grid_, block_, shmem_, stream_,
            reinterpret_cast<const void *>(kernel_),
            std::make_shared<const KernelCallOf<P...>>(kernel_, std::forward<A>(args)...));
    }

private:
    LaunchSite site_;
    dim3 grid_, block_;
    size_t shmem_;
    cudaStream_t stream_;
    void (*kernel_)(P...);
};

template <class... P>
Launcher<P...> launch(const char *name, dim3 grid, dim3 block, size_t shmem, cudaStream_t stream,
                      void (*kernel)(P...), const char *file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
    return Launcher<P...>(LaunchSite{name, file, line}, grid, block, shmem, stream, kernel);
}

}  // namespace koala_harness
