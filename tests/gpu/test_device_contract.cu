// The device path's contract beyond the arithmetic (koala.h, DESIGN.md):
//  launches  predict and update enqueue only kernels (no copy, memset,
//            allocation or synchronisation: captured in global mode, where
//            any of those breaks the capture): update 3 kernels for every
//            method, predict 0 (KOALA-V and KOALA++ with library-owned
//            state) or 1; update_begin 2 + update_end 2; a sharded update 4.
//  graph     predict + update_ptr captured once and replayed N times gives
//            the bits of N uncaptured steps, and keeps the lr it was
//            captured with (koala_set_lr after the capture does not reach it).
//  skip      a NaN loss (device memory), an Inf gradient, a NaN loss_var, a
//            sharded layout whose pieces do not add up or whose gradients'
//            NULL pattern disagrees: status OK, parameters and state as after
//            the predict, counted in skipped_steps; the next step runs.
//  comm      a sharded update whose all-reduce fails changes nothing, caller
//            state and its phase included; koala_update_begin marks the phase.
//  fold      KOALA-V's predict folded into the update still shows sigma-hat
//            in koala_get_info and in a checkpoint taken between the two.
//  ckpt      device -> device continues bit for bit (byte-identical
//            checkpoints); device -> host and host -> device continue like the
//            host run; a failed load (no device memory to stage a
//            caller-owned state, a corrupt checkpoint) changes nothing.
//  hostptr   host memory (pageable or pinned) in params, grads, the loss, the
//            sums, caller state or posterior outputs: INVALID_ARGUMENT naming
//            the argument, nothing changed.
//  align     a pointer not aligned to its element: INVALID_ARGUMENT before
//            any launch (no misaligned-address fault); element-aligned but
//            not 16-byte aligned pointers (the element-access path) give the
//            same bits as aligned ones (the vectorised path).
//  device    an optimizer lives on the device current at its creation: its
//            calls work from another current device and leave that one
//            current; memory of another device is INVALID_ARGUMENT (needs two
//            devices: the harness run has them).
//  lifetime  create/destroy while this thread captures another stream in
//            global mode (no device-wide synchronisation); destroy right
//            after an update frees in stream order (the update still runs).
//  sticky    (a child process) after a kernel fault on its device every call
//            fails with KOALA_ERROR_CUDA before enqueueing anything; a
//            failed CUDA call does not leave an error for the next call.
//            KOALA_GPU_TEST_NO_FAULT=1 leaves it out (under compute-sanitizer
//            memcheck the deliberate fault would count as the test's error).
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "device_runs.h"
#include "launch.h"

extern char **environ;

using namespace runs;

namespace {

struct Method {
    const char *name;
    koala_method method;
    int fused;
};
const Method kMethods[] = {{"V", KOALA_VANILLA, 0},
                           {"M", KOALA_MOMENTUM, 0},
                           {"Mf", KOALA_MOMENTUM, 1},
                           {"PP", KOALA_PLUSPLUS, 0}};
const koala_dtype kDtypes[] = {KOALA_FLOAT32, KOALA_FLOAT64, KOALA_BFLOAT16, KOALA_FLOAT16};

const std::vector<size_t> kSizes = {1000, 300, 257, 1, 16385, 33, 4099};

koala_config config_of(const Method &m) {
    koala_config cfg;
    koala_config_init(&cfg, m.method);
    cfg.weight_decay = 5e-4;
    if (m.method == KOALA_VANILLA) cfg.sigma = 0.1;
    cfg.fused_predict = m.fused;
    return cfg;
}

bool contains(const char *haystack, const char *needle) {
    return haystack && std::strstr(haystack, needle) != nullptr;
}

// Step k's gradients and losses: fixed numbers (not a function of the
// weights), so that runs compared see identical inputs.
HostTensors step_grads(koala_dtype d, const std::vector<size_t> &sizes, int k) {
    HostTensors g(d, sizes);
    Rng rng(1000 + static_cast<uint64_t>(k));
    for (size_t t = 0; t < sizes.size(); ++t)
        for (size_t i = 0; i < sizes[t]; ++i) g.set(t, i, 0.1 * rng.uniform());
    return g;
}
double step_loss(int k) { return 1.0 + 0.25 * std::cos(0.7 * k); }

// One device optimizer with its parameters, gradients and loss in device
// memory, on its own stream.
struct Rig {
    Method m;
    koala_dtype d;
    std::vector<size_t> sizes;
    cudaStream_t s = nullptr;
    koala_optimizer *opt = nullptr;
    DeviceTensors x, g;
    std::vector<void *> xp;
    std::vector<const void *> gp;
    double *loss = nullptr;  // loss, loss_var

    Rig(const Method &method, koala_dtype dtype, size_t offset = 0,
        const std::vector<size_t> &sz = kSizes, koala_config *cfg_out = nullptr)
        : m(method), d(dtype), sizes(sz), x(dtype, sz, offset), g(dtype, sz, offset) {
        CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        koala_config cfg = config_of(m);
        if (cfg_out) cfg = *cfg_out;
        KOALA_CHECK(koala_create(&cfg, sizes.size(), sizes.data(), d, KOALA_DEVICE, &opt));
        HostTensors x0(d, sizes);
        Rng rng(42);
        for (size_t t = 0; t < sizes.size(); ++t)
            for (size_t i = 0; i < sizes[t]; ++i) x0.set(t, i, rng.uniform());
        x.upload(x0, s);
        xp = x.ptrs();
        for (void *p : g.ptrs()) gp.push_back(p);
        CUDA_CHECK(cudaMalloc(&loss, 2 * sizeof(double)));
    }
    ~Rig() {
        koala_destroy(opt);
        cudaFree(loss);
        cudaStreamDestroy(s);
    }
    Rig(const Rig &) = delete;
    Rig &operator=(const Rig &) = delete;

    // Step k's gradients and loss into device memory (then synchronised:
    // the host copies go away).
    void inputs(int k, bool nan_loss = false) {
        g.upload(step_grads(d, sizes, k), s);
        const double l = nan_loss ? NAN : step_loss(k);
        const double lv[2] = {l, 1.5 * step_loss(k) * step_loss(k)};
        CUDA_CHECK(cudaMemcpyAsync(loss, lv, sizeof lv, cudaMemcpyHostToDevice, s));
        CUDA_CHECK(cudaStreamSynchronize(s));
    }
    void step(int k) {
        inputs(k);
        KOALA_CHECK(koala_predict(opt, xp.data(), s));
        KOALA_CHECK(koala_update_ptr(opt, loss, loss + 1, KOALA_FLOAT64, xp.data(), gp.data(), s));
    }
    // Parameters and the whole checkpoint: the complete observable state.
    std::vector<Bytes> params() const { return x.download(s).t; }
    Bytes state() const { return checkpoint(opt, s); }
};

std::string name_of(const char *what, const Method &m, koala_dtype d) {
    return std::string(what) + " " + m.name + " " + dtype_name(d);
}

// ---- launches --------------------------------------------------------------

// Kernel nodes and other nodes of the graph that capturing `body` on s
// (global mode) makes.
template <class F>
void captured_nodes(cudaStream_t s, F body, size_t *kernels, size_t *others) {
    CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    body();
    cudaGraph_t graph = nullptr;
    CUDA_CHECK(cudaStreamEndCapture(s, &graph));
    size_t n = 0;
    CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &n));
    std::vector<cudaGraphNode_t> nodes(n);
    if (n) CUDA_CHECK(cudaGraphGetNodes(graph, nodes.data(), &n));
    *kernels = *others = 0;
    for (cudaGraphNode_t node : nodes) {
        cudaGraphNodeType type;
        CUDA_CHECK(cudaGraphNodeGetType(node, &type));
        ++(type == cudaGraphNodeTypeKernel ? *kernels : *others);
    }
    CUDA_CHECK(cudaGraphDestroy(graph));
}

void expect_nodes(const std::string &what, size_t kernels, size_t others, size_t expect) {
    CHECK(kernels == expect && others == 0, "%s: %zu kernel and %zu other nodes, expected %zu kernels",
          what.c_str(), kernels, others, expect);
    std::printf("  launches: %-32s %zu kernel(s)\n", what.c_str(), kernels);
}

int identity_allreduce(double *, size_t, void *, void *) { return 0; }

void launches_test() {
    for (const Method &m : kMethods) {
        for (int caller = 0; caller < 2; ++caller) {
            koala_config cfg = config_of(m);
            cfg.caller_state = caller;
            Rig r(m, KOALA_FLOAT32, 0, kSizes, &cfg);
            std::vector<void *> buffers;
            double *scalars = nullptr;
            if (caller) {
                size_t per = 0, count = 0;
                KOALA_CHECK(koala_state_layout(r.opt, &per, nullptr, &count));
                for (size_t b = 0; b < per; ++b)
                    for (size_t sz : kSizes) {
                        void *p = nullptr;
                        CUDA_CHECK(cudaMalloc(&p, sz * 4));
                        buffers.push_back(p);
                    }
                CUDA_CHECK(cudaMalloc(&scalars, count * sizeof(double)));
                KOALA_CHECK(koala_state_init(r.opt, buffers.data(), scalars, r.s));
                KOALA_CHECK(koala_bind_state(r.opt, buffers.data(), scalars));
            }
            r.inputs(0);
            const std::string who = std::string(m.name) + (caller ? " caller state" : "");
            size_t k = 0, o = 0;
            captured_nodes(r.s, [&] { KOALA_CHECK(koala_predict(r.opt, r.xp.data(), r.s)); }, &k, &o);
            const bool predict_launches = m.method == KOALA_MOMENTUM || caller;
            expect_nodes(who + " predict", k, o, predict_launches ? 1 : 0);
            captured_nodes(r.s, [&] {
                KOALA_CHECK(koala_update(r.opt, 1.0, 2.0, r.xp.data(), r.gp.data(), r.s));
            }, &k, &o);
            expect_nodes(who + " update", k, o, 3);
            KOALA_CHECK(koala_predict(r.opt, r.xp.data(), r.s));
            captured_nodes(r.s, [&] {
                KOALA_CHECK(koala_update_ptr(r.opt, r.loss, r.loss + 1, KOALA_FLOAT64, r.xp.data(),
                                             r.gp.data(), r.s));
            }, &k, &o);
            expect_nodes(who + " update_ptr", k, o, 3);
            if (!caller) {
                size_t count = 0;
                KOALA_CHECK(koala_sums_size(r.opt, &count));
                double *sums = nullptr;
                CUDA_CHECK(cudaMalloc(&sums, count * sizeof(double)));
                KOALA_CHECK(koala_predict(r.opt, r.xp.data(), r.s));
                captured_nodes(r.s, [&] {
                    KOALA_CHECK(koala_update_begin(r.opt, r.xp.data(), r.gp.data(), sums, r.s));
                }, &k, &o);
                expect_nodes(who + " update_begin", k, o, 2);
                captured_nodes(r.s, [&] {
                    KOALA_CHECK(koala_update_end(r.opt, 1.0, 2.0, r.xp.data(), r.gp.data(), sums, r.s));
                }, &k, &o);
                expect_nodes(who + " update_end", k, o, 2);
                cudaFree(sums);
            }
            CUDA_CHECK(cudaStreamSynchronize(r.s));
            for (void *p : buffers) cudaFree(p);
            cudaFree(scalars);
        }
    }
    // Sharded: phase 1, the all-reduce (here: nothing to add), phase 2.
    koala_config cfg = config_of(kMethods[1]);
    const std::vector<size_t> global_index = {0, 1, 2, 3, 4, 5, 6};
    koala_shard sh{};
    sh.struct_size = sizeof sh;
    sh.n_global = kSizes.size();
    sh.global_index = global_index.data();
    uint64_t total = 0;
    for (size_t s : kSizes) total += s;
    sh.global_elements = total;
    sh.allreduce = identity_allreduce;
    koala_optimizer *opt = nullptr;
    KOALA_CHECK(koala_create_sharded(&cfg, kSizes.size(), kSizes.data(), &sh, KOALA_FLOAT32,
                                     KOALA_DEVICE, &opt));
    Rig r(kMethods[1], KOALA_FLOAT32);
    r.inputs(0);
    KOALA_CHECK(koala_predict(opt, r.xp.data(), r.s));
    size_t k = 0, o = 0;
    captured_nodes(r.s, [&] {
        KOALA_CHECK(koala_update(opt, 1.0, 2.0, r.xp.data(), r.gp.data(), r.s));
    }, &k, &o);
    expect_nodes("M sharded update", k, o, 4);
    CUDA_CHECK(cudaStreamSynchronize(r.s));
    koala_destroy(opt);
}

// ---- graph ---------------------------------------------------------------

void graph_test(const Method &m, koala_dtype d) {
    const std::string name = name_of("graph", m, d);
    const int replays = 8;
    Rig a(m, d), b(m, d);
    a.inputs(0);
    CUDA_CHECK(cudaStreamBeginCapture(a.s, cudaStreamCaptureModeGlobal));
    KOALA_CHECK(koala_predict(a.opt, a.xp.data(), a.s));
    KOALA_CHECK(koala_update_ptr(a.opt, a.loss, a.loss + 1, KOALA_FLOAT64, a.xp.data(), a.gp.data(),
                                 a.s));
    cudaGraph_t graph = nullptr;
    CUDA_CHECK(cudaStreamEndCapture(a.s, &graph));
    cudaGraphExec_t exec = nullptr;
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    // The graph keeps the lr it was captured with.
    KOALA_CHECK(koala_set_lr(a.opt, 0.25));
    for (int k = 0; k < replays; ++k) {
        a.inputs(k);
        CUDA_CHECK(cudaGraphLaunch(exec, a.s));
        b.step(k);
    }
    CUDA_CHECK(cudaStreamSynchronize(a.s));
    CHECK(a.params() == b.params(), "%s: %d replays differ from %d steps", name.c_str(), replays,
          replays);
    CHECK(checkpoint_buffers(a.state(), m.method, d, kSizes) ==
              checkpoint_buffers(b.state(), m.method, d, kSizes),
          "%s: state buffers differ", name.c_str());
    const std::vector<double> sa = info_scalars(a.opt, a.s), sb = info_scalars(b.opt, b.s);
    CHECK(sa == sb, "%s: filter scalars differ (steps %g vs %g, sigma %g vs %g, p00 %g vs %g)",
          name.c_str(), sa[6], sb[6], sa[0], sb[0], sa[1], sb[1]);
    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaGraphDestroy(graph));
}

// ---- skip ----------------------------------------------------------------

struct Snapshot {
    std::vector<Bytes> params, buffers;
    std::vector<double> scalars;
};
Snapshot snapshot(const Rig &r) {
    Snapshot s;
    s.params = r.params();
    s.buffers = checkpoint_buffers(r.state(), r.m.method, r.d, r.sizes);
    s.scalars = info_scalars(r.opt, r.s);
    return s;
}

// A skipped update leaves everything as after its predict, but for the
// step counts.
void expect_skipped(const std::string &what, Rig &r, const Snapshot &predicted, uint64_t skipped) {
    const Snapshot now = snapshot(r);
    CHECK(now.params == predicted.params, "%s: parameters changed", what.c_str());
    CHECK(now.buffers == predicted.buffers, "%s: state buffers changed", what.c_str());
    std::vector<double> a = now.scalars, b = predicted.scalars;
    CHECK(a[6] == b[6] + 1, "%s: steps %g, expected %g", what.c_str(), a[6], b[6] + 1);
    a.pop_back();
    b.pop_back();
    CHECK(a == b, "%s: filter scalars changed (sigma %.17g -> %.17g, p00 %.17g -> %.17g)",
          what.c_str(), b[0], a[0], b[1], a[1]);
    const koala_info info = info_of(r.opt, r.s);
    CHECK(info.skipped_steps == skipped, "%s: skipped_steps %llu, expected %llu", what.c_str(),
          static_cast<unsigned long long>(info.skipped_steps), static_cast<unsigned long long>(skipped));
    CHECK(info.phase == 0, "%s: phase %d after a skipped update", what.c_str(), info.phase);
}

void skip_test(const Method &m) {
    const std::string name = name_of("skip", m, KOALA_FLOAT32);
    Rig r(m, KOALA_FLOAT32);
    for (int k = 0; k < 2; ++k) r.step(k);
    // A NaN loss in device memory.
    r.inputs(2, true);
    KOALA_CHECK(koala_predict(r.opt, r.xp.data(), r.s));
    Snapshot p = snapshot(r);
    CHECK(koala_update_ptr(r.opt, r.loss, r.loss + 1, KOALA_FLOAT64, r.xp.data(), r.gp.data(),
                           r.s) == KOALA_OK,
          "%s: NaN loss: %s", name.c_str(), koala_last_error());
    expect_skipped(name + " NaN loss", r, p, 1);
    // An Inf gradient element.
    r.inputs(3);
    const float inf = INFINITY;
    CUDA_CHECK(cudaMemcpy(r.g.p[4] + 7 * sizeof(float), &inf, 4, cudaMemcpyHostToDevice));
    KOALA_CHECK(koala_predict(r.opt, r.xp.data(), r.s));
    p = snapshot(r);
    CHECK(koala_update(r.opt, 1.0, 2.0, r.xp.data(), r.gp.data(), r.s) == KOALA_OK,
          "%s: Inf gradient: %s", name.c_str(), koala_last_error());
    expect_skipped(name + " Inf gradient", r, p, 2);
    // A NaN loss_var by value (the host path says NOT_FINITE; the device
    // cannot without a synchronisation).
    r.inputs(4);
    KOALA_CHECK(koala_predict(r.opt, r.xp.data(), r.s));
    p = snapshot(r);
    CHECK(koala_update(r.opt, 1.0, NAN, r.xp.data(), r.gp.data(), r.s) == KOALA_OK,
          "%s: NaN loss_var: %s", name.c_str(), koala_last_error());
    expect_skipped(name + " NaN loss_var", r, p, 3);
    // The next finite step runs.
    r.inputs(5);
    KOALA_CHECK(koala_predict(r.opt, r.xp.data(), r.s));
    p = snapshot(r);
    KOALA_CHECK(koala_update(r.opt, 1.0, 2.0, r.xp.data(), r.gp.data(), r.s));
    const Snapshot after = snapshot(r);
    CHECK(after.params != p.params, "%s: the step after the skips changed nothing", name.c_str());
    CHECK(info_of(r.opt, r.s).skipped_steps == 3, "%s: a finite step was counted as skipped",
          name.c_str());
}

// Sharded layouts the processes disagree on: skipped on the device.
void skip_sharded_test() {
    const Method &m = kMethods[1];
    koala_config cfg = config_of(m);
    uint64_t total = 0;
    for (size_t s : kSizes) total += s;
    for (int variant = 0; variant < 2; ++variant) {
        // 0: global_elements counts 5 elements no process has; 1: global
        // tensor 0 in two pieces here, one with a gradient and one without.
        std::vector<size_t> sizes = kSizes, global_index = {0, 1, 2, 3, 4, 5, 6};
        if (variant == 1) {
            sizes = {600, 400, 300, 257, 1, 16385, 33, 4099};
            global_index = {0, 0, 1, 2, 3, 4, 5, 6};
        }
        koala_shard sh{};
        sh.struct_size = sizeof sh;
        sh.n_global = kSizes.size();
        sh.global_index = global_index.data();
        sh.global_elements = variant == 0 ? total + 5 : total;
        sh.allreduce = identity_allreduce;
        Rig r(m, KOALA_FLOAT32, 0, sizes);
        koala_optimizer *opt = nullptr;
        KOALA_CHECK(koala_create_sharded(&cfg, sizes.size(), sizes.data(), &sh, KOALA_FLOAT32,
                                         KOALA_DEVICE, &opt));
        std::swap(opt, r.opt);
        koala_destroy(opt);
        r.inputs(0);
        KOALA_CHECK(koala_predict(r.opt, r.xp.data(), r.s));
        const Snapshot p = snapshot(r);
        std::vector<const void *> g = r.gp;
        if (variant == 1) g[1] = nullptr;
        CHECK(koala_update(r.opt, 1.0, 2.0, r.xp.data(), g.data(), r.s) == KOALA_OK, "%s",
              koala_last_error());
        expect_skipped(variant == 0 ? "skip sharded: elements do not add up"
                                    : "skip sharded: NULL pattern differs between pieces",
                       r, p, 1);
    }
}

// A sharded update whose all-reduce fails changes nothing, caller-owned
// state included (its phase too); koala_update_begin marks the phase.
int failing_allreduce(double *, size_t, void *, void *) { return 7; }

void communication_test() {
    const Method &m = kMethods[1];
    koala_config cfg = config_of(m);
    cfg.caller_state = 1;
    const std::vector<size_t> global_index = {0, 1, 2, 3, 4, 5, 6};
    uint64_t total = 0;
    for (size_t sz : kSizes) total += sz;
    koala_shard sh{};
    sh.struct_size = sizeof sh;
    sh.n_global = kSizes.size();
    sh.global_index = global_index.data();
    sh.global_elements = total;
    sh.allreduce = failing_allreduce;
    Rig r(m, KOALA_FLOAT32, 0, kSizes, &cfg);
    koala_optimizer *opt = nullptr;
    KOALA_CHECK(koala_create_sharded(&cfg, kSizes.size(), kSizes.data(), &sh, KOALA_FLOAT32,
                                     KOALA_DEVICE, &opt));
    std::swap(opt, r.opt);
    koala_destroy(opt);
    size_t count = 0;
    KOALA_CHECK(koala_state_layout(r.opt, nullptr, nullptr, &count));
    std::vector<void *> buffers;
    for (int b = 0; b < 2; ++b)
        for (size_t sz : kSizes) {
            void *p = nullptr;
            CUDA_CHECK(cudaMalloc(&p, sz * 4));
            buffers.push_back(p);
        }
    double *scalars = nullptr;
    CUDA_CHECK(cudaMalloc(&scalars, count * sizeof(double)));
    KOALA_CHECK(koala_state_init(r.opt, buffers.data(), scalars, r.s));
    KOALA_CHECK(koala_bind_state(r.opt, buffers.data(), scalars));
    r.inputs(0);
    KOALA_CHECK(koala_predict(r.opt, r.xp.data(), r.s));
    const std::vector<Bytes> p = r.params();
    const Bytes c = r.state();
    const koala_status st = koala_update(r.opt, 1.0, 2.0, r.xp.data(), r.gp.data(), r.s);
    CHECK(st == KOALA_ERROR_COMMUNICATION, "communication: a failing all-reduce returned %d",
          static_cast<int>(st));
    CHECK(r.params() == p && r.state() == c, "communication: a failed update changed the state");
    double *sums = nullptr;
    size_t n_sums = 0;
    KOALA_CHECK(koala_sums_size(r.opt, &n_sums));
    CUDA_CHECK(cudaMalloc(&sums, n_sums * sizeof(double)));
    KOALA_CHECK(koala_update_begin(r.opt, r.xp.data(), r.gp.data(), sums, r.s));
    std::vector<double> block(count);
    CUDA_CHECK(cudaMemcpy(block.data(), scalars, count * sizeof(double), cudaMemcpyDeviceToHost));
    CHECK(block[8] == 2.0, "communication: the phase after koala_update_begin is %g", block[8]);
    KOALA_CHECK(koala_update_end(r.opt, 1.0, 2.0, r.xp.data(), r.gp.data(), sums, r.s));
    CUDA_CHECK(cudaMemcpy(block.data(), scalars, count * sizeof(double), cudaMemcpyDeviceToHost));
    CHECK(block[8] == 0.0 && block[7] == 1.0, "communication: phase %g, steps %g after the update",
          block[8], block[7]);
    cudaFree(sums);
    for (void *q : buffers) cudaFree(q);
    cudaFree(scalars);
}

// ---- fold ------------------------------------------------------------------

void fold_test() {
    const Method &m = kMethods[0];
    koala_config cfg = config_of(m);
    koala_optimizer *host = nullptr;
    KOALA_CHECK(koala_create(&cfg, kSizes.size(), kSizes.data(), KOALA_FLOAT64, KOALA_HOST, &host));
    Rig r(m, KOALA_FLOAT64);
    HostTensors hx(KOALA_FLOAT64, kSizes);
    for (size_t t = 0; t < kSizes.size(); ++t) hx.t[t] = r.params()[t];
    std::vector<void *> hxp = hx.ptrs();
    for (int k = 0; k < 3; ++k) {
        r.inputs(k);
        HostTensors g = step_grads(KOALA_FLOAT64, kSizes, k);
        std::vector<void *> gp = g.ptrs();
        const std::vector<const void *> gc(gp.begin(), gp.end());
        KOALA_CHECK(koala_predict(host, hxp.data(), nullptr));
        KOALA_CHECK(koala_predict(r.opt, r.xp.data(), r.s));
        const koala_info hi = info_of(host, nullptr), di = info_of(r.opt, r.s);
        CHECK(hi.sigma == di.sigma && di.phase == 1,
              "fold: after predict %d sigma %.17g (host %.17g), phase %d", k, di.sigma, hi.sigma,
              di.phase);
        if (k == 1) {
            // A checkpoint between predict and update, into a fresh device
            // optimizer: it continues like the original.
            const Bytes c = r.state();
            Rig other(m, KOALA_FLOAT64);
            KOALA_CHECK(koala_state_load(other.opt, c.data(), c.size(), other.s));
            CHECK(info_of(other.opt, other.s).sigma == hi.sigma, "fold: the checkpoint lost sigma-hat");
            other.x.upload(r.x.download(r.s), other.s);
            other.inputs(k);
            KOALA_CHECK(koala_update(other.opt, 1.0, 2.0, other.xp.data(), other.gp.data(), other.s));
            KOALA_CHECK(koala_update(r.opt, 1.0, 2.0, r.xp.data(), r.gp.data(), r.s));
            CHECK(other.params() == r.params(), "fold: the loaded checkpoint continued differently");
        } else {
            KOALA_CHECK(koala_update(r.opt, 1.0, 2.0, r.xp.data(), r.gp.data(), r.s));
        }
        KOALA_CHECK(koala_update(host, 1.0, 2.0, hxp.data(), gc.data(), nullptr));
        CHECK(rel_diff(info_of(r.opt, r.s).sigma, info_of(host, nullptr).sigma) < 1e-12,
              "fold: after update %d sigma differs from the host's", k);
    }
    koala_destroy(host);
}

// ---- checkpoints -------------------------------------------------------------

void checkpoint_test(const Method &m, koala_dtype d) {
    const std::string name = name_of("ckpt", m, d);
    Rig a(m, d), b(m, d);
    for (int k = 0; k < 3; ++k) {
        a.step(k);
        b.step(k);
    }
    const Bytes ca = a.state();
    CHECK(ca == b.state(), "%s: two runs of the same steps give different checkpoints", name.c_str());
    // device -> device: a fresh optimizer continues bit for bit.
    Rig c(m, d);
    KOALA_CHECK(koala_state_load(c.opt, ca.data(), ca.size(), c.s));
    c.x.upload(a.x.download(a.s), c.s);
    CHECK(c.state() == ca, "%s: load then save is not the same bytes", name.c_str());
    for (int k = 3; k < 6; ++k) {
        a.step(k);
        c.step(k);
    }
    CHECK(a.params() == c.params() && a.state() == c.state(),
          "%s: device -> device did not continue bit for bit", name.c_str());
    // device -> host: the host run continues like the device run.
    koala_config cfg = config_of(m);
    koala_optimizer *host = nullptr;
    KOALA_CHECK(koala_create(&cfg, kSizes.size(), kSizes.data(), d, KOALA_HOST, &host));
    const Bytes c6 = a.state();
    KOALA_CHECK(koala_state_load(host, c6.data(), c6.size(), nullptr));
    HostTensors hx = a.x.download(a.s);
    std::vector<void *> hxp = hx.ptrs();
    for (int k = 6; k < 9; ++k) {
        a.step(k);
        HostTensors g = step_grads(d, kSizes, k);
        std::vector<void *> gp = g.ptrs();
        const std::vector<const void *> gc(gp.begin(), gp.end());
        KOALA_CHECK(koala_predict(host, hxp.data(), nullptr));
        KOALA_CHECK(koala_update(host, step_loss(k), 1.5 * step_loss(k) * step_loss(k), hxp.data(),
                                 gc.data(), nullptr));
    }
    const double tol = d == KOALA_FLOAT64 ? 1e-12 : d == KOALA_FLOAT32 ? 2e-6 : 2e-3;
    const HostTensors ax = a.x.download(a.s);
    double worst = 0.0;
    for (size_t t = 0; t < kSizes.size(); ++t) worst = std::max(worst, diff(d, ax.t[t], hx.t[t]).rel);
    CHECK(worst <= tol, "%s: device -> host continued differently (%.3g)", name.c_str(), worst);
    // host -> device: a device optimizer continues like the host.
    const Bytes ch = checkpoint(host, nullptr);
    Rig e(m, d);
    KOALA_CHECK(koala_state_load(e.opt, ch.data(), ch.size(), e.s));
    e.x.upload(hx, e.s);
    for (int k = 9; k < 11; ++k) {
        e.step(k);
        HostTensors g = step_grads(d, kSizes, k);
        std::vector<void *> gp = g.ptrs();
        const std::vector<const void *> gc(gp.begin(), gp.end());
        KOALA_CHECK(koala_predict(host, hxp.data(), nullptr));
        KOALA_CHECK(koala_update(host, step_loss(k), 1.5 * step_loss(k) * step_loss(k), hxp.data(),
                                 gc.data(), nullptr));
    }
    const HostTensors ex = e.x.download(e.s);
    worst = 0.0;
    for (size_t t = 0; t < kSizes.size(); ++t) worst = std::max(worst, diff(d, ex.t[t], hx.t[t]).rel);
    CHECK(worst <= tol, "%s: host -> device continued differently (%.3g)", name.c_str(), worst);
    // A corrupt checkpoint changes nothing.
    Bytes bad = e.state();
    const Bytes before = bad;
    bad[bad.size() / 2] ^= 0x40;
    CHECK(koala_state_load(e.opt, bad.data(), bad.size(), e.s) == KOALA_ERROR_BAD_STATE,
          "%s: a corrupt checkpoint loaded", name.c_str());
    CHECK(e.state() == before, "%s: a failed load changed the state", name.c_str());
    koala_destroy(host);
}

// Caller-owned state: koala_state_save/load through the bound memory, and a
// load that cannot stage the buffers (no device memory left) changes nothing.
void caller_checkpoint_test(const Method &m) {
    const std::string name = name_of("ckpt caller", m, KOALA_FLOAT32);
    koala_config cfg = config_of(m);
    cfg.caller_state = 1;
    Rig r(m, KOALA_FLOAT32, 0, kSizes, &cfg);
    size_t per = 0, count = 0;
    KOALA_CHECK(koala_state_layout(r.opt, &per, nullptr, &count));
    std::vector<void *> buffers;
    for (size_t b = 0; b < per; ++b)
        for (size_t sz : kSizes) {
            void *p = nullptr;
            CUDA_CHECK(cudaMalloc(&p, sz * 4));
            buffers.push_back(p);
        }
    double *scalars = nullptr;
    CUDA_CHECK(cudaMalloc(&scalars, count * sizeof(double)));
    KOALA_CHECK(koala_state_init(r.opt, buffers.data(), scalars, r.s));
    KOALA_CHECK(koala_bind_state(r.opt, buffers.data(), scalars));
    for (int k = 0; k < 2; ++k) r.step(k);
    const Bytes c2 = r.state();
    for (int k = 2; k < 4; ++k) r.step(k);
    const Bytes c4 = r.state();
    // Leave less device memory than the stage needs.
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    size_t stage = 0;
    for (size_t sz : kSizes) stage += per * sz * 4;
    void *filler = nullptr;
    size_t want = free_bytes > stage / 2 ? free_bytes - stage / 2 : 0;
    while (want > 0 && cudaMalloc(&filler, want) != cudaSuccess) {
        cudaGetLastError();
        want -= want / 64 + 1;
        filler = nullptr;
    }
    if (per > 0) {
        const koala_status st = koala_state_load(r.opt, c2.data(), c2.size(), r.s);
        CHECK(st == KOALA_ERROR_OUT_OF_MEMORY, "%s: a load without memory to stage returned %d: %s",
              name.c_str(), static_cast<int>(st), koala_last_error());
        CHECK(r.state() == c4, "%s: the failed load changed the state", name.c_str());
    }
    if (filler) CUDA_CHECK(cudaFree(filler));
    KOALA_CHECK(koala_state_load(r.opt, c2.data(), c2.size(), r.s));
    CHECK(r.state() == c2, "%s: load then save is not the same bytes", name.c_str());
    // A failed CUDA call left nothing behind: the next step runs.
    r.step(2);
    CUDA_CHECK(cudaStreamSynchronize(r.s));
    for (void *p : buffers) cudaFree(p);
    cudaFree(scalars);
}

// ---- host pointers and alignment -----------------------------------------

// `call` must fail with INVALID_ARGUMENT naming `needle` and leave r as it was.
template <class F>
void expect_rejected(const std::string &what, Rig &r, const char *needle, F call) {
    const std::vector<Bytes> p = r.params();
    const Bytes c = r.state();
    const koala_status st = call();
    CHECK(st == KOALA_ERROR_INVALID_ARGUMENT && contains(koala_last_error(), needle),
          "%s: status %d, message \"%s\" (expected INVALID_ARGUMENT naming %s)", what.c_str(),
          static_cast<int>(st), koala_last_error(), needle);
    CHECK(r.params() == p && r.state() == c, "%s: a rejected call changed something", what.c_str());
}

void pointer_test(const Method &m) {
    const std::string name = name_of("pointers", m, KOALA_FLOAT32);
    Rig r(m, KOALA_FLOAT32);
    r.step(0);
    r.inputs(1);
    std::vector<float> host_mem(20000);
    float *pinned = nullptr;
    CUDA_CHECK(cudaMallocHost(&pinned, 20000 * sizeof(float)));
    std::vector<void *> x = r.xp;
    std::vector<const void *> g = r.gp;
    if (m.method == KOALA_MOMENTUM) {
        x[2] = host_mem.data();
        expect_rejected(name + " predict host params", r, "params[2]", [&] {
            return koala_predict(r.opt, x.data(), r.s);
        });
        x[2] = static_cast<unsigned char *>(r.xp[2]) + 2;
        expect_rejected(name + " predict misaligned params", r, "params[2]", [&] {
            return koala_predict(r.opt, x.data(), r.s);
        });
        CHECK(contains(koala_last_error(), "aligned"), "%s: %s", name.c_str(), koala_last_error());
        x = r.xp;
    }
    KOALA_CHECK(koala_predict(r.opt, r.xp.data(), r.s));
    x[4] = host_mem.data();
    expect_rejected(name + " host params", r, "params[4]", [&] {
        return koala_update(r.opt, 1.0, 2.0, x.data(), g.data(), r.s);
    });
    CHECK(contains(koala_last_error(), "host memory"), "%s: %s", name.c_str(), koala_last_error());
    x = r.xp;
    g[3] = pinned;
    expect_rejected(name + " pinned grads", r, "grads[3]", [&] {
        return koala_update(r.opt, 1.0, 2.0, x.data(), g.data(), r.s);
    });
    CHECK(contains(koala_last_error(), "pinned"), "%s: %s", name.c_str(), koala_last_error());
    g = r.gp;
    g[5] = static_cast<const unsigned char *>(r.gp[5]) + 1;
    expect_rejected(name + " misaligned grads", r, "grads[5]", [&] {
        return koala_update(r.opt, 1.0, 2.0, x.data(), g.data(), r.s);
    });
    g = r.gp;
    x[0] = static_cast<unsigned char *>(r.xp[0]) + 3;
    expect_rejected(name + " misaligned params", r, "params[0]", [&] {
        return koala_update(r.opt, 1.0, 2.0, x.data(), g.data(), r.s);
    });
    x = r.xp;
    double host_loss[2] = {1.0, 2.0};
    expect_rejected(name + " host loss", r, "loss", [&] {
        return koala_update_ptr(r.opt, host_loss, host_loss + 1, KOALA_FLOAT64, x.data(), g.data(), r.s);
    });
    expect_rejected(name + " misaligned loss_var", r, "loss_var", [&] {
        return koala_update_ptr(r.opt, r.loss, reinterpret_cast<unsigned char *>(r.loss) + 4,
                                KOALA_FLOAT64, x.data(), g.data(), r.s);
    });
    std::vector<double> host_sums(64);
    expect_rejected(name + " host sums", r, "sums", [&] {
        return koala_update_begin(r.opt, x.data(), g.data(), host_sums.data(), r.s);
    });
    // After all of these the update still runs (no fault was raised).
    KOALA_CHECK(koala_update(r.opt, 1.0, 2.0, x.data(), g.data(), r.s));
    // Posterior outputs.
    DeviceTensors out(KOALA_FLOAT32, kSizes);
    std::vector<void *> o = out.ptrs();
    o[6] = host_mem.data();
    expect_rejected(name + " host posterior out", r, "out[6]", [&] {
        return koala_posterior(r.opt, x.data(), o.data(), r.s);
    });
    o = out.ptrs();
    KOALA_CHECK(koala_posterior(r.opt, x.data(), o.data(), r.s));
    CUDA_CHECK(cudaStreamSynchronize(r.s));
    CUDA_CHECK(cudaFreeHost(pinned));
}

void caller_pointer_test(const Method &m) {
    if (m.method == KOALA_VANILLA) return;
    const std::string name = name_of("pointers caller", m, KOALA_FLOAT32);
    koala_config cfg = config_of(m);
    cfg.caller_state = 1;
    Rig r(m, KOALA_FLOAT32, 0, kSizes, &cfg);
    std::vector<void *> buffers;
    for (int b = 0; b < 2; ++b)
        for (size_t sz : kSizes) {
            void *p = nullptr;
            CUDA_CHECK(cudaMalloc(&p, sz * 4 + 16));
            buffers.push_back(p);
        }
    double *scalars = nullptr;
    CUDA_CHECK(cudaMalloc(&scalars, 64 * sizeof(double)));
    std::vector<float> host_mem(20000);
    std::vector<void *> bad = buffers;
    bad[9] = host_mem.data();
    CHECK(koala_bind_state(r.opt, bad.data(), scalars) == KOALA_ERROR_INVALID_ARGUMENT &&
              contains(koala_last_error(), "buffers[9]"),
          "%s: host buffer bound: %s", name.c_str(), koala_last_error());
    CHECK(koala_state_init(r.opt, bad.data(), scalars, r.s) == KOALA_ERROR_INVALID_ARGUMENT,
          "%s: host buffer initialised", name.c_str());
    bad = buffers;
    bad[3] = static_cast<unsigned char *>(buffers[3]) + 2;
    CHECK(koala_bind_state(r.opt, bad.data(), scalars) == KOALA_ERROR_INVALID_ARGUMENT &&
              contains(koala_last_error(), "buffers[3]") && contains(koala_last_error(), "aligned"),
          "%s: misaligned buffer bound: %s", name.c_str(), koala_last_error());
    std::vector<double> host_scalars(64);
    CHECK(koala_bind_state(r.opt, buffers.data(), host_scalars.data()) ==
                  KOALA_ERROR_INVALID_ARGUMENT &&
              contains(koala_last_error(), "scalars"),
          "%s: host scalars bound: %s", name.c_str(), koala_last_error());
    CHECK(koala_predict(r.opt, r.xp.data(), r.s) == KOALA_ERROR_BAD_STATE,
          "%s: predict ran with nothing bound", name.c_str());
    for (void *p : buffers) cudaFree(p);
    cudaFree(scalars);
}

// Element-aligned, not 16-byte aligned parameters and gradients (and
// caller state) give the same bits as 16-byte aligned ones.
void alignment_paths_test(const Method &m, koala_dtype d) {
    const std::string name = name_of("align", m, d);
    Rig a(m, d, 0), b(m, d, elem_size(d));
    for (int k = 0; k < 4; ++k) {
        a.step(k);
        b.step(k);
    }
    CHECK(a.params() == b.params(), "%s: misaligned parameters gave other bits", name.c_str());
    CHECK(a.state() == b.state(), "%s: misaligned parameters gave another state", name.c_str());
    if (m.method == KOALA_VANILLA || d != KOALA_FLOAT32) return;
    // Caller state 4 bytes off 16-byte alignment, against library-owned state.
    koala_config cfg = config_of(m);
    cfg.caller_state = 1;
    Rig c(m, d, 0, kSizes, &cfg);
    std::vector<void *> buffers, bases;
    for (int k = 0; k < 2; ++k)
        for (size_t sz : kSizes) {
            unsigned char *p = nullptr;
            CUDA_CHECK(cudaMalloc(&p, sz * 4 + 4));
            bases.push_back(p);
            buffers.push_back(p + 4);
        }
    size_t count = 0;
    KOALA_CHECK(koala_state_layout(c.opt, nullptr, nullptr, &count));
    double *scalars = nullptr;
    CUDA_CHECK(cudaMalloc(&scalars, count * sizeof(double)));
    KOALA_CHECK(koala_state_init(c.opt, buffers.data(), scalars, c.s));
    KOALA_CHECK(koala_bind_state(c.opt, buffers.data(), scalars));
    for (int k = 0; k < 4; ++k) c.step(k);
    CHECK(c.params() == a.params(), "%s: misaligned caller state gave other bits", name.c_str());
    CHECK(checkpoint_buffers(c.state(), m.method, d, kSizes) ==
              checkpoint_buffers(a.state(), m.method, d, kSizes),
          "%s: misaligned caller state gave another state", name.c_str());
    for (void *p : bases) cudaFree(p);
    cudaFree(scalars);
}

// ---- devices -------------------------------------------------------------

void device_test() {
    int count = 0;
    CUDA_CHECK(cudaGetDeviceCount(&count));
    if (count < 2) {
        std::printf("  device: one CUDA device; the wrong-device checks need two (not run)\n");
        return;
    }
    const Method &m = kMethods[1];
    DeviceTensors on0(KOALA_FLOAT32, kSizes);  // device 0 memory
    CUDA_CHECK(cudaSetDevice(1));
    {
        Rig r(m, KOALA_FLOAT32);  // lives on device 1, with its memory and stream
        r.inputs(0);
        // Every koala call from device 0: the optimizer's calls run on device 1.
        CUDA_CHECK(cudaSetDevice(0));
        KOALA_CHECK(koala_predict(r.opt, r.xp.data(), r.s));
        int current = -1;
        CUDA_CHECK(cudaGetDevice(&current));
        CHECK(current == 0, "device: the current device is %d after a call (expected 0)", current);
        std::vector<void *> x = r.xp;
        x[1] = on0.p[1];
        const koala_status st = koala_update(r.opt, 1.0, 2.0, x.data(), r.gp.data(), r.s);
        CHECK(st == KOALA_ERROR_INVALID_ARGUMENT && contains(koala_last_error(), "params[1]") &&
                  contains(koala_last_error(), "device 0") &&
                  contains(koala_last_error(), "device 1"),
              "device: params of device 0: %d %s", static_cast<int>(st), koala_last_error());
        KOALA_CHECK(koala_update(r.opt, 1.0, 2.0, r.xp.data(), r.gp.data(), r.s));
        CUDA_CHECK(cudaGetDevice(&current));
        CHECK(current == 0, "device: the current device is %d after a call (expected 0)", current);
        const koala_info info = info_of(r.opt, r.s);
        CHECK(info.steps == 1 && info.skipped_steps == 0, "device: steps %llu, skipped %llu",
              static_cast<unsigned long long>(info.steps),
              static_cast<unsigned long long>(info.skipped_steps));
        CUDA_CHECK(cudaSetDevice(1));
    }
    CUDA_CHECK(cudaSetDevice(0));
}

// ---- lifetime --------------------------------------------------------------

void lifetime_test() {
    // Create, step and destroy while this thread captures another stream in
    // global mode: a device-wide synchronisation (or an unsafe allocation)
    // would break the capture. The test's own memory is made before.
    cudaStream_t cap, s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&cap, cudaStreamNonBlocking));
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    DeviceTensors x(KOALA_FLOAT32, kSizes), g(KOALA_FLOAT32, kSizes);
    x.upload(HostTensors(KOALA_FLOAT32, kSizes), s);
    g.upload(step_grads(KOALA_FLOAT32, kSizes, 0), s);
    std::vector<void *> xp = x.ptrs(), gp = g.ptrs();
    const std::vector<const void *> gc(gp.begin(), gp.end());
    CUDA_CHECK(cudaStreamBeginCapture(cap, cudaStreamCaptureModeGlobal));
    for (const Method &m : kMethods) {
        koala_config cfg = config_of(m);
        koala_optimizer *opt = nullptr;
        KOALA_CHECK(koala_create(&cfg, kSizes.size(), kSizes.data(), KOALA_FLOAT32, KOALA_DEVICE, &opt));
        KOALA_CHECK(koala_predict(opt, xp.data(), s));
        KOALA_CHECK(koala_update(opt, 1.0, 2.0, xp.data(), gc.data(), s));
        // Destroyed right after the update, unsynchronised: the frees wait in
        // the stream for the queued kernels.
        koala_destroy(opt);
    }
    cudaGraph_t graph = nullptr;
    const cudaError_t e = cudaStreamEndCapture(cap, &graph);
    CHECK(e == cudaSuccess, "lifetime: create/destroy broke another stream's capture: %s",
          cudaGetErrorString(e));
    if (graph) cudaGraphDestroy(graph);
    const cudaError_t sync = cudaStreamSynchronize(s);
    CHECK(sync == cudaSuccess, "lifetime: the updates before destroy failed: %s",
          cudaGetErrorString(sync));
    CUDA_CHECK(cudaStreamDestroy(cap));
    CUDA_CHECK(cudaStreamDestroy(s));
}

// ---- sticky (child process) ------------------------------------------------

__global__ void fault_kernel(int *p) { *p = 1; }

int sticky_child() {
    // A failed CUDA call (here: an allocation too large for the device)
    // leaves no error behind for the next call.
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    const std::vector<size_t> huge = {total_bytes};
    koala_config cfg = config_of(kMethods[1]);
    koala_optimizer *too_big = nullptr;
    const koala_status st = koala_create(&cfg, 1, huge.data(), KOALA_FLOAT32, KOALA_DEVICE, &too_big);
    CHECK(st == KOALA_ERROR_OUT_OF_MEMORY, "sticky: an optimizer larger than the device: %d (%s)",
          static_cast<int>(st), koala_last_error());
    Rig r(kMethods[1], KOALA_FLOAT32);
    r.step(0);
    CUDA_CHECK(cudaStreamSynchronize(r.s));
    // A kernel fault poisons the context: every call fails first.
    KOALA_LAUNCH(1, 1, 0, r.s, fault_kernel)(reinterpret_cast<int *>(16));
    CHECK(cudaStreamSynchronize(r.s) != cudaSuccess, "sticky: the faulting kernel did not fault");
    const koala_status p = koala_predict(r.opt, r.xp.data(), r.s);
    CHECK(p == KOALA_ERROR_CUDA && contains(koala_last_error(), "nothing was done"),
          "sticky: predict on a faulted device returned %d (%s)", static_cast<int>(p),
          koala_last_error());
    koala_info info{};
    info.struct_size = sizeof info;
    const koala_status i = koala_get_info(r.opt, r.s, &info);
    CHECK(i == KOALA_ERROR_CUDA, "sticky: get_info on a faulted device returned %d", static_cast<int>(i));
#if !defined(__CUDACC__)
    // The fault was provoked: the harness reported it as a violation.
    CHECK(koala_harness::take_violations() == 1, "sticky: the harness saw no fault");
#endif
    std::fflush(nullptr);
    // The context is gone: nothing can be freed, so do not run the exit
    // handlers that would report the memory.
    _exit(g_failures ? 1 : 0);
}

void sticky_test(const char *self) {
    char arg0[] = "test_device_contract";
    char arg1[] = "sticky";
    char *argv[] = {arg0, arg1, nullptr};
    pid_t pid = 0;
    if (posix_spawn(&pid, self, nullptr, nullptr, argv, environ) != 0) {
        CHECK(false, "sticky: cannot start %s", self);
        return;
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "sticky: the child failed (status %d)",
          status);
}

}  // namespace

int main(int argc, char **argv) {
    skip_without_gpu();
    if (argc > 1 && std::strcmp(argv[1], "sticky") == 0) return sticky_child();
    launches_test();
    for (const Method &m : kMethods) {
        graph_test(m, KOALA_FLOAT32);
        skip_test(m);
        pointer_test(m);
        caller_pointer_test(m);
        caller_checkpoint_test(m);
        for (koala_dtype d : kDtypes) {
            checkpoint_test(m, d);
            alignment_paths_test(m, d);
        }
    }
    graph_test(kMethods[3], KOALA_BFLOAT16);
    skip_sharded_test();
    communication_test();
    fold_test();
    device_test();
    lifetime_test();
    const char *no_fault = std::getenv("KOALA_GPU_TEST_NO_FAULT");
    if (no_fault && std::strcmp(no_fault, "1") == 0)
        std::printf("  sticky: not run (KOALA_GPU_TEST_NO_FAULT=1)\n");
    else
        sticky_test("/proc/self/exe");
    return finish("test_device_contract");
}
