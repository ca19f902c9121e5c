// Streams, events and the one work queue (work.h says why one).
#include <chrono>
#include <deque>
#include <set>
#include <vector>

#include "api.h"
#include "work.h"

struct CUevent_st {
    unsigned long long serial;  // tells a reused address from the old event
    int device;
    unsigned flags;
    bool recorded;                        // a record was issued
    bool completed;                       // and has run
    double ms;                            // host clock when it ran
    koala_harness::Capture *captured_in;  // recorded into an active capture
};

namespace koala_harness {

namespace {

std::deque<std::shared_ptr<Work>> &queue() {
    static std::deque<std::shared_ptr<Work>> &q = *new std::deque<std::shared_ptr<Work>>;
    return q;
}
std::set<CUstream_st *> &streams() {
    static std::set<CUstream_st *> &s = *new std::set<CUstream_st *>;
    return s;
}
std::set<CUevent_st *> &events() {
    static std::set<CUevent_st *> &s = *new std::set<CUevent_st *>;
    return s;
}
std::vector<CUstream_st> &legacy_streams() {
    static std::vector<CUstream_st> &v = *[] {
        auto *l = new std::vector<CUstream_st>(static_cast<size_t>(device_count()));
        for (size_t d = 0; d < l->size(); ++d)
            (*l)[d] = CUstream_st{static_cast<int>(d), cudaStreamDefault, true, nullptr};
        return l;
    }();
    return v;
}

double now_ms() {
    return std::chrono::duration<double, std::milli>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

unsigned long long g_event_serial = 0;

// Event records are dependencies inside a capture (cudaEventRecord never
// submits one there), so this is queue work only.
class EventWork final : public Work {
public:
    EventWork(int device, CUevent_st *e) : Work(device), event_(e), serial_(e->serial) {}
    cudaGraphNodeType node_type() const override { return cudaGraphNodeTypeEventRecord; }
    bool capturable(std::string *why) const override {
        *why = "an event record";
        return false;
    }
    void execute() override {
        // Destroyed meanwhile: nothing can wait for it.
        if (!events().count(event_) || event_->serial != serial_) return;
        event_->completed = true;
        event_->ms = now_ms();
    }

private:
    CUevent_st *event_;
    unsigned long long serial_;
};

CUevent_st *live_event(cudaEvent_t e, const char *call) {
    if (events().count(e)) return e;
    violation("%s(%p): not a live event (destroyed, or never created)", call,
              static_cast<void *>(e));
    return nullptr;
}

cudaError_t create_stream(cudaStream_t *out, unsigned flags) {
    const cudaError_t e = usable();
    if (e != cudaSuccess) return e;
    if (!out || (flags != cudaStreamDefault && flags != cudaStreamNonBlocking))
        return cudaErrorInvalidValue;
    CUstream_st *s = new CUstream_st{current_device(), flags, false, nullptr};
    streams().insert(s);
    *out = s;
    return cudaSuccess;
}

cudaError_t create_event(cudaEvent_t *out, unsigned flags) {
    const cudaError_t e = usable();
    if (e != cudaSuccess) return e;
    if (!out || (flags & ~0x3u)) return cudaErrorInvalidValue;
    CUevent_st *ev =
        new CUevent_st{++g_event_serial, current_device(), flags, false, false, 0.0, nullptr};
    events().insert(ev);
    *out = ev;
    return cudaSuccess;
}

// Synchronising on an event recorded into an active capture waits for
// nothing CUDA can run.
cudaError_t check_not_captured(CUevent_st *e, const char *call) {
    if (!e->captured_in) return cudaSuccess;
    violation("%s on an event recorded into the active capture of stream %p", call,
              static_cast<void *>(e->captured_in->stream));
    return cudaErrorCapturedEvent;
}

}  // namespace

CUstream_st *resolve_stream(cudaStream_t s, cudaError_t *e) {
    if (s == nullptr || s == cudaStreamLegacy)
        return &legacy_streams()[static_cast<size_t>(current_device())];
    if (streams().count(s)) return s;
    violation("stream %p is not a live stream (destroyed, or never created)",
              static_cast<void *>(s));
    *e = cudaErrorInvalidResourceHandle;
    return nullptr;
}

cudaError_t submit(CUstream_st *s, std::shared_ptr<Work> w) {
    if (Capture *c = s->capture) {
        if (c->invalidated) return cudaErrorStreamCaptureInvalidated;
        std::string why;
        if (!w->capturable(&why)) {
            violation(
                "stream %p is capturing: %s (CUDA returns "
                "cudaErrorStreamCaptureUnsupported)",
                static_cast<void *>(s), why.c_str());
            invalidate(*c, why);
            return cudaErrorStreamCaptureUnsupported;
        }
        c->graph->nodes.push_back(std::unique_ptr<CUgraphNode_st>(new CUgraphNode_st{w}));
        return cudaSuccess;
    }
    if (s->legacy) {
        const cudaError_t e = check_legacy_stream(s->device, "work on the legacy stream");
        if (e != cudaSuccess) return e;
    }
    queue().push_back(std::move(w));
    return cudaSuccess;
}

void drain() {
    std::deque<std::shared_ptr<Work>> &q = queue();
    while (!q.empty()) {
        const std::shared_ptr<Work> w = q.front();
        q.pop_front();
        if (sticky_error(w->device()) == cudaSuccess)
            w->execute();  // a faulted context runs nothing
    }
}

void forget_capture(const Capture *c) {
    for (CUevent_st *e : events())
        if (e->captured_in == c) e->captured_in = nullptr;
}

void reset_device_work(int device) {
    std::deque<std::shared_ptr<Work>> &q = queue();
    for (auto it = q.begin(); it != q.end();) it = (*it)->device() == device ? q.erase(it) : it + 1;
    for (auto it = streams().begin(); it != streams().end();) {
        if ((*it)->device != device) {
            ++it;
            continue;
        }
        delete *it;
        it = streams().erase(it);
    }
    for (auto it = events().begin(); it != events().end();) {
        if ((*it)->device != device) {
            ++it;
            continue;
        }
        delete *it;
        it = events().erase(it);
    }
}

}  // namespace koala_harness

using namespace koala_harness;

extern "C" {

cudaError_t koala_harness_cudaStreamCreateWithFlags(const void *instance, cudaStream_t *pStream,
                                                    unsigned int flags) {
    KOALA_HARNESS_CALL();
    return call.done(create_stream(pStream, flags));
}

cudaError_t koala_harness_cudaStreamCreate(const void *instance, cudaStream_t *pStream) {
    KOALA_HARNESS_CALL();
    return call.done(create_stream(pStream, cudaStreamDefault));
}

// Work already issued to the stream still runs, as in CUDA.
cudaError_t koala_harness_cudaStreamDestroy(const void *instance, cudaStream_t stream) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    if (stream == nullptr || stream == cudaStreamLegacy) return call.done(cudaErrorInvalidValue);
    CUstream_st *s = resolve_stream(stream, &e);
    if (!s) return call.done(e);
    if (s->capture) {
        violation("cudaStreamDestroy(%p) while it is capturing", static_cast<void *>(s));
        return call.done(cudaErrorStreamCaptureUnsupported);
    }
    streams().erase(s);
    delete s;
    return cudaSuccess;
}

cudaError_t koala_harness_cudaStreamSynchronize(const void *instance, cudaStream_t stream) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    CUstream_st *s = resolve_stream(stream, &e);
    if (!s) return call.done(e);
    e = check_not_capturing(s, "cudaStreamSynchronize");
    if (e == cudaSuccess && s->legacy) e = check_legacy_stream(s->device, "cudaStreamSynchronize");
    if (e != cudaSuccess) return call.done(e);
    drain();
    return call.done(sticky_error(s->device));
}

// Everything queued is run, so the stream is then idle.
cudaError_t koala_harness_cudaStreamQuery(const void *instance, cudaStream_t stream) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    CUstream_st *s = resolve_stream(stream, &e);
    if (!s) return call.done(e);
    e = check_not_capturing(s, "cudaStreamQuery");
    if (e != cudaSuccess) return call.done(e);
    drain();
    return call.done(sticky_error(s->device));
}

// Issue order already orders everything after the event's record; a wait
// that would join another stream into a capture is not modelled.
cudaError_t koala_harness_cudaStreamWaitEvent(const void *instance, cudaStream_t stream,
                                              cudaEvent_t event, unsigned int flags) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    CUstream_st *s = resolve_stream(stream, &e);
    if (!s) return call.done(e);
    CUevent_st *ev = live_event(event, "cudaStreamWaitEvent");
    if (!ev) return call.done(cudaErrorInvalidResourceHandle);
    if (flags != 0) return call.done(cudaErrorInvalidValue);
    if (ev->captured_in && ev->captured_in->stream != s) {
        violation(
            "cudaStreamWaitEvent: stream %p would join the capture of stream %p; the "
            "harness captures one stream at a time",
            static_cast<void *>(s), static_cast<void *>(ev->captured_in->stream));
        invalidate(*ev->captured_in, "a cross-stream capture");
        return call.done(cudaErrorNotSupported);
    }
    return cudaSuccess;
}

cudaError_t koala_harness_cudaEventCreateWithFlags(const void *instance, cudaEvent_t *event,
                                                   unsigned int flags) {
    KOALA_HARNESS_CALL();
    return call.done(create_event(event, flags));
}

cudaError_t koala_harness_cudaEventCreate(const void *instance, cudaEvent_t *event) {
    KOALA_HARNESS_CALL();
    return call.done(create_event(event, cudaEventDefault));
}

cudaError_t koala_harness_cudaEventDestroy(const void *instance, cudaEvent_t event) {
    KOALA_HARNESS_CALL();
    const cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    CUevent_st *ev = live_event(event, "cudaEventDestroy");
    if (!ev) return call.done(cudaErrorInvalidResourceHandle);
    events().erase(ev);
    delete ev;
    return cudaSuccess;
}

cudaError_t koala_harness_cudaEventRecord(const void *instance, cudaEvent_t event,
                                          cudaStream_t stream) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    CUevent_st *ev = live_event(event, "cudaEventRecord");
    if (!ev) return call.done(cudaErrorInvalidResourceHandle);
    CUstream_st *s = resolve_stream(stream, &e);
    if (!s) return call.done(e);
    if (s->capture) {  // a dependency inside the graph, not a node
        if (s->capture->invalidated) return call.done(cudaErrorStreamCaptureInvalidated);
        ev->captured_in = s->capture;
        return cudaSuccess;
    }
    e = submit(s, std::make_shared<EventWork>(s->device, ev));
    if (e != cudaSuccess) return call.done(e);
    ev->recorded = true;
    ev->completed = false;
    ev->captured_in = nullptr;
    return cudaSuccess;
}

cudaError_t koala_harness_cudaEventSynchronize(const void *instance, cudaEvent_t event) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    CUevent_st *ev = live_event(event, "cudaEventSynchronize");
    if (!ev) return call.done(cudaErrorInvalidResourceHandle);
    e = check_not_captured(ev, "cudaEventSynchronize");
    if (e != cudaSuccess) return call.done(e);
    drain();
    return call.done(sticky_error(ev->device));
}

cudaError_t koala_harness_cudaEventQuery(const void *instance, cudaEvent_t event) {
    KOALA_HARNESS_CALL();
    cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    CUevent_st *ev = live_event(event, "cudaEventQuery");
    if (!ev) return call.done(cudaErrorInvalidResourceHandle);
    e = check_not_captured(ev, "cudaEventQuery");
    if (e != cudaSuccess) return call.done(e);
    drain();
    return call.done(sticky_error(ev->device));
}

// Host time between the two records' execution: it says nothing about a
// GPU. An event whose record has not run yet is cudaErrorNotReady (no
// synchronisation happens here, as in CUDA).
cudaError_t koala_harness_cudaEventElapsedTime(const void *instance, float *ms, cudaEvent_t start,
                                               cudaEvent_t end) {
    KOALA_HARNESS_CALL();
    const cudaError_t e = usable();
    if (e != cudaSuccess) return call.done(e);
    CUevent_st *a = live_event(start, "cudaEventElapsedTime");
    CUevent_st *b = live_event(end, "cudaEventElapsedTime");
    if (!a || !b || !ms) return call.done(cudaErrorInvalidResourceHandle);
    if ((a->flags | b->flags) & cudaEventDisableTiming)
        return call.done(cudaErrorInvalidResourceHandle);
    if (!a->recorded || !b->recorded) return call.done(cudaErrorInvalidResourceHandle);
    if (!a->completed || !b->completed) return call.done(cudaErrorNotReady);
    *ms = static_cast<float>(b->ms - a->ms);
    return cudaSuccess;
}

}  // extern "C"
