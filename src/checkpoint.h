// The checkpoint byte format behind koala_state_size/save/load.
//
// Little-endian throughout:
//   char[8]  magic "KOALACKP"
//   u32      format version (1)
//   u32      method, u32 dtype, u32 buffers per tensor (0 or 2)
//   u64      n_tensors, u64 sizes[n_tensors]
//   f64[12]  config: lr weight_decay r alpha_r sigma q sw sc sv a qw qv
//   f64[6]   filter: sigma p00 p01 p11 r qw
//   u64      steps, u64 skipped_steps
//   u32      predicted (0/1), u32 zero
//   buffers  for each buffer kind (velocity, xbar), for each tensor:
//            sizes[t] elements of dtype
//   u64      checksum of every byte before it (see checkpoint.cpp)
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
