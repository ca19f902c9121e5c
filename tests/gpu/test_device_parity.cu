// The device path against the host path on identical inputs (the host path
// is itself checked against an independent float64 reference in tests/c).
//
//  exact    the first update (and the next predict) of every method and
//           dtype on data whose sums are exact in float32 and float64: both
//           paths then compute the same coefficients, and every parameter,
//           state element and filter scalar must have the same BITS (the
//           element math is shared and neither path contracts to FMA).
//  steps    every method (KOALA-V, KOALA-M, fused KOALA-M, KOALA++ symmetric
//           and asymmetric) x dtype (float32, float64, bfloat16, float16; the
//           16-bit ones also with stochastic rounding) over 100 steps
//           (KOALA_GPU_TEST_STEPS overrides), mixing koala_update,
//           koala_update_ptr (float64 and float32 device loss) and the
//           two-phase koala_update_begin/end; per-tensor lr multipliers and
//           weight decays set, changed and reset on the way; NULL and tiny
//           (skipped) gradients; koala_posterior at the end. Parameters
//           and state buffers must agree norm-relatively per tensor, filter
//           scalars relatively, within the dtype's tolerance below.
//  sharded  two processes' pieces (split tensors, tensors on one process
//           only) through koala_update_begin / summed buffers /
//           koala_update_end, and one process whose tensors are split into
//           pieces through koala_update's all-reduce callback: both against
//           the unsharded host run.
//  caller   caller-owned device state (koala_state_init, koala_bind_state),
//           moved to new device memory before every step as JAX does.
//  wide     200 tensors (the large pointer table) and 961 tensors (two
//           launches per pass, KOALA-M's last-block reduction across them),
//           float64.
//
// Tolerances: float64 1e-12. float32 2e-6: the host adds float32 data in
// float32 blocks, the device in float64, so the coefficients differ in the
// 7th digit and an element's last bit now and then. bfloat16 / float16 such
// a coefficient difference flips a rounding now and then, 1 ulp = 2^-8 /
// 2^-11 of the element: 2e-3 / 5e-4 norm-relative (a wrong update moves
// every element and is far outside these). What a run reached here (the CPU
// harness computes the same bits as a GPU: same operations, same order):
// float64 3.2e-15, float32 8.5e-7, bfloat16 0 (every bit equal), float16
// 1.3e-5 (KOALA-M, 100 steps).
#include <algorithm>
#include <cstdlib>
#include <string>

#include "device_runs.h"

using namespace runs;

namespace {

struct Method {
    const char *name;
    koala_method method;
    int fused;
    int asymmetric;
};
const Method kMethods[] = {
    {"V", KOALA_VANILLA, 0, 0},  {"M", KOALA_MOMENTUM, 0, 0},  {"Mf", KOALA_MOMENTUM, 1, 0},
    {"PP", KOALA_PLUSPLUS, 0, 0}, {"PPa", KOALA_PLUSPLUS, 0, 1},
};
const koala_dtype kDtypes[] = {KOALA_FLOAT32, KOALA_FLOAT64, KOALA_BFLOAT16, KOALA_FLOAT16};

// Tensor roles: tensor 0 has no gradient every third step, tensor 1 a tiny
// one (norm < 1e-9: skipped); 16385 = one chunk of the device path and one
// element; 257 and 33 end in partial groups.
const std::vector<size_t> kSizes = {1000, 300, 257, 1, 16385, 33, 4099};

int g_steps = 100;

double tolerance(koala_dtype d) {
    switch (d) {
        case KOALA_FLOAT64: return 1e-12;
        case KOALA_FLOAT32: return 2e-6;
        case KOALA_BFLOAT16: return 2e-3;
        default: return 5e-4;
    }
}
// Filter scalars are float64 everywhere; they inherit the sums' difference.
double scalar_tolerance(koala_dtype d) { return d == KOALA_FLOAT64 ? 1e-12 : 1e-5; }

koala_config config_of(const Method &m, bool stochastic, double wd) {
    koala_config cfg;
    koala_config_init(&cfg, m.method);
    cfg.weight_decay = wd;
    if (m.method == KOALA_VANILLA) cfg.sigma = 0.1;
    cfg.fused_predict = m.fused;
    cfg.asymmetric = m.asymmetric;
    cfg.stochastic_rounding = stochastic ? 1 : 0;
    cfg.seed = 0x5eedull;
    return cfg;
}

std::string label(const Method &m, koala_dtype d, bool sr, const char *what) {
    return std::string(what) + " " + m.name + " " + dtype_name(d) + (sr ? "+SR" : "");
}

double step_loss(int k) { return 1.0 + 0.25 * std::cos(0.7 * k); }

// Gradients of a noisy quadratic evaluated on the HOST run's parameters
// and handed to both runs, so that only the optimizers can make them
// differ. Tensor 0: none every third step; tensor 1: tiny.
HostTensors gradients(const HostTensors &x, int k, std::vector<bool> &present) {
    HostTensors g(x.dtype, x.sizes);
    Rng rng(1000 + static_cast<uint64_t>(k));
    present.assign(x.sizes.size(), true);
    present[0] = k % 3 != 2;
    for (size_t t = 0; t < x.sizes.size(); ++t) {
        const double scale = t == 1 ? 1e-14 : 1.0;
        for (size_t i = 0; i < x.sizes[t]; ++i)
            g.set(t, i, scale * (0.5 * x.at(t, i) + 0.1 * rng.uniform()));
    }
    return g;
}

HostTensors initial_params(koala_dtype d, const std::vector<size_t> &sizes, uint64_t seed) {
    HostTensors x(d, sizes);
    Rng rng(seed);
    for (size_t t = 0; t < sizes.size(); ++t)
        for (size_t i = 0; i < sizes[t]; ++i) x.set(t, i, rng.uniform());
    return x;
}

// The per-tensor hyper-parameters both runs get on the way: lr multipliers
// from step 5, weight decays (zero on some tensors) from step 7, the lr
// multipliers reset at step 13.
void hyper_at(int k, size_t n_global, koala_optimizer *host, koala_optimizer *dev,
              cudaStream_t s) {
    std::vector<double> v(n_global);
    if (k == 5) {
        for (size_t j = 0; j < n_global; ++j) v[j] = 0.5 + 0.25 * static_cast<double>(j % 3);
        KOALA_CHECK(koala_set_tensor_lr(host, v.data(), nullptr));
        KOALA_CHECK(koala_set_tensor_lr(dev, v.data(), s));
    } else if (k == 7) {
        for (size_t j = 0; j < n_global; ++j) v[j] = j % 2 ? 1e-3 : 0.0;
        KOALA_CHECK(koala_set_tensor_weight_decay(host, v.data(), nullptr));
        KOALA_CHECK(koala_set_tensor_weight_decay(dev, v.data(), s));
    } else if (k == 13) {
        KOALA_CHECK(koala_set_tensor_lr(host, nullptr, nullptr));
        KOALA_CHECK(koala_set_tensor_lr(dev, nullptr, s));
    }
}

// Device memory for the loss pointers and a sums buffer.
struct DeviceScratch {
    double *loss64 = nullptr;
    float *loss32 = nullptr;
    double *sums = nullptr;
    explicit DeviceScratch(size_t sums_count) {
        CUDA_CHECK(cudaMalloc(&loss64, 2 * sizeof(double)));
        CUDA_CHECK(cudaMalloc(&loss32, 2 * sizeof(float)));
        CUDA_CHECK(cudaMalloc(&sums, sums_count * sizeof(double)));
    }
    ~DeviceScratch() {
        cudaFree(loss64);
        cudaFree(loss32);
        cudaFree(sums);
    }
};

// The loss of step k as the device mode of that step sees it (mode 3 reads
// a float32).
double loss_for(int k, int mode) {
    const double l = step_loss(k);
    return mode == 3 ? static_cast<double>(static_cast<float>(l)) : l;
}
double loss_var_for(int k, int mode) {
    const double v = 1.5 * step_loss(k) * step_loss(k);
    return mode == 3 ? static_cast<double>(static_cast<float>(v)) : v;
}

// One update of a device optimizer in mode k % 4: koala_update,
// koala_update_ptr (float64), update_begin + update_end,
// update_begin + update_end_ptr (float32).
void device_update(koala_optimizer *dev, int k, void *const *x, const void *const *g,
                   DeviceScratch &scratch, cudaStream_t s) {
    const int mode = k % 4;
    const double l = loss_for(k, mode), v = loss_var_for(k, mode);
    if (mode == 1) {
        const double lv[2] = {l, v};
        CUDA_CHECK(cudaMemcpyAsync(scratch.loss64, lv, sizeof lv, cudaMemcpyHostToDevice, s));
        KOALA_CHECK(koala_update_ptr(dev, scratch.loss64, scratch.loss64 + 1, KOALA_FLOAT64, x, g, s));
    } else if (mode == 3) {
        const float lv[2] = {static_cast<float>(l), static_cast<float>(v)};
        CUDA_CHECK(cudaMemcpyAsync(scratch.loss32, lv, sizeof lv, cudaMemcpyHostToDevice, s));
        KOALA_CHECK(koala_update_begin(dev, x, g, scratch.sums, s));
        KOALA_CHECK(koala_update_end_ptr(dev, scratch.loss32, scratch.loss32 + 1, KOALA_FLOAT32, x,
                                         g, scratch.sums, s));
    } else if (mode == 2) {
        KOALA_CHECK(koala_update_begin(dev, x, g, scratch.sums, s));
        KOALA_CHECK(koala_update_end(dev, l, v, x, g, scratch.sums, s));
    } else {
        KOALA_CHECK(koala_update(dev, l, v, x, g, s));
    }
}

std::vector<const void *> grad_ptrs(const std::vector<void *> &all, const std::vector<bool> &present) {
    std::vector<const void *> g(all.size());
    for (size_t t = 0; t < all.size(); ++t) g[t] = present[t] ? all[t] : nullptr;
    return g;
}

// Compares parameters, state buffers and filter scalars of a host and a
// device optimizer; `dev_x` are the device parameters as host bytes.
void compare(const std::string &name, int k, koala_method m, koala_dtype d,
             const HostTensors &host_x, const HostTensors &dev_x, const koala_optimizer *host,
             const koala_optimizer *dev, cudaStream_t s) {
    const double tol = tolerance(d);
    double worst = 0.0;
    size_t worst_t = 0;
    for (size_t t = 0; t < host_x.sizes.size(); ++t) {
        const Diff df = diff(d, dev_x.t[t], host_x.t[t]);
        if (df.rel > worst) {
            worst = df.rel;
            worst_t = t;
        }
    }
    CHECK(worst <= tol, "%s step %d: parameters of tensor %zu differ by %.3g (tolerance %.3g)",
          name.c_str(), k, worst_t, worst, tol);
    const koala_dtype sd = d == KOALA_FLOAT64 ? KOALA_FLOAT64 : KOALA_FLOAT32;
    const std::vector<Bytes> hb = checkpoint_buffers(checkpoint(host, nullptr), m, d, host_x.sizes);
    const std::vector<Bytes> db = checkpoint_buffers(checkpoint(dev, s), m, d, host_x.sizes);
    double worst_b = 0.0;
    for (size_t b = 0; b < hb.size(); ++b) worst_b = std::max(worst_b, diff(sd, db[b], hb[b]).rel);
    // Buffers are float32 for the 16-bit types: their tolerance is float32's
    // plus what a flipped parameter rounding feeds back.
    const double tol_b = d == KOALA_FLOAT64 ? tol : std::max(tol, 2e-6);
    CHECK(worst_b <= tol_b, "%s step %d: state buffers differ by %.3g (tolerance %.3g)",
          name.c_str(), k, worst_b, tol_b);
    const std::vector<double> hs = info_scalars(host, nullptr), ds = info_scalars(dev, s);
    double worst_s = 0.0;
    for (size_t i = 0; i < hs.size(); ++i) worst_s = std::max(worst_s, rel_diff(ds[i], hs[i]));
    CHECK(worst_s <= scalar_tolerance(d), "%s step %d: filter scalars differ by %.3g",
          name.c_str(), k, worst_s);
    if (std::getenv("KOALA_GPU_TEST_VERBOSE"))
        std::printf("  %-24s step %3d: params %.3g, buffers %.3g, scalars %.3g\n", name.c_str(), k,
                    worst, worst_b, worst_s);
}

bool checkpoint_step(int k, int steps) { return k == steps - 1 || k % 25 == 24; }

// ---- steps ---------------------------------------------------------------

void steps_run(const Method &m, koala_dtype d, bool sr) {
    const std::string name = label(m, d, sr, "steps");
    const koala_config cfg = config_of(m, sr, 5e-4);
    const size_t n = kSizes.size();
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    koala_optimizer *host = nullptr, *dev = nullptr;
    KOALA_CHECK(koala_create(&cfg, n, kSizes.data(), d, KOALA_HOST, &host));
    KOALA_CHECK(koala_create(&cfg, n, kSizes.data(), d, KOALA_DEVICE, &dev));
    size_t sums_count = 0;
    KOALA_CHECK(koala_sums_size(dev, &sums_count));
    DeviceScratch scratch(sums_count);
    HostTensors hx = initial_params(d, kSizes, 42);
    DeviceTensors dx(d, kSizes), dg(d, kSizes);
    dx.upload(hx, s);
    std::vector<void *> hxp = hx.ptrs(), dxp = dx.ptrs(), dgp = dg.ptrs();
    for (int k = 0; k < g_steps; ++k) {
        hyper_at(k, n, host, dev, s);
        KOALA_CHECK(koala_predict(host, hxp.data(), nullptr));
        KOALA_CHECK(koala_predict(dev, dxp.data(), s));
        std::vector<bool> present;
        HostTensors g = gradients(hx, k, present);
        dg.upload(g, s);
        std::vector<void *> hgp = g.ptrs();
        const std::vector<const void *> hgc = grad_ptrs(hgp, present), dgc = grad_ptrs(dgp, present);
        const int mode = k % 4;
        KOALA_CHECK(koala_update(host, loss_for(k, mode), loss_var_for(k, mode), hxp.data(),
                                 hgc.data(), nullptr));
        device_update(dev, k, dxp.data(), dgc.data(), scratch, s);
        if (checkpoint_step(k, g_steps))
            compare(name, k, m.method, d, hx, dx.download(s), host, dev, s);
    }
    {  // the posterior view of the last update (fused KOALA-M: x - v; others: a copy)
        HostTensors hout(d, kSizes);
        DeviceTensors dout(d, kSizes);
        std::vector<void *> houtp = hout.ptrs(), doutp = dout.ptrs();
        KOALA_CHECK(koala_posterior(host, hxp.data(), houtp.data(), nullptr));
        KOALA_CHECK(koala_posterior(dev, dxp.data(), doutp.data(), s));
        const HostTensors got = dout.download(s);
        double worst = 0.0;
        for (size_t t = 0; t < n; ++t) worst = std::max(worst, diff(d, got.t[t], hout.t[t]).rel);
        CHECK(worst <= tolerance(d), "%s: posterior differs by %.3g", name.c_str(), worst);
    }
    const koala_info info = info_of(dev, s);
    CHECK(info.skipped_steps == 0, "%s: %llu steps skipped on the device", name.c_str(),
          static_cast<unsigned long long>(info.skipped_steps));
    koala_destroy(host);
    koala_destroy(dev);
    CUDA_CHECK(cudaStreamDestroy(s));
}

// ---- exact ---------------------------------------------------------------

// Values k/16, |k| <= 16, weight decay 1/4: every product and partial sum
// of the first update is exact in float32 and float64, on both paths.
void exact_run(const Method &m, koala_dtype d) {
    const std::string name = label(m, d, false, "exact");
    koala_config cfg = config_of(m, false, 0.25);
    const size_t n = kSizes.size();
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    koala_optimizer *host = nullptr, *dev = nullptr;
    KOALA_CHECK(koala_create(&cfg, n, kSizes.data(), d, KOALA_HOST, &host));
    KOALA_CHECK(koala_create(&cfg, n, kSizes.data(), d, KOALA_DEVICE, &dev));
    HostTensors hx(d, kSizes), g(d, kSizes);
    Rng rng(7);
    for (size_t t = 0; t < n; ++t)
        for (size_t i = 0; i < kSizes[t]; ++i) {
            hx.set(t, i, std::floor(16.0 * rng.uniform() + 0.5) / 16.0);
            g.set(t, i, std::floor(16.0 * rng.uniform() + 0.5) / 16.0);
        }
    DeviceTensors dx(d, kSizes), dg(d, kSizes);
    dx.upload(hx, s);
    dg.upload(g, s);
    std::vector<void *> hxp = hx.ptrs(), dxp = dx.ptrs(), hgp = g.ptrs(), dgp = dg.ptrs();
    const std::vector<const void *> hgc(hgp.begin(), hgp.end()), dgc(dgp.begin(), dgp.end());
    auto same_bits = [&](const char *when, bool scalars) {
        const HostTensors got = dx.download(s);
        size_t differ = 0;
        for (size_t t = 0; t < n; ++t) differ += diff(d, got.t[t], hx.t[t]).bits_differ;
        CHECK(differ == 0, "%s %s: %zu parameters differ in their bits", name.c_str(), when, differ);
        const std::vector<Bytes> hb = checkpoint_buffers(checkpoint(host, nullptr), m.method, d, kSizes);
        const std::vector<Bytes> db = checkpoint_buffers(checkpoint(dev, s), m.method, d, kSizes);
        size_t bdiff = 0;
        for (size_t b = 0; b < hb.size(); ++b) bdiff += hb[b] != db[b];
        CHECK(bdiff == 0, "%s %s: %zu state buffers differ in their bits", name.c_str(), when, bdiff);
        if (scalars) {
            const std::vector<double> hs = info_scalars(host, nullptr), ds = info_scalars(dev, s);
            CHECK(std::memcmp(hs.data(), ds.data(), hs.size() * sizeof(double)) == 0,
                  "%s %s: filter scalars differ (sigma %.17g vs %.17g, p00 %.17g vs %.17g)",
                  name.c_str(), when, hs[0], ds[0], hs[1], ds[1]);
        }
    };
    KOALA_CHECK(koala_predict(host, hxp.data(), nullptr));
    KOALA_CHECK(koala_predict(dev, dxp.data(), s));
    same_bits("after the first predict", true);
    KOALA_CHECK(koala_update(host, 1.5, 3.0, hxp.data(), hgc.data(), nullptr));
    KOALA_CHECK(koala_update(dev, 1.5, 3.0, dxp.data(), dgc.data(), s));
    same_bits("after the first update", true);
    // KOALA-M's second predict reads the update's |xbar - x|^2 sum, added in
    // a different order on each path: the parameters must still agree.
    KOALA_CHECK(koala_predict(host, hxp.data(), nullptr));
    KOALA_CHECK(koala_predict(dev, dxp.data(), s));
    same_bits("after the second predict", m.method != KOALA_MOMENTUM);
    koala_destroy(host);
    koala_destroy(dev);
    CUDA_CHECK(cudaStreamDestroy(s));
}

// ---- sharded -------------------------------------------------------------

// A piece of a global tensor.
struct Piece {
    size_t global, begin, size;
};

// The model of kSizes cut over two processes: tensors 0 and 2 on A only,
// 1, 3, 5 on B only, 4 and 6 split between them.
const std::vector<Piece> kPiecesA = {{0, 0, 1000}, {4, 0, 10000}, {2, 0, 257}, {6, 0, 2000}};
const std::vector<Piece> kPiecesB = {{1, 0, 300}, {4, 10000, 6385}, {3, 0, 1}, {5, 0, 33}, {6, 2000, 2099}};
// One process holding every tensor, the larger ones in two pieces, out of order.
const std::vector<Piece> kPiecesOne = {{4, 8000, 8385}, {0, 0, 600},   {1, 0, 300}, {0, 600, 400},
                                       {2, 0, 257},     {4, 0, 8000},   {3, 0, 1},   {5, 0, 33},
                                       {6, 0, 4099}};

uint64_t total_elements() {
    uint64_t n = 0;
    for (size_t s : kSizes) n += s;
    return n;
}

// A sharded device optimizer of pieces, with its device parameters.
struct Shard {
    std::vector<Piece> pieces;
    std::vector<size_t> sizes, global_index;
    koala_optimizer *opt = nullptr;
    DeviceTensors *x = nullptr, *g = nullptr;
    std::vector<void *> xp, gp;
    double *sums = nullptr;
    size_t sums_count = 0;

    Shard(const std::vector<Piece> &p, const koala_config &cfg, koala_dtype d,
          koala_allreduce_fn allreduce, void *user)
        : pieces(p) {
        for (const Piece &q : p) {
            sizes.push_back(q.size);
            global_index.push_back(q.global);
        }
        koala_shard sh{};
        sh.struct_size = sizeof sh;
        sh.n_global = kSizes.size();
        sh.global_index = global_index.data();
        sh.global_elements = total_elements();
        sh.allreduce = allreduce;
        sh.user = user;
        KOALA_CHECK(koala_create_sharded(&cfg, sizes.size(), sizes.data(), &sh, d, KOALA_DEVICE, &opt));
        KOALA_CHECK(koala_sums_size(opt, &sums_count));
        CUDA_CHECK(cudaMalloc(&sums, sums_count * sizeof(double)));
        x = new DeviceTensors(d, sizes);
        g = new DeviceTensors(d, sizes);
        xp = x->ptrs();
        gp = g->ptrs();
    }
    ~Shard() {
        koala_destroy(opt);
        delete x;
        delete g;
        cudaFree(sums);
    }
    // The pieces of whole tensors `w` into device memory.
    void upload(const HostTensors &w, DeviceTensors &to, cudaStream_t s) const {
        HostTensors local(w.dtype, sizes);
        const size_t es = elem_size(w.dtype);
        for (size_t i = 0; i < pieces.size(); ++i)
            std::memcpy(local.t[i].data(), w.t[pieces[i].global].data() + pieces[i].begin * es,
                        pieces[i].size * es);
        to.upload(local, s);
    }
    // This shard's parameters written into their places of whole tensors `w`.
    void download_into(HostTensors &w, cudaStream_t s) const {
        const HostTensors local = x->download(s);
        const size_t es = elem_size(w.dtype);
        for (size_t i = 0; i < pieces.size(); ++i)
            std::memcpy(w.t[pieces[i].global].data() + pieces[i].begin * es, local.t[i].data(),
                        pieces[i].size * es);
    }
    std::vector<const void *> grads(const std::vector<bool> &present) const {
        std::vector<const void *> out(pieces.size());
        for (size_t i = 0; i < pieces.size(); ++i) out[i] = present[pieces[i].global] ? gp[i] : nullptr;
        return out;
    }
};

// What the all-reduce of the one-process run sees.
struct AllreduceLog {
    int calls = 0;
    size_t count = 0;
    bool device_memory = true;
    void *stream = nullptr;
};
int identity_allreduce(double *buf, size_t count, void *stream, void *user) {
    AllreduceLog *log = static_cast<AllreduceLog *>(user);
    ++log->calls;
    log->count = count;
    log->stream = stream;
    cudaPointerAttributes a{};
    if (cudaPointerGetAttributes(&a, buf) != cudaSuccess || a.type != cudaMemoryTypeDevice)
        log->device_memory = false;
    return 0;  // one process: the sum is the buffer itself
}

void sharded_run(const Method &m, koala_dtype d, bool two_processes) {
    const std::string name = label(m, d, false, two_processes ? "sharded-2" : "sharded-1");
    const koala_config cfg = config_of(m, false, 5e-4);
    const size_t n = kSizes.size();
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    koala_optimizer *host = nullptr;
    KOALA_CHECK(koala_create(&cfg, n, kSizes.data(), d, KOALA_HOST, &host));
    AllreduceLog log;
    std::vector<Shard *> shards;
    if (two_processes) {
        shards.push_back(new Shard(kPiecesA, cfg, d, nullptr, nullptr));
        shards.push_back(new Shard(kPiecesB, cfg, d, nullptr, nullptr));
    } else {
        shards.push_back(new Shard(kPiecesOne, cfg, d, identity_allreduce, &log));
    }
    HostTensors hx = initial_params(d, kSizes, 43);
    for (Shard *sh : shards) sh->upload(hx, *sh->x, s);
    std::vector<void *> hxp = hx.ptrs();
    const size_t count = shards[0]->sums_count;
    std::vector<double> total(count), part(count);
    for (int k = 0; k < g_steps; ++k) {
        KOALA_CHECK(koala_predict(host, hxp.data(), nullptr));
        for (Shard *sh : shards) KOALA_CHECK(koala_predict(sh->opt, sh->xp.data(), s));
        std::vector<bool> present;
        HostTensors g = gradients(hx, k, present);
        std::vector<void *> hgp = g.ptrs();
        const std::vector<const void *> hgc = grad_ptrs(hgp, present);
        const double l = step_loss(k), v = 1.5 * l * l;
        KOALA_CHECK(koala_update(host, l, v, hxp.data(), hgc.data(), nullptr));
        for (Shard *sh : shards) sh->upload(g, *sh->g, s);
        if (!two_processes) {
            const std::vector<const void *> dg = shards[0]->grads(present);
            KOALA_CHECK(koala_update(shards[0]->opt, l, v, shards[0]->xp.data(), dg.data(), s));
        } else {
            // Phase 1 on every process, the element-wise sum (what MPI or
            // NCCL would do), phase 2 on every process.
            std::fill(total.begin(), total.end(), 0.0);
            for (Shard *sh : shards) {
                const std::vector<const void *> dg = sh->grads(present);
                KOALA_CHECK(koala_update_begin(sh->opt, sh->xp.data(), dg.data(), sh->sums, s));
                CUDA_CHECK(cudaMemcpyAsync(part.data(), sh->sums, count * sizeof(double),
                                           cudaMemcpyDeviceToHost, s));
                CUDA_CHECK(cudaStreamSynchronize(s));
                for (size_t i = 0; i < count; ++i) total[i] += part[i];
            }
            for (Shard *sh : shards) {
                CUDA_CHECK(cudaMemcpyAsync(sh->sums, total.data(), count * sizeof(double),
                                           cudaMemcpyHostToDevice, s));
                CUDA_CHECK(cudaStreamSynchronize(s));
                const std::vector<const void *> dg = sh->grads(present);
                KOALA_CHECK(koala_update_end(sh->opt, l, v, sh->xp.data(), dg.data(), sh->sums, s));
            }
        }
        if (checkpoint_step(k, g_steps)) {
            HostTensors whole(d, kSizes);
            for (Shard *sh : shards) sh->download_into(whole, s);
            double worst = 0.0;
            for (size_t t = 0; t < n; ++t) worst = std::max(worst, diff(d, whole.t[t], hx.t[t]).rel);
            CHECK(worst <= tolerance(d), "%s step %d: parameters differ by %.3g", name.c_str(), k,
                  worst);
            const std::vector<double> hs = info_scalars(host, nullptr);
            for (Shard *sh : shards) {
                const std::vector<double> ds = info_scalars(sh->opt, s);
                double w = 0.0;
                for (size_t i = 0; i < hs.size(); ++i) w = std::max(w, rel_diff(ds[i], hs[i]));
                CHECK(w <= scalar_tolerance(d), "%s step %d: filter scalars differ by %.3g",
                      name.c_str(), k, w);
                CHECK(info_of(sh->opt, s).skipped_steps == 0, "%s: steps skipped", name.c_str());
            }
        }
    }
    if (!two_processes) {
        CHECK(log.calls == g_steps, "%s: the all-reduce ran %d times in %d updates", name.c_str(),
              log.calls, g_steps);
        CHECK(log.count == count && log.device_memory && log.stream == s,
              "%s: the all-reduce got %zu doubles (expected %zu), device memory %d, its stream %d",
              name.c_str(), log.count, count, log.device_memory ? 1 : 0, log.stream == s ? 1 : 0);
    }
    for (Shard *sh : shards) delete sh;
    koala_destroy(host);
    CUDA_CHECK(cudaStreamDestroy(s));
}

// ---- caller-owned state ----------------------------------------------------

struct CallerState {
    std::vector<void *> buffers;
    double *scalars = nullptr;
};
CallerState caller_alloc(const koala_optimizer *opt, const std::vector<size_t> &sizes) {
    size_t per = 0, count = 0;
    koala_dtype sd;
    KOALA_CHECK(koala_state_layout(opt, &per, &sd, &count));
    CallerState c;
    for (size_t b = 0; b < per; ++b)
        for (size_t sz : sizes) {
            void *p = nullptr;
            CUDA_CHECK(cudaMalloc(&p, sz * elem_size(sd)));
            c.buffers.push_back(p);
        }
    CUDA_CHECK(cudaMalloc(&c.scalars, count * sizeof(double)));
    return c;
}
void caller_free(CallerState &c) {
    for (void *p : c.buffers) cudaFree(p);
    cudaFree(c.scalars);
    c = CallerState{};
}

void caller_run(const Method &m, koala_dtype d) {
    const std::string name = label(m, d, false, "caller");
    koala_config cfg = config_of(m, false, 5e-4);
    const size_t n = kSizes.size();
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    koala_optimizer *host = nullptr, *dev = nullptr;
    KOALA_CHECK(koala_create(&cfg, n, kSizes.data(), d, KOALA_HOST, &host));
    cfg.caller_state = 1;
    KOALA_CHECK(koala_create(&cfg, n, kSizes.data(), d, KOALA_DEVICE, &dev));
    size_t count = 0, per = 0;
    KOALA_CHECK(koala_state_layout(dev, &per, nullptr, &count));
    CallerState st = caller_alloc(dev, kSizes);
    KOALA_CHECK(koala_state_init(dev, st.buffers.data(), st.scalars, s));
    KOALA_CHECK(koala_bind_state(dev, st.buffers.data(), st.scalars));
    HostTensors hx = initial_params(d, kSizes, 44);
    DeviceTensors dx(d, kSizes), dg(d, kSizes);
    dx.upload(hx, s);
    std::vector<void *> hxp = hx.ptrs(), dxp = dx.ptrs(), dgp = dg.ptrs();
    for (int k = 0; k < g_steps; ++k) {
        // As under JAX: the state lives somewhere else on every call.
        CallerState moved = caller_alloc(dev, kSizes);
        for (size_t b = 0; b < st.buffers.size(); ++b)
            CUDA_CHECK(cudaMemcpyAsync(moved.buffers[b], st.buffers[b],
                                       kSizes[b % n] * state_elem_size(d), cudaMemcpyDeviceToDevice, s));
        CUDA_CHECK(cudaMemcpyAsync(moved.scalars, st.scalars, count * sizeof(double),
                                   cudaMemcpyDeviceToDevice, s));
        CUDA_CHECK(cudaStreamSynchronize(s));
        caller_free(st);
        st = moved;
        KOALA_CHECK(koala_bind_state(dev, st.buffers.data(), st.scalars));

        KOALA_CHECK(koala_predict(host, hxp.data(), nullptr));
        KOALA_CHECK(koala_predict(dev, dxp.data(), s));
        std::vector<bool> present;
        HostTensors g = gradients(hx, k, present);
        dg.upload(g, s);
        std::vector<void *> hgp = g.ptrs();
        const std::vector<const void *> hgc = grad_ptrs(hgp, present), dgc = grad_ptrs(dgp, present);
        const double l = step_loss(k), v = 1.5 * l * l;
        KOALA_CHECK(koala_update(host, l, v, hxp.data(), hgc.data(), nullptr));
        KOALA_CHECK(koala_update(dev, l, v, dxp.data(), dgc.data(), s));
        if (checkpoint_step(k, g_steps)) {
            compare(name, k, m.method, d, hx, dx.download(s), host, dev, s);
            // The caller's block is the library's layout: steps and phase too.
            std::vector<double> block(count);
            CUDA_CHECK(cudaMemcpy(block.data(), st.scalars, count * sizeof(double),
                                  cudaMemcpyDeviceToHost));
            CHECK(block[7] == k + 1 && block[8] == 0.0, "%s: scalars[7] (steps) %g, [8] (phase) %g",
                  name.c_str(), block[7], block[8]);
        }
    }
    caller_free(st);
    koala_destroy(host);
    koala_destroy(dev);
    CUDA_CHECK(cudaStreamDestroy(s));
}

// ---- wide layouts ------------------------------------------------------------

void wide_run(const Method &m, size_t n_tensors, int steps) {
    const std::string name = std::string("wide-") + std::to_string(n_tensors) + " " + m.name;
    // float64: the tiny tensors are where the host's float32 accumulation
    // differs most from the device's float64 (KOALA++'s w is a difference of
    // nearly equal terms there, exactly 0 for a single element), and the
    // point here is the pointer tables and launch groups.
    const koala_dtype d = KOALA_FLOAT64;
    const koala_config cfg = config_of(m, false, 5e-4);
    std::vector<size_t> sizes(n_tensors);
    for (size_t t = 0; t < n_tensors; ++t) sizes[t] = 1 + t % 7;
    sizes[n_tensors / 2] = 20000;  // a multi-chunk tensor in the middle of the first group
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    koala_optimizer *host = nullptr, *dev = nullptr;
    KOALA_CHECK(koala_create(&cfg, n_tensors, sizes.data(), d, KOALA_HOST, &host));
    KOALA_CHECK(koala_create(&cfg, n_tensors, sizes.data(), d, KOALA_DEVICE, &dev));
    HostTensors hx = initial_params(d, sizes, 45);
    DeviceTensors dx(d, sizes), dg(d, sizes);
    dx.upload(hx, s);
    std::vector<void *> hxp = hx.ptrs(), dxp = dx.ptrs(), dgp = dg.ptrs();
    for (int k = 0; k < steps; ++k) {
        KOALA_CHECK(koala_predict(host, hxp.data(), nullptr));
        KOALA_CHECK(koala_predict(dev, dxp.data(), s));
        std::vector<bool> present;
        HostTensors g = gradients(hx, k, present);
        dg.upload(g, s);
        std::vector<void *> hgp = g.ptrs();
        const std::vector<const void *> hgc = grad_ptrs(hgp, present), dgc = grad_ptrs(dgp, present);
        KOALA_CHECK(koala_update(host, step_loss(k), 2.0, hxp.data(), hgc.data(), nullptr));
        KOALA_CHECK(koala_update(dev, step_loss(k), 2.0, dxp.data(), dgc.data(), s));
    }
    compare(name, steps - 1, m.method, d, hx, dx.download(s), host, dev, s);
    koala_destroy(host);
    koala_destroy(dev);
    CUDA_CHECK(cudaStreamDestroy(s));
}

}  // namespace

int main() {
    skip_without_gpu();
    if (const char *e = std::getenv("KOALA_GPU_TEST_STEPS")) g_steps = std::max(1, std::atoi(e));
    std::printf("test_device_parity: %d steps per run\n", g_steps);
    for (const Method &m : kMethods)
        for (koala_dtype d : kDtypes) exact_run(m, d);
    for (const Method &m : kMethods)
        for (koala_dtype d : kDtypes) {
            steps_run(m, d, false);
            if (d == KOALA_BFLOAT16 || d == KOALA_FLOAT16) steps_run(m, d, true);
        }
    for (const Method &m : kMethods)
        for (koala_dtype d : {KOALA_FLOAT32, KOALA_FLOAT64}) {
            sharded_run(m, d, true);
            sharded_run(m, d, false);
        }
    for (const Method &m : kMethods)
        for (koala_dtype d : {KOALA_FLOAT32, KOALA_BFLOAT16}) caller_run(m, d);
    wide_run(kMethods[0], 200, 3);
    wide_run(kMethods[1], 961, 2);
    wide_run(kMethods[3], 961, 2);
    return finish("test_device_parity");
}
