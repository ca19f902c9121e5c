// Stream work and where it goes. Every stream operation (kernel, copy,
// memset, event record) becomes a Work item. Outside capture it joins ONE
// process-wide queue in issue order and runs only at the next
// synchronising call (cudaStreamSynchronize, cudaDeviceSynchronize,
// cudaEventSynchronize/Query, cudaStreamQuery, cudaMemcpy, cudaFree...):
// the latest moment a GPU could run it, so a missing synchronisation shows
// up as stale data. Running all queued work at any synchronisation is a
// legal schedule: issue order respects every stream order and every event
// dependency. Inside a capture the item becomes a graph node instead.
#pragma once
#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <vector>

namespace koala_harness {

class Work {
public:
    explicit Work(int device) : device_(device) {}
    virtual ~Work() = default;
    int device() const { return device_; }
    virtual cudaGraphNodeType node_type() const = 0;
    // Runs the item; a fault sets the device's sticky error.
    virtual void execute() = 0;
    // Whether the item may become a graph node; *why says why not.
    virtual bool capturable(std::string *why) const = 0;

private:
    int device_;
};

struct Capture;

}  // namespace koala_harness

struct CUstream_st {
    int device;
    unsigned flags;
    bool legacy;                      // the NULL stream of `device`
    koala_harness::Capture *capture;  // active capture, or nullptr
};

struct CUgraphNode_st {
    std::shared_ptr<koala_harness::Work> work;
};

struct CUgraph_st {
    std::vector<std::unique_ptr<CUgraphNode_st>> nodes;
    bool capturing;  // still being captured into
};

namespace koala_harness {

struct Capture {
    CUstream_st *stream;
    cudaStreamCaptureMode mode;
    long thread;  // the OS thread that began it
    unsigned long long id;
    CUgraph_st *graph;
    bool invalidated;
    std::string why;  // what invalidated it
};

// The stream a handle names (NULL / cudaStreamLegacy: the current device's
// legacy stream); nullptr with *e set for a dead or foreign handle.
CUstream_st *resolve_stream(cudaStream_t s, cudaError_t *e);
// Queues w on s, or appends it to s's capture.
cudaError_t submit(CUstream_st *s, std::shared_ptr<Work> w);
// Runs every queued item, in issue order.
void drain();
// Drops the queued work, streams and events of `device`.
void reset_device_work(int device);
// Events recorded into capture c stop referring to it (it ended).
void forget_capture(const Capture *c);

// Capture rules (capture.cpp). Each returns cudaSuccess or the error CUDA
// returns; an error also invalidates the captures involved and is
// reported as a violation.
//   a potentially unsafe call (cudaMalloc, cudaFree, cudaMemcpy, ...),
//   judged by this thread's capture mode;
cudaError_t check_unsafe_call(const char *call);
//   work on the legacy stream while a blocking stream captures;
cudaError_t check_legacy_stream(int device, const char *call);
//   synchronising or querying a capturing stream;
cudaError_t check_not_capturing(CUstream_st *s, const char *call);
//   device-wide synchronisation while any capture of the device is active.
cudaError_t check_no_capture_on(int device, const char *call);
// Invalidates c; the first reason is kept.
void invalidate(Capture &c, const std::string &why);
// Ends (and forgets) every capture of `device` (cudaDeviceReset).
void end_captures_of(int device);

}  // namespace koala_harness
