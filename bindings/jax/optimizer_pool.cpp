#include "optimizer_pool.h"

#include <deque>
#include <mutex>
#include <utility>

namespace koala_jax {
namespace {

// Enough for a few models (or optax chains) trained side by side in one
// process, with a spare per XLA thread; a KOALA-M entry holds 2 buffers of
// the model's size, so the bound also caps the memory held when idle.
constexpr size_t kMaxIdle = 8;

struct Entry {
    Layout layout;
    OptimizerPtr opt;
};

std::mutex pool_mutex;
std::deque<Entry> idle;  // front = most recently given back

}  // namespace

OptimizerPtr checkout(const Layout &layout, std::string *error) {
    {
        std::lock_guard<std::mutex> lock(pool_mutex);
        for (auto it = idle.begin(); it != idle.end(); ++it) {
            if (it->layout == layout) {
                OptimizerPtr opt = std::move(it->opt);
                idle.erase(it);
                return opt;
            }
        }
    }
    koala_config cfg;
    koala_config_init(&cfg, layout.method);
    koala_optimizer *raw = nullptr;
    koala_status s = koala_create(&cfg, layout.sizes.size(), layout.sizes.data(), layout.dtype,
                                  layout.memory, &raw);
    if (s != KOALA_OK) {
        *error = std::string(koala_status_string(s)) + ": " + koala_last_error();
        return nullptr;
    }
    return OptimizerPtr(raw);
}

void give_back(const Layout &layout, OptimizerPtr opt) {
    OptimizerPtr evicted;  // destroyed outside the lock
    std::lock_guard<std::mutex> lock(pool_mutex);
    idle.push_front(Entry{layout, std::move(opt)});
    if (idle.size() > kMaxIdle) {
        evicted = std::move(idle.back().opt);
        idle.pop_back();
    }
}

}  // namespace koala_jax
