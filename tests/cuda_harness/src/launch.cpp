// Kernel launches: checked like a <<< >>> launch when issued, queued (or
// captured) like any stream work, run by the block scheduler when the
// queue drains.
#include "block.h"

#include "api.h"
#include "work.h"

namespace koala_harness {

KernelCall::~KernelCall() = default;

namespace {

class KernelWork final : public Work {
public:
    KernelWork(int device, const LaunchSite &site, dim3 grid, dim3 block,
               std::shared_ptr<const KernelCall> call)
        : Work(device), site_(site), grid_(grid), block_(block), call_(std::move(call)) {}
    cudaGraphNodeType node_type() const override { return cudaGraphNodeTypeKernel; }
    bool capturable(std::string *) const override { return true; }
    void execute() override {
        std::string why;
        const cudaError_t e = run_grid(site_, grid_, block_, *call_, &why);
        if (e == cudaSuccess) return;
        violation("%s", why.c_str());
        set_sticky_error(device(), e);
    }

private:
    LaunchSite site_;
    dim3 grid_, block_;
    std::shared_ptr<const KernelCall> call_;
};

bool valid_config(dim3 grid, dim3 block) {
    const unsigned long long threads = static_cast<unsigned long long>(block.x) * block.y * block.z;
    return grid.x >= 1 && grid.x <= 0x7fffffffu && grid.y >= 1 && grid.y <= 65535 && grid.z >= 1 &&
           grid.z <= 65535 && block.x >= 1 && block.x <= 1024 && block.y >= 1 && block.y <= 1024 &&
           block.z >= 1 && block.z <= 64 && threads <= 1024;
}

}  // namespace

void submit_launch(const void *instance, const LaunchSite &site, dim3 grid, dim3 block,
                   size_t shmem, cudaStream_t stream, const void *kernel,
                   std::shared_ptr<const KernelCall> kernel_call) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) {
        call.done(e);
        return;
    }
    if (!kernel) {
        call.done(cudaErrorInvalidDeviceFunction);
        return;
    }
    if (!valid_config(grid, block)) {
        call.done(cudaErrorInvalidConfiguration);
        return;
    }
    if (shmem != 0) {
        violation(
            "launch of %s at %s:%d asks for %zu bytes of dynamic shared memory: the harness "
            "has none (extern __shared__ is not modelled)",
            site.kernel, site.file, site.line, shmem);
        call.done(cudaErrorNotSupported);
        return;
    }
    CUstream_st *s = resolve_stream(stream, &e);
    if (!s) {
        call.done(e);
        return;
    }
    if (s->device != current_device()) {  // a stream of another device
        call.done(cudaErrorInvalidResourceHandle);
        return;
    }
    call.done(submit(
        s, std::make_shared<KernelWork>(s->device, site, grid, block, std::move(kernel_call))));
}

}  // namespace koala_harness
