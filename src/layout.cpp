#include "layout.h"

#include <limits>

#include "error.h"
#include "numeric.h"

namespace koala {

koala_status read_layout(size_t n_tensors, const size_t *sizes, const koala_shard *shard,
                         int dtype, const char *what, Layout *out) {
    if (!shard && n_tensors == 0)
        return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: n_tensors is 0", what);
    if (!sizes && n_tensors > 0)
        return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: sizes is NULL", what);
    // The widest element of parameters or state (16-bit types keep float32 state).
    const size_t elem = dtype_bytes(state_dtype(static_cast<koala_dtype>(dtype)));
    // Every byte count (per tensor, all tensors, times the state buffers and
    // the checkpoint's) must fit in size_t and ptrdiff_t.
    const size_t limit = static_cast<size_t>(std::numeric_limits<std::ptrdiff_t>::max()) / 4 / elem;
    if (n_tensors > limit / 8)
        return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: n_tensors (%zu) is too large", what,
                    n_tensors);
    size_t total = 0;
    for (size_t i = 0; i < n_tensors; ++i) {
        if (sizes[i] == 0) return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: sizes[%zu] is 0", what, i);
        if (sizes[i] > limit || total > limit - sizes[i])
            return fail(KOALA_ERROR_INVALID_ARGUMENT,
                        "%s: sizes[%zu] = %zu makes the byte size overflow", what, i, sizes[i]);
        total += sizes[i];
    }
    Layout L;
    L.sizes.assign(sizes, sizes + n_tensors);
    L.local_elements = total;
    if (!shard) {
        L.n_global = n_tensors;
        L.global_elements = total;
        L.global_index.resize(n_tensors);
        for (size_t i = 0; i < n_tensors; ++i) L.global_index[i] = i;
        *out = std::move(L);
        return KOALA_OK;
    }
    if (shard->struct_size < sizeof(koala_shard))
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "%s: shard->struct_size is %zu; set it to sizeof(koala_shard) = %zu", what,
                    shard->struct_size, sizeof(koala_shard));
    if (shard->n_global == 0)
        return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: shard->n_global is 0", what);
    if (shard->n_global > limit / 8)
        return fail(KOALA_ERROR_INVALID_ARGUMENT, "%s: shard->n_global (%zu) is too large", what,
                    shard->n_global);
    L.n_global = shard->n_global;
    L.global_index.resize(n_tensors);
    for (size_t i = 0; i < n_tensors; ++i) {
        const size_t g = shard->global_index ? shard->global_index[i] : i;
        if (g >= shard->n_global)
            return shard->global_index
                       ? fail(KOALA_ERROR_INVALID_ARGUMENT,
                              "%s: shard->global_index[%zu] is %zu; it must be < shard->n_global "
                              "(%zu)",
                              what, i, g, shard->n_global)
                       : fail(KOALA_ERROR_INVALID_ARGUMENT,
                              "%s: shard->global_index is NULL (local tensor i = global tensor "
                              "i) but n_tensors (%zu) > shard->n_global (%zu)",
                              what, n_tensors, shard->n_global);
        L.global_index[i] = g;
    }
    if (shard->global_elements < total)
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "%s: shard->global_elements (%llu) is less than this process's %zu elements",
                    what, static_cast<unsigned long long>(shard->global_elements), total);
    if (shard->global_elements > (uint64_t(1) << 53))
        return fail(KOALA_ERROR_INVALID_ARGUMENT,
                    "%s: shard->global_elements (%llu) is more than 2^53", what,
                    static_cast<unsigned long long>(shard->global_elements));
    L.global_elements = shard->global_elements;
    L.sharded = true;
    L.allreduce = shard->allreduce;
    L.allreduce_user = shard->user;
    *out = std::move(L);
    return KOALA_OK;
}

}  // namespace koala
