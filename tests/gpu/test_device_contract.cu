// The device path's contract beyond the arithmetic (DESIGN.md, koala.h):
//  graph   predict + update_ptr captured once in a CUDA graph and replayed N
//          times gives the same bits as N uncaptured steps; the captured
//          step holds only kernel nodes (no copies, no host nodes), at most
//          2 for predict and 3 for update.
//  skip    a non-finite loss (device memory) or gradient is skipped on the
//          device: status OK, parameters and state unchanged, counted in
//          skipped_steps; the next finite step runs normally.
//  ckpt    device -> device, device -> host -> device (byte-identical
//          checkpoints) continue bit for bit; a host checkpoint loads into a
//          device optimizer and continues like the host run.
//  hostptr a host pointer in params/grads/loss is INVALID_ARGUMENT naming
//          the argument, and nothing changes.
#include <cstring>
#include <string>

#include "gpu_test.h"

namespace {

const std::vector<size_t> kSizes = {1000, 300, 257, 1, 32768, 32769, 70001, 5000};

template <class T>
struct StepData {
    std::vector<std::vector<T>> g;
    double loss, loss_var;
};

// Step k's gradients and losses: fixed random numbers (not a function of
// the weights), so that runs to compare see identical inputs.
template <class T>
StepData<T> step_data(int k) {
    StepData<T> d;
    Rng rng(1000 + static_cast<uint64_t>(k));
    d.g.resize(kSizes.size());
    for (size_t t = 0; t < kSizes.size(); ++t) {
        d.g[t].resize(kSizes[t]);
        for (auto &v : d.g[t]) v = static_cast<T>(0.1 * rng.uniform());
    }
    d.loss = 1.0 + 0.25 * std::cos(0.7 * k);
    d.loss_var = 1.5 * d.loss * d.loss;
    return d;
}

koala_config make_config(koala_method m) {
    koala_config cfg;
    koala_config_init(&cfg, m);
    cfg.weight_decay = 5e-4;
    if (m == KOALA_VANILLA) cfg.sigma = 0.1;
    return cfg;
}

// The per-tensor buffers at the end of a checkpoint (KOALA-M: v, x-bar),
// excluding the trailing checksum; empty for KOALA-V.
std::vector<unsigned char> saved_buffers(const koala_optimizer *opt, cudaStream_t s,
                                         size_t buffer_bytes) {
    size_t size = 0;
    KOALA_CHECK(koala_state_size(opt, &size));
    std::vector<unsigned char> buf(size);
    KOALA_CHECK(koala_state_save(opt, buf.data(), size, s));
    return std::vector<unsigned char>(buf.end() - 8 - static_cast<long>(buffer_bytes),
                                      buf.end() - 8);
}

std::vector<unsigned char> checkpoint(const koala_optimizer *opt, cudaStream_t s) {
    size_t size = 0;
    KOALA_CHECK(koala_state_size(opt, &size));
    std::vector<unsigned char> buf(size);
    KOALA_CHECK(koala_state_save(opt, buf.data(), size, s));
    return buf;
}

size_t buffer_bytes(koala_method m, size_t elem) {
    size_t total = 0;
    for (size_t s : kSizes) total += s;
    return m == KOALA_MOMENTUM ? 2 * total * elem : 0;
}

bool same_filter(const koala_info &a, const koala_info &b) {
    return std::memcmp(&a.sigma, &b.sigma, 6 * sizeof(double)) == 0;
}

template <class T>
void init_params(Mirrored<T> &x, cudaStream_t s) {
    Rng rng(42);
    for (auto &t : x.host)
        for (auto &v : t) v = static_cast<T>(rng.uniform());
    x.to_device(s);
}

// Writes step k's gradients into g's device buffers and (loss, loss_var)
// into loss_dev, ordered on s.
template <class T>
void upload_step(int k, Mirrored<T> &g, T *loss_dev, cudaStream_t s) {
    const StepData<T> d = step_data<T>(k);
    g.host = d.g;
    g.to_device(s);
    const T l[2] = {static_cast<T>(d.loss), static_cast<T>(d.loss_var)};
    CUDA_CHECK(cudaMemcpyAsync(loss_dev, l, sizeof l, cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaStreamSynchronize(s));  // l and g.host are about to go away
}

template <class T>
void graph_test(koala_method m) {
    const char *name = m == KOALA_VANILLA ? "graph V" : "graph M";
    const int steps = 20;
    const koala_config cfg = make_config(m);
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    Mirrored<T> xa(kSizes), xb(kSizes), g(kSizes);
    init_params(xa, s);
    init_params(xb, s);
    T *loss_dev = nullptr;
    CUDA_CHECK(cudaMalloc(&loss_dev, 2 * sizeof(T)));
    koala_optimizer *a = nullptr, *b = nullptr;
    KOALA_CHECK(koala_create(&cfg, kSizes.size(), kSizes.data(), dtype_of(T()), KOALA_DEVICE, &a));
    KOALA_CHECK(koala_create(&cfg, kSizes.size(), kSizes.data(), dtype_of(T()), KOALA_DEVICE, &b));
    std::vector<void *> pa = xa.dev_ptrs(), pb = xb.dev_ptrs(), gp = g.dev_ptrs();
    std::vector<const void *> grads(gp.begin(), gp.end());

    for (int k = 0; k < steps; ++k) {
        upload_step(k, g, loss_dev, s);
        KOALA_CHECK(koala_predict(a, pa.data(), s));
        KOALA_CHECK(koala_update_ptr(a, loss_dev, loss_dev + 1, dtype_of(T()), pa.data(),
                                     grads.data(), s));
    }

    // Captured on b's first use: the pointer checks run during capture too.
    cudaGraph_t graph;
    CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    const koala_status sp = koala_predict(b, pb.data(), s);
    const koala_status su =
        koala_update_ptr(b, loss_dev, loss_dev + 1, dtype_of(T()), pb.data(), grads.data(), s);
    CUDA_CHECK(cudaStreamEndCapture(s, &graph));
    CHECK(sp == KOALA_OK && su == KOALA_OK, "%s: capture: %s", name, koala_last_error());

    size_t n_nodes = 0;
    CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &n_nodes));
    std::vector<cudaGraphNode_t> nodes(n_nodes);
    CUDA_CHECK(cudaGraphGetNodes(graph, nodes.data(), &n_nodes));
    size_t kernels = 0, others = 0;
    for (cudaGraphNode_t node : nodes) {
        cudaGraphNodeType type;
        CUDA_CHECK(cudaGraphNodeGetType(node, &type));
        if (type == cudaGraphNodeTypeKernel)
            ++kernels;
        else
            ++others;
    }
    const size_t expect = (m == KOALA_VANILLA ? 1 : 2) + 3;
    CHECK(kernels == expect && others == 0, "%s: %zu kernel and %zu other nodes, expected %zu",
          name, kernels, others, expect);

    cudaGraphExec_t exec;
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int k = 0; k < steps; ++k) {
        upload_step(k, g, loss_dev, s);
        CUDA_CHECK(cudaGraphLaunch(exec, s));
    }
    std::vector<std::vector<T>> ra, rb;
    xa.from_device(ra, s);
    xb.from_device(rb, s);
    CHECK(ra == rb, "%s: replayed parameters differ from the uncaptured run", name);
    CHECK(same_filter(info_of(a, s), info_of(b, s)), "%s: filter scalars differ", name);
    const size_t bb = buffer_bytes(m, sizeof(T));
    CHECK(saved_buffers(a, s, bb) == saved_buffers(b, s, bb), "%s: v / x-bar differ", name);
    std::printf("%s: %zu kernel nodes per captured step, %d replays identical\n", name, kernels,
                steps);

    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaGraphDestroy(graph));
    koala_destroy(a);
    koala_destroy(b);
    CUDA_CHECK(cudaFree(loss_dev));
    CUDA_CHECK(cudaStreamDestroy(s));
}

template <class T>
void skip_test(koala_method m) {
    const char *name = m == KOALA_VANILLA ? "skip V" : "skip M";
    const koala_config cfg = make_config(m);
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    Mirrored<T> x(kSizes), g(kSizes);
    init_params(x, s);
    T *loss_dev = nullptr;
    CUDA_CHECK(cudaMalloc(&loss_dev, 2 * sizeof(T)));
    koala_optimizer *opt = nullptr;
    KOALA_CHECK(
        koala_create(&cfg, kSizes.size(), kSizes.data(), dtype_of(T()), KOALA_DEVICE, &opt));
    std::vector<void *> p = x.dev_ptrs(), gp = g.dev_ptrs();
    std::vector<const void *> grads(gp.begin(), gp.end());
    const size_t bb = buffer_bytes(m, sizeof(T));
    for (int k = 0; k < 3; ++k) {
        upload_step(k, g, loss_dev, s);
        KOALA_CHECK(koala_predict(opt, p.data(), s));
        KOALA_CHECK(koala_update_ptr(opt, loss_dev, loss_dev + 1, dtype_of(T()), p.data(),
                                     grads.data(), s));
    }
    for (int kind = 0; kind < 3; ++kind) {
        // 0: NaN loss in device memory; 1: Inf in one gradient element;
        // 2: NaN loss_var passed by value.
        upload_step(3 + kind, g, loss_dev, s);
        KOALA_CHECK(koala_predict(opt, p.data(), s));
        if (kind == 0) {
            const T nan = static_cast<T>(NAN);
            CUDA_CHECK(cudaMemcpyAsync(loss_dev, &nan, sizeof nan, cudaMemcpyHostToDevice, s));
            CUDA_CHECK(cudaStreamSynchronize(s));
        } else if (kind == 1) {
            const T inf = static_cast<T>(INFINITY);
            // Stream-ordered: a plain cudaMemcpy from pageable memory may
            // return before the bytes land, and s does not wait for it.
            CUDA_CHECK(cudaMemcpyAsync(g.dev[5] + 123, &inf, sizeof inf, cudaMemcpyHostToDevice,
                                       s));
            CUDA_CHECK(cudaStreamSynchronize(s));
        }
        std::vector<std::vector<T>> before, after;
        x.from_device(before, s);
        const koala_info i0 = info_of(opt, s);
        const std::vector<unsigned char> b0 = saved_buffers(opt, s, bb);
        koala_status st;
        if (kind == 2)
            st = koala_update(opt, 1.0, NAN, p.data(), grads.data(), s);
        else
            st = koala_update_ptr(opt, loss_dev, loss_dev + 1, dtype_of(T()), p.data(),
                                  grads.data(), s);
        CHECK(st == KOALA_OK, "%s/%d: status %d: %s", name, kind, static_cast<int>(st),
              koala_last_error());
        x.from_device(after, s);
        const koala_info i1 = info_of(opt, s);
        CHECK(before == after, "%s/%d: parameters changed on a skipped step", name, kind);
        CHECK(same_filter(i0, i1), "%s/%d: filter scalars changed", name, kind);
        CHECK(b0 == saved_buffers(opt, s, bb), "%s/%d: v / x-bar changed", name, kind);
        CHECK(i1.skipped_steps == i0.skipped_steps + 1, "%s/%d: skipped_steps %llu", name, kind,
              static_cast<unsigned long long>(i1.skipped_steps));
    }
    // A finite step afterwards runs normally.
    upload_step(10, g, loss_dev, s);
    KOALA_CHECK(koala_predict(opt, p.data(), s));
    std::vector<std::vector<T>> before, after;
    x.from_device(before, s);
    KOALA_CHECK(koala_update_ptr(opt, loss_dev, loss_dev + 1, dtype_of(T()), p.data(),
                                 grads.data(), s));
    x.from_device(after, s);
    const koala_info i2 = info_of(opt, s);
    CHECK(before != after, "%s: a finite step after skips changed nothing", name);
    CHECK(i2.skipped_steps == 3 && i2.steps == 7, "%s: steps %llu skipped %llu", name,
          static_cast<unsigned long long>(i2.steps),
          static_cast<unsigned long long>(i2.skipped_steps));
    std::printf("%s: NaN loss, Inf gradient and NaN loss_var skipped on the device\n", name);
    koala_destroy(opt);
    CUDA_CHECK(cudaFree(loss_dev));
    CUDA_CHECK(cudaStreamDestroy(s));
}

// Runs steps [from, to) on any optimizer (host or device) with params x.
template <class T>
void run_steps(koala_optimizer *opt, bool device, Mirrored<T> &x, Mirrored<T> &g, int from,
               int to, cudaStream_t s) {
    std::vector<void *> p = device ? x.dev_ptrs() : x.host_ptrs();
    for (int k = from; k < to; ++k) {
        const StepData<T> d = step_data<T>(k);
        g.host = d.g;
        if (device) g.to_device(s);
        std::vector<void *> gp = device ? g.dev_ptrs() : g.host_ptrs();
        std::vector<const void *> grads(gp.begin(), gp.end());
        KOALA_CHECK(koala_predict(opt, p.data(), device ? s : nullptr));
        KOALA_CHECK(koala_update(opt, d.loss, d.loss_var, p.data(), grads.data(),
                                 device ? s : nullptr));
        if (device) CUDA_CHECK(cudaStreamSynchronize(s));
    }
}

template <class T>
void checkpoint_test(koala_method m) {
    const char *name = m == KOALA_VANILLA ? "checkpoint V" : "checkpoint M";
    const koala_config cfg = make_config(m);
    const size_t n = kSizes.size();
    const koala_dtype dt = dtype_of(T());
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    Mirrored<T> x(kSizes), g(kSizes);
    init_params(x, s);
    koala_optimizer *d1 = nullptr;
    KOALA_CHECK(koala_create(&cfg, n, kSizes.data(), dt, KOALA_DEVICE, &d1));
    run_steps(d1, true, x, g, 0, 5, s);
    const std::vector<unsigned char> ck = checkpoint(d1, s);
    std::vector<std::vector<T>> x5, x10, other;
    x.from_device(x5, s);
    run_steps(d1, true, x, g, 5, 10, s);
    x.from_device(x10, s);
    const koala_info i10 = info_of(d1, s);

    // device -> device
    koala_optimizer *d2 = nullptr;
    KOALA_CHECK(koala_create(&cfg, n, kSizes.data(), dt, KOALA_DEVICE, &d2));
    KOALA_CHECK(koala_state_load(d2, ck.data(), ck.size(), s));
    x.host = x5;
    x.to_device(s);
    run_steps(d2, true, x, g, 5, 10, s);
    x.from_device(other, s);
    CHECK(other == x10 && same_filter(info_of(d2, s), i10),
          "%s: device -> device did not continue bit for bit", name);

    // device -> host -> device: the host re-saves the same bytes.
    koala_optimizer *h = nullptr, *d3 = nullptr;
    KOALA_CHECK(koala_create(&cfg, n, kSizes.data(), dt, KOALA_HOST, &h));
    KOALA_CHECK(koala_state_load(h, ck.data(), ck.size(), nullptr));
    const std::vector<unsigned char> ck_host = checkpoint(h, nullptr);
    CHECK(ck_host == ck, "%s: the host re-saved a different checkpoint", name);
    KOALA_CHECK(koala_create(&cfg, n, kSizes.data(), dt, KOALA_DEVICE, &d3));
    KOALA_CHECK(koala_state_load(d3, ck_host.data(), ck_host.size(), s));
    x.host = x5;
    x.to_device(s);
    run_steps(d3, true, x, g, 5, 10, s);
    x.from_device(other, s);
    CHECK(other == x10 && same_filter(info_of(d3, s), i10),
          "%s: device -> host -> device did not continue bit for bit", name);

    // A host run's checkpoint into a device optimizer: continues like the
    // host run (up to the device's norm summation order).
    koala_optimizer *h2 = nullptr, *d4 = nullptr;
    KOALA_CHECK(koala_create(&cfg, n, kSizes.data(), dt, KOALA_HOST, &h2));
    init_params(x, s);
    run_steps(h2, false, x, g, 0, 5, nullptr);
    const std::vector<unsigned char> ck2 = checkpoint(h2, nullptr);
    KOALA_CHECK(koala_create(&cfg, n, kSizes.data(), dt, KOALA_DEVICE, &d4));
    KOALA_CHECK(koala_state_load(d4, ck2.data(), ck2.size(), s));
    x.to_device(s);  // the host run's weights after 5 steps
    run_steps(h2, false, x, g, 5, 10, nullptr);
    run_steps(d4, true, x, g, 5, 10, s);
    x.from_device(other, s);
    const double tol = sizeof(T) == 4 ? 1e-6 : 1e-12;
    double worst = 0.0;
    for (size_t t = 0; t < n; ++t) worst = std::fmax(worst, norm_relative(other[t], x.host[t]));
    CHECK(worst <= tol, "%s: host checkpoint continued on the device differs by %.3g", name,
          worst);
    const koala_info ih = info_of(h2, nullptr), id = info_of(d4, s);
    CHECK(id.steps == ih.steps && rel(id.r, ih.r) <= tol, "%s: host -> device info differs",
          name);
    std::printf("%s: device->device and device->host->device bit for bit, host->device %.3g\n",
                name, worst);
    koala_destroy(d1);
    koala_destroy(d2);
    koala_destroy(d3);
    koala_destroy(d4);
    koala_destroy(h);
    koala_destroy(h2);
    CUDA_CHECK(cudaStreamDestroy(s));
}

bool mentions(const char *what) {
    const char *msg = koala_last_error();
    return msg && std::strstr(msg, what) != nullptr;
}

void host_pointer_test(koala_method m) {
    const char *name = m == KOALA_VANILLA ? "host pointers V" : "host pointers M";
    const koala_config cfg = make_config(m);
    const std::vector<size_t> sizes = {100, 200};
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    Mirrored<float> x(sizes), g(sizes);
    init_params(x, s);
    g.to_device(s);
    float *pinned = nullptr;
    CUDA_CHECK(cudaMallocHost(&pinned, 200 * sizeof(float)));
    std::vector<float> host_loss(2, 1.0f);
    float *loss_dev = nullptr;
    CUDA_CHECK(cudaMalloc(&loss_dev, 2 * sizeof(float)));
    CUDA_CHECK(cudaMemcpyAsync(loss_dev, host_loss.data(), 2 * sizeof(float),
                               cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    koala_optimizer *opt = nullptr;
    KOALA_CHECK(koala_create(&cfg, 2, sizes.data(), KOALA_FLOAT32, KOALA_DEVICE, &opt));
    std::vector<void *> good = x.dev_ptrs(), gdev = g.dev_ptrs();
    std::vector<const void *> grads(gdev.begin(), gdev.end());
    std::vector<std::vector<float>> before, after;
    x.from_device(before, s);

    std::vector<void *> bad_params = {x.host[0].data(), good[1]};
    if (m == KOALA_MOMENTUM) {
        const koala_status st = koala_predict(opt, bad_params.data(), s);
        CHECK(st == KOALA_ERROR_INVALID_ARGUMENT && mentions("params[0]"),
              "%s: predict with host params[0]: %d %s", name, static_cast<int>(st),
              koala_last_error());
    }
    KOALA_CHECK(koala_predict(opt, good.data(), s));
    x.from_device(before, s);  // KOALA-M's predict moved nothing (v = 0), but be exact
    const koala_info i0 = info_of(opt, s);

    koala_status st = koala_update(opt, 1.0, 1.0, bad_params.data(), grads.data(), s);
    CHECK(st == KOALA_ERROR_INVALID_ARGUMENT && mentions("params[0]"), "%s: host params[0]: %s",
          name, koala_last_error());
    std::vector<const void *> bad_grads = {grads[0], g.host[1].data()};
    st = koala_update(opt, 1.0, 1.0, good.data(), bad_grads.data(), s);
    CHECK(st == KOALA_ERROR_INVALID_ARGUMENT && mentions("grads[1]"), "%s: host grads[1]: %s",
          name, koala_last_error());
    std::vector<void *> pinned_params = {good[0], pinned};
    st = koala_update(opt, 1.0, 1.0, pinned_params.data(), grads.data(), s);
    CHECK(st == KOALA_ERROR_INVALID_ARGUMENT && mentions("params[1]") && mentions("pinned"),
          "%s: pinned params[1]: %s", name, koala_last_error());
    st = koala_update_ptr(opt, host_loss.data(), loss_dev + 1, KOALA_FLOAT32, good.data(),
                          grads.data(), s);
    CHECK(st == KOALA_ERROR_INVALID_ARGUMENT && mentions("loss"), "%s: host loss: %s", name,
          koala_last_error());

    x.from_device(after, s);
    const koala_info i1 = info_of(opt, s);
    CHECK(before == after && same_filter(i0, i1) && i1.steps == 0,
          "%s: a rejected call changed something", name);
    st = koala_update_ptr(opt, loss_dev, loss_dev + 1, KOALA_FLOAT32, good.data(), grads.data(),
                          s);
    CHECK(st == KOALA_OK, "%s: the valid update after rejections: %s", name, koala_last_error());
    std::printf("%s: host, pinned and host-loss pointers rejected by name\n", name);
    koala_destroy(opt);
    CUDA_CHECK(cudaFreeHost(pinned));
    CUDA_CHECK(cudaFree(loss_dev));
    CUDA_CHECK(cudaStreamDestroy(s));
}

}  // namespace

int main() {
    skip_without_gpu();
    for (koala_method m : {KOALA_VANILLA, KOALA_MOMENTUM}) {
        graph_test<float>(m);
        graph_test<double>(m);
        skip_test<float>(m);
        skip_test<double>(m);
        checkpoint_test<float>(m);
        checkpoint_test<double>(m);
        host_pointer_test(m);
    }
    return finish("test_device_contract");
}
