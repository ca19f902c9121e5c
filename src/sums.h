// The partial-sums buffer of one update: everything the filter needs from
// the elements, per GLOBAL tensor, as float64 values that add up over
// processes. The CPU path, the CUDA kernels, the sharded all-reduce and the
// two-phase form (koala_update_begin/end) all use this one layout:
//
//   for each global tensor j, at j * stride(method):
//     [0]      presence: +1 per piece with a gradient, +kNoGrad per piece
//              without one (so a sum tells both counts apart)
//     [1..K]   the method's sums (K = sums_per_tensor):
//              VANILLA, MOMENTUM  g.g, g.x, x.x
//              PLUSPLUS           g.g, x.x, h.h, h.H', h.v', H'.H', H'.v'
//                                 (h = g + wd x, H'/v' the previous H and v)
//   trailer, at n_global * stride:
//     [0]      elements: every piece's size (checked against
//              koala_shard::global_elements)
//     [1]      KOALA-M: sum of |xbar - x|^2 of the predict since the last
//              update (pending_d2), 0 otherwise
//     [2]      processes: 1 from each
//     [3]      layout fingerprints: each process's layout_fingerprint
//              (global_elements, n_global); summed over P processes it is
//              P times each one's exactly when they all agree (up to a
//              2^-32 chance), so every process can tell that one differs
// Shared with CUDA.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "hd.h"
#include "koala.h"

namespace koala {

constexpr double kNoGrad = 67108864.0;  // 2^26: room for 2^26 - 1 pieces per tensor
constexpr size_t kTrailer = 4;
constexpr size_t kMaxSums = 7;

KOALA_HD size_t sums_per_tensor(koala_method method) {
    return method == KOALA_PLUSPLUS ? 7 : 3;
}
KOALA_HD size_t sums_stride(koala_method method) { return 1 + sums_per_tensor(method); }
KOALA_HD size_t sums_count(koala_method method, size_t n_global) {
    return n_global * sums_stride(method) + kTrailer;
}

// A 32-bit fingerprint of the layout every process must agree on, as an
// exactly representable double (sums of up to 2^21 of them stay exact).
KOALA_HD double layout_fingerprint(uint64_t global_elements, uint64_t n_global) {
    uint64_t z = global_elements * 0x9e3779b97f4a7c15ull ^ (n_global + 0x632be59bd9b4e019ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return static_cast<double>(static_cast<uint32_t>(z ^ (z >> 31)));
}

// Pieces of one global tensor with and without a gradient, from its summed
// presence slot.
struct Presence {
    uint64_t with_grad, without_grad;
};
KOALA_HD Presence decode_presence(double v) {
    const uint64_t n = v >= 0.0 && v < 9.0e15 ? static_cast<uint64_t>(v) : 0;
    const uint64_t mark = static_cast<uint64_t>(kNoGrad);
    return Presence{n % mark, n / mark};
}

}  // namespace koala
