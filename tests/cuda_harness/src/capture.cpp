// Stream capture and graphs.
//
// A capture records the work issued to one stream as a chain of graph
// nodes; a kernel node keeps the arguments copied at its launch, so a
// replay runs exactly what was captured. What CUDA forbids during a
// capture is an error here too, and it invalidates the capture
// (cudaStreamEndCapture then fails with cudaErrorStreamCaptureInvalidated):
//   - potentially unsafe calls (cudaMalloc*, cudaFree*, cudaMemcpy,
//     cudaDeviceSynchronize), judged by the calling thread's mode
//     (cudaThreadExchangeStreamCaptureMode) as CUDA documents: global mode
//     is prohibited while this thread has a non-relaxed capture or any
//     thread has a global one; thread-local mode only by its own
//     non-relaxed captures; relaxed mode never;
//   - synchronising or querying the capturing stream;
//   - legacy-stream work while a blocking stream captures;
//   - copies to or from pageable host memory (a graph would read the
//     buffer at replay time).
// cudaDeviceSynchronize during any capture of its device is treated as a
// conflict in every mode (it would wait for the capturing stream).
#include <sys/syscall.h>
#include <unistd.h>

#include <set>
#include <vector>

#include "api.h"
#include "work.h"

struct CUgraphExec_st {
    int device;
    std::vector<std::shared_ptr<koala_harness::Work>> work;
};

namespace koala_harness {

namespace {

std::vector<Capture *> &captures() {
    static std::vector<Capture *> &c = *new std::vector<Capture *>;
    return c;
}
std::set<CUgraph_st *> &graphs() {
    static std::set<CUgraph_st *> &g = *new std::set<CUgraph_st *>;
    return g;
}
std::set<CUgraphExec_st *> &execs() {
    static std::set<CUgraphExec_st *> &e = *new std::set<CUgraphExec_st *>;
    return e;
}

thread_local cudaStreamCaptureMode t_mode = cudaStreamCaptureModeGlobal;
unsigned long long g_capture_id = 0;

long this_thread() { return syscall(SYS_gettid); }

const char *mode_name(cudaStreamCaptureMode m) {
    switch (m) {
    case cudaStreamCaptureModeGlobal: return "global";
    case cudaStreamCaptureModeThreadLocal: return "thread-local";
    default: return "relaxed";
    }
}

CUgraph_st *live_graph(cudaGraph_t g, const char *call) {
    if (graphs().count(g)) return g;
    violation("%s(%p): not a live graph", call, static_cast<void *>(g));
    return nullptr;
}

cudaError_t capture_info(cudaStream_t stream, cudaStreamCaptureStatus *status,
                         unsigned long long *id_out, cudaGraph_t *graph_out,
                         const cudaGraphNode_t **dependencies_out,
                         const cudaGraphEdgeData **edge_data_out, size_t *n_dependencies_out) {
    cudaError_t e = usable();
    if (e != cudaSuccess) return e;
    if (!status || (edge_data_out && !dependencies_out)) return cudaErrorInvalidValue;
    CUstream_st *s = resolve_stream(stream, &e);
    if (!s) return e;
    if (s->legacy) {
        for (Capture *c : captures())
            if (c->stream->device == s->device && !(c->stream->flags & cudaStreamNonBlocking))
                return cudaErrorStreamCaptureImplicit;
        *status = cudaStreamCaptureStatusNone;
        return cudaSuccess;
    }
    Capture *c = s->capture;
    *status = !c               ? cudaStreamCaptureStatusNone
              : c->invalidated ? cudaStreamCaptureStatusInvalidated
                               : cudaStreamCaptureStatusActive;
    if (!c || c->invalidated) return cudaSuccess;
    // The next node depends on the last one (a capture is a chain).
    static thread_local cudaGraphNode_t last;
    static const cudaGraphEdgeData no_edge_data[1] = {};
    const std::vector<std::unique_ptr<CUgraphNode_st>> &nodes = c->graph->nodes;
    last = nodes.empty() ? nullptr : nodes.back().get();
    if (id_out) *id_out = c->id;
    if (graph_out) *graph_out = c->graph;
    if (dependencies_out) *dependencies_out = nodes.empty() ? nullptr : &last;
    if (edge_data_out) *edge_data_out = nodes.empty() ? nullptr : no_edge_data;
    if (n_dependencies_out) *n_dependencies_out = nodes.empty() ? 0 : 1;
    return cudaSuccess;
}

void end_capture(Capture *c) {
    c->stream->capture = nullptr;
    forget_capture(c);
    for (auto it = captures().begin(); it != captures().end(); ++it)
        if (*it == c) {
            captures().erase(it);
            break;
        }
    delete c;
}

}  // namespace

void invalidate(Capture &c, const std::string &why) {
    if (c.invalidated) return;
    c.invalidated = true;
    c.why = why;
}

cudaError_t check_unsafe_call(const char *call) {
    if (t_mode == cudaStreamCaptureModeRelaxed) return cudaSuccess;
    const long me = this_thread();
    cudaError_t e = cudaSuccess;
    for (Capture *c : captures()) {
        const bool own = c->thread == me && c->mode != cudaStreamCaptureModeRelaxed;
        const bool global = c->thread != me && c->mode == cudaStreamCaptureModeGlobal &&
                            t_mode == cudaStreamCaptureModeGlobal;
        if (!own && !global) continue;
        violation(
            "%s while stream %p is capturing (%s mode, begun by thread %ld; this thread's "
            "mode is %s): CUDA prohibits this potentially unsafe call and invalidates the "
            "capture",
            call, static_cast<void *>(c->stream), mode_name(c->mode), c->thread, mode_name(t_mode));
        invalidate(*c, std::string(call) + " during the capture");
        e = cudaErrorStreamCaptureUnsupported;
    }
    return e;
}

cudaError_t check_legacy_stream(int device, const char *call) {
    cudaError_t e = cudaSuccess;
    for (Capture *c : captures()) {
        if (c->stream->device != device || (c->stream->flags & cudaStreamNonBlocking)) continue;
        violation(
            "%s while blocking stream %p is capturing: the legacy stream would depend on "
            "it",
            call, static_cast<void *>(c->stream));
        invalidate(*c, std::string(call) + " on the legacy stream");
        e = cudaErrorStreamCaptureImplicit;
    }
    return e;
}

cudaError_t check_not_capturing(CUstream_st *s, const char *call) {
    if (!s->capture) return cudaSuccess;
    violation("%s on stream %p while it is capturing", call, static_cast<void *>(s));
    invalidate(*s->capture, std::string(call) + " on the capturing stream");
    return cudaErrorStreamCaptureUnsupported;
}

cudaError_t check_no_capture_on(int device, const char *call) {
    cudaError_t e = cudaSuccess;
    for (Capture *c : captures()) {
        if (c->stream->device != device) continue;
        violation("%s while stream %p of the device is capturing", call,
                  static_cast<void *>(c->stream));
        invalidate(*c, std::string(call) + " during the capture");
        e = cudaErrorStreamCaptureUnsupported;
    }
    return e;
}

void end_captures_of(int device) {
    std::vector<Capture *> mine;
    for (Capture *c : captures())
        if (c->stream->device == device) mine.push_back(c);
    for (Capture *c : mine) {
        graphs().erase(c->graph);
        delete c->graph;
        end_capture(c);
    }
}

}  // namespace koala_harness

using namespace koala_harness;

extern "C" {

cudaError_t koala_harness_cudaStreamBeginCapture(const void *instance, cudaStream_t stream,
                                                 enum cudaStreamCaptureMode mode) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (mode < cudaStreamCaptureModeGlobal || mode > cudaStreamCaptureModeRelaxed)
        return call.done(cudaErrorInvalidValue);
    CUstream_st *s = resolve_stream(stream, &e);
    if (!s) return call.done(e);
    if (s->legacy || s->capture) return call.done(cudaErrorStreamCaptureUnsupported);
    CUgraph_st *g = new CUgraph_st{{}, true};
    graphs().insert(g);
    Capture *c = new Capture{s, mode, this_thread(), ++g_capture_id, g, false, {}};
    captures().push_back(c);
    s->capture = c;
    return cudaSuccess;
}

cudaError_t koala_harness_cudaStreamEndCapture(const void *instance, cudaStream_t stream,
                                               cudaGraph_t *pGraph) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (!pGraph) return call.done(cudaErrorInvalidValue);
    CUstream_st *s = resolve_stream(stream, &e);
    if (!s) return call.done(e);
    Capture *c = s->capture;
    if (!c) return call.done(cudaErrorStreamCaptureUnmatched);
    if (c->mode != cudaStreamCaptureModeRelaxed && c->thread != this_thread())
        return call.done(cudaErrorStreamCaptureWrongThread);
    CUgraph_st *g = c->graph;
    const bool invalid = c->invalidated;
    end_capture(c);
    if (invalid) {
        graphs().erase(g);
        delete g;
        *pGraph = nullptr;
        return call.done(cudaErrorStreamCaptureInvalidated);
    }
    g->capturing = false;
    *pGraph = g;
    return cudaSuccess;
}

cudaError_t koala_harness_cudaStreamGetCaptureInfo(
    const void *instance, cudaStream_t stream, enum cudaStreamCaptureStatus *captureStatus_out,
    unsigned long long *id_out, cudaGraph_t *graph_out, const cudaGraphNode_t **dependencies_out,
    const cudaGraphEdgeData **edgeData_out, size_t *numDependencies_out) {
    KOALA_HARNESS_CALL();
    return call.done(capture_info(stream, captureStatus_out, id_out, graph_out, dependencies_out,
                                  edgeData_out, numDependencies_out));
}

cudaError_t koala_harness_cudaStreamIsCapturing(const void *instance, cudaStream_t stream,
                                                enum cudaStreamCaptureStatus *pCaptureStatus) {
    KOALA_HARNESS_CALL();
    return call.done(
        capture_info(stream, pCaptureStatus, nullptr, nullptr, nullptr, nullptr, nullptr));
}

cudaError_t koala_harness_cudaThreadExchangeStreamCaptureMode(const void *instance,
                                                              enum cudaStreamCaptureMode *mode) {
    KOALA_HARNESS_CALL();
    if (!mode || *mode < cudaStreamCaptureModeGlobal || *mode > cudaStreamCaptureModeRelaxed)
        return call.done(cudaErrorInvalidValue);
    const cudaStreamCaptureMode previous = t_mode;
    t_mode = *mode;
    *mode = previous;
    return cudaSuccess;
}

cudaError_t koala_harness_cudaGraphGetNodes(const void *instance, cudaGraph_t graph,
                                            cudaGraphNode_t *nodes, size_t *numNodes) {
    KOALA_HARNESS_CALL();
    const cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    CUgraph_st *g = live_graph(graph, "cudaGraphGetNodes");
    if (!g) return call.done(cudaErrorInvalidResourceHandle);
    if (!numNodes) return call.done(cudaErrorInvalidValue);
    const size_t count = g->nodes.size();
    if (nodes)
        for (size_t i = 0; i < *numNodes; ++i) nodes[i] = i < count ? g->nodes[i].get() : nullptr;
    *numNodes = count;
    return cudaSuccess;
}

cudaError_t koala_harness_cudaGraphNodeGetType(const void *instance, cudaGraphNode_t node,
                                               enum cudaGraphNodeType *pType) {
    KOALA_HARNESS_CALL();
    const cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (!pType) return call.done(cudaErrorInvalidValue);
    for (CUgraph_st *g : graphs())
        for (const std::unique_ptr<CUgraphNode_st> &n : g->nodes)
            if (n.get() == node) {
                *pType = n->work->node_type();
                return cudaSuccess;
            }
    violation("cudaGraphNodeGetType(%p): not a node of a live graph", static_cast<void *>(node));
    return call.done(cudaErrorInvalidValue);
}

cudaError_t koala_harness_cudaGraphInstantiate(const void *instance, cudaGraphExec_t *pGraphExec,
                                               cudaGraph_t graph, unsigned long long flags) {
    KOALA_HARNESS_CALL();
    const cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    CUgraph_st *g = live_graph(graph, "cudaGraphInstantiate");
    if (!g) return call.done(cudaErrorInvalidResourceHandle);
    if (!pGraphExec || flags != 0 || g->capturing) return call.done(cudaErrorInvalidValue);
    CUgraphExec_st *x = new CUgraphExec_st{current_device(), {}};
    for (const std::unique_ptr<CUgraphNode_st> &n : g->nodes) x->work.push_back(n->work);
    execs().insert(x);
    *pGraphExec = x;
    return cudaSuccess;
}

cudaError_t koala_harness_cudaGraphLaunch(const void *instance, cudaGraphExec_t graphExec,
                                          cudaStream_t stream) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (!execs().count(graphExec)) {
        violation("cudaGraphLaunch(%p): not a live executable graph",
                  static_cast<void *>(graphExec));
        return call.done(cudaErrorInvalidResourceHandle);
    }
    CUstream_st *s = resolve_stream(stream, &e);
    if (!s) return call.done(e);
    if (s->capture) {
        violation("cudaGraphLaunch into capturing stream %p: child graphs are not modelled",
                  static_cast<void *>(s));
        invalidate(*s->capture, "a graph launch");
        return call.done(cudaErrorNotSupported);
    }
    if (s->device != graphExec->device) return call.done(cudaErrorInvalidValue);
    for (const std::shared_ptr<Work> &w : graphExec->work) {
        e = submit(s, w);
        if (e != cudaSuccess) return call.done(e);
    }
    return cudaSuccess;
}

cudaError_t koala_harness_cudaGraphDestroy(const void *instance, cudaGraph_t graph) {
    KOALA_HARNESS_CALL();
    const cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    CUgraph_st *g = live_graph(graph, "cudaGraphDestroy");
    if (!g) return call.done(cudaErrorInvalidResourceHandle);
    if (g->capturing) return call.done(cudaErrorInvalidValue);
    graphs().erase(g);
    delete g;
    return cudaSuccess;
}

cudaError_t koala_harness_cudaGraphExecDestroy(const void *instance, cudaGraphExec_t graphExec) {
    KOALA_HARNESS_CALL();
    const cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (!execs().erase(graphExec)) {
        violation("cudaGraphExecDestroy(%p): not a live executable graph",
                  static_cast<void *>(graphExec));
        return call.done(cudaErrorInvalidResourceHandle);
    }
    delete graphExec;
    return cudaSuccess;
}

}  // extern "C"
