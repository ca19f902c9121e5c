#include "optimizer_pool.h"

#include <deque>
#include <mutex>
#include <utility>

namespace koala_jax {
namespace {

// A caller_state optimizer holds its plan only (about 1/4000 of the
// parameters' size on the CPU path), so the pool can afford a few per
// model: one per device of a mesh, per step function, plus spares.
constexpr size_t kMaxIdle = 64;

struct Entry {
    OptimizerSpec spec;
    OptimizerPtr opt;
};

std::mutex pool_mutex;
std::deque<Entry> idle;  // front = most recently given back

}  // namespace

OptimizerPtr checkout(const OptimizerSpec &spec, std::string *error) {
    {
        std::lock_guard<std::mutex> lock(pool_mutex);
        for (auto it = idle.begin(); it != idle.end(); ++it) {
            if (it->spec == spec) {
                OptimizerPtr opt = std::move(it->opt);
                idle.erase(it);
                return opt;
            }
        }
    }
    koala_optimizer *raw = nullptr;
    koala_status s;
    if (spec.sharded) {
        koala_shard shard{};
        shard.struct_size = sizeof shard;
        shard.n_global = spec.n_global;
        shard.global_index = spec.global_index.data();
        shard.global_elements = spec.global_elements;
        shard.allreduce = nullptr;  // two-phase: koala_update_begin / koala_update_end
        s = koala_create_sharded(&spec.cfg, spec.sizes.size(),
                                 spec.sizes.empty() ? nullptr : spec.sizes.data(), &shard,
                                 spec.dtype, spec.memory, &raw);
    } else {
        s = koala_create(&spec.cfg, spec.sizes.size(), spec.sizes.data(), spec.dtype,
                         spec.memory, &raw);
    }
    if (s != KOALA_OK) {
        *error = std::string(koala_status_string(s)) + ": " + koala_last_error();
        return nullptr;
    }
    return OptimizerPtr(raw);
}

void give_back(const OptimizerSpec &spec, OptimizerPtr opt) {
    OptimizerPtr evicted;  // destroyed outside the lock
    std::lock_guard<std::mutex> lock(pool_mutex);
    idle.push_front(Entry{spec, std::move(opt)});
    if (idle.size() > kMaxIdle) {
        evicted = std::move(idle.back().opt);
        idle.pop_back();
    }
}

}  // namespace koala_jax
