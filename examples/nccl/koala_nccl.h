/*
 * koala_nccl.h - KOALA's all-reduce over NCCL, for sharded device optimizers.
 *
 * Copy koala_nccl.h and koala_nccl.c into your program (MIT, like
 * libkoala); they need koala.h, nccl.h and the CUDA runtime's headers, and
 * link with -lnccl. libkoala itself never links NCCL: this helper is
 * compiled against YOUR nccl.h and runs on YOUR communicator, so it works
 * with the NCCL your framework already loads (PyTorch's, a system one),
 * whatever its version.
 *
 *     ncclComm_t comm = ...;                     // one rank per GPU
 *     koala_shard shard = {sizeof shard, n_global, global_index,
 *                          global_elements, NULL, NULL};
 *     koala_nccl_use(&shard, comm);
 *     koala_create_sharded(&cfg, n, sizes, &shard, KOALA_FLOAT32,
 *                          KOALA_DEVICE, &opt);
 *     ... koala_update(opt, ..., stream) calls koala_nccl_allreduce once.
 *
 * koala_nccl_allreduce enqueues one ncclAllReduce(ncclFloat64, ncclSum),
 * in place, on the stream of the koala call. It never synchronises the
 * host, so a whole KOALA step (koala_predict + koala_update_ptr) can be
 * captured into a CUDA graph and replayed (NCCL 2.9 or newer supports
 * collectives in graphs; use a blocking communicator, NCCL's default).
 *
 * Errors: the return value reports what ncclAllReduce says when it is
 * called (a bad communicator or argument: then koala_update returns
 * KOALA_ERROR_COMMUNICATION and changes nothing). Failures that happen
 * later on the GPU (a peer that died) cannot be seen without a host
 * synchronisation; poll ncclCommGetAsyncError(comm) outside the step,
 * e.g. once per epoch or when a step seems stuck, and abort the
 * communicator (ncclCommAbort) if it reports one.
 */
#ifndef KOALA_NCCL_H
#define KOALA_NCCL_H

#include <stddef.h>

#include <nccl.h>

#include "koala.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A koala_allreduce_fn: sums count doubles at buf (device memory) over the
 * ranks of the ncclComm_t in `user`, in place, on `stream` (a cudaStream_t;
 * NULL = the legacy default stream). Returns 0, or the ncclResult_t. */
int koala_nccl_allreduce(double *buf, size_t count, void *stream, void *user);

/* shard->allreduce = koala_nccl_allreduce, shard->user = comm. */
void koala_nccl_use(koala_shard *shard, ncclComm_t comm);

#ifdef __cplusplus
}
#endif

#endif
