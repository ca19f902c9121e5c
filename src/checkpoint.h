// The checkpoint byte format behind koala_state_size/save/load.
//
// Little-endian throughout. Version 2 (libkoala 1.1):
//   char[8]  magic "KOALACKP"
//   u32      format version (2)
//   u32      method, u32 dtype, u32 buffers per tensor (0 or 2)
//   u64      n_tensors, u64 sizes[n_tensors]
//   u64      n_global, u64 global_elements, u64 global_index[n_tensors]
//   u32      sharded (0/1), u32 per-tensor hyper-parameters set (bit 0: lr, bit 1: wd)
//   f64[12]  config: lr weight_decay r alpha_r sigma q sw sc sv a qw qv
//   u32[4]   config: stochastic_rounding asymmetric fused_predict 0
//   u64      config: seed
//   u64      scalar count, f64 scalars[count]   (scalars.h: header, then per tensor)
//   f64      tensor lr[n_global] if bit 0, tensor weight decay[n_global] if bit 1
//   buffers  for each buffer (KOALA-M: v, xbar; KOALA++: v, H'), for each
//            tensor: sizes[t] elements of the state dtype
//   u64      checksum of every byte before it (see checkpoint.cpp)
//
// Version 1 (libkoala 1.0) is read too:
//   magic, u32 version (1), u32 method, u32 dtype, u32 buffers, u64 n_tensors,
//   u64 sizes[n], f64[12] config, f64[6] sigma p00 p01 p11 r qw,
//   u64 steps, u64 skipped_steps, u32 predicted, u32 0, buffers, u64 checksum.
#pragma once
#include "optimizer.h"

namespace koala {

size_t checkpoint_size(const koala_optimizer *opt);

// The checksum stored in a checkpoint's last 8 bytes, over the bytes before
// them (exposed for the fuzzers, which reseal mutated checkpoints).
uint64_t checkpoint_checksum(const unsigned char *p, size_t n);
koala_status checkpoint_save(const koala_optimizer *opt, void *buf, size_t size, void *stream);
koala_status checkpoint_load(koala_optimizer *opt, const void *buf, size_t size, void *stream);

}  // namespace koala
