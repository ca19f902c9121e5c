// Reading and replacing an optimizer's whole state, wherever it lives
// (library-owned or bound caller memory, host or device): what checkpoints
// and koala_get_info need.
#pragma once
#include <vector>

#include "optimizer.h"

namespace koala {

// The scalar block (scalar_count doubles) into `out`. For library-owned
// device state the header's steps and phase are the host's record.
koala_status read_scalars(const koala_optimizer *opt, void *stream, std::vector<double> &out);
koala_status write_scalars(koala_optimizer *opt, const double *in, void *stream);

// Every state buffer, buffer-major then tensor order, to or from host bytes.
size_t buffer_bytes(const koala_optimizer *opt);
koala_status read_buffers(const koala_optimizer *opt, unsigned char *dst, void *stream);
koala_status write_buffers(koala_optimizer *opt, const unsigned char *src, void *stream);

// Hands per-tensor lr multipliers and weight decays (empty = not set) to a
// device optimizer's plugin; a no-op on the host, whose path reads them from
// the handle.
koala_status push_tensor_hyper(koala_optimizer *opt, const std::vector<double> &lr,
                               const std::vector<double> &wd, void *stream);

}  // namespace koala
