// Running koala::update_scalars (kalman.h) in parallel over ranges of
// blocks and merging the results, so that the device's scalar kernel spends
// n/256 block evaluations per thread instead of n in one thread, with the
// SAME bits as one update_scalars call over all blocks.
//
// Why merging is exact: update_scalars over a range of blocks leaves
//   sigma = fl(g * sigma0),  p00 = fl(g * p00_0),  p01 = fl(g * p01_0),
//   p11 = fl(p11_0 - fl(fl(h * p01_0) * p01_0)),   r = the new R,
// where g = min(1, min R/S_i) and h = max(0, max a_i/S_i) over the range's
// active blocks (an inactive range leaves the prior values, i.e. g = 1,
// h = 0). Every one of these is a monotone function of g or h (rounding is
// monotone), so the minimum (or, for p01 < 0, the maximum) of the ranges'
// results is the result for the smallest g / largest h, which is exactly
// what the single call computes. Coefficients of block i depend only on
// block i and the prior, so each range writes its own. A non-finite loss or
// block makes the single call return kNotFinite; so does at least one range
// call, and the caller then discards everything. tests/gpu/test_scalar_merge
// checks this bit for bit on the host against the single call.
#pragma once
#include <stddef.h>

#include "kalman.h"

namespace koala {
namespace cuda {

// Range k of `parts` contiguous ranges over n blocks: [begin(k), begin(k+1)).
KOALA_HD size_t scalar_range_begin(size_t n, size_t parts, size_t k) { return k * n / parts; }

// Folds one range's post-update_scalars state into acc. Start acc from any
// range's result (or from the prior with r set to the new R).
KOALA_HD void merge_scalar_ranges(FilterState &acc, const FilterState &part, double prior_p01) {
    acc.sigma = fmin2(acc.sigma, part.sigma);
    acc.p00 = fmin2(acc.p00, part.p00);
    acc.p01 = prior_p01 >= 0.0 ? fmin2(acc.p01, part.p01) : fmax2(acc.p01, part.p01);
    acc.p11 = fmin2(acc.p11, part.p11);
    acc.r = part.r;  // the same R in every range
}

}  // namespace cuda
}  // namespace koala
