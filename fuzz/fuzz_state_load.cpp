// libFuzzer harness: any bytes into koala_state_load.
//
// Input: one mode byte, then the checkpoint bytes.
//   mode bit 0: recompute the checksum first (fuzz_util.h), so mutations of
//               a real checkpoint get past the checksum to the field checks;
//   mode bit 1: the target optimizers sit between predict and update;
//   mode bit 2: the step after an accepted load is the two-phase one
//               (koala_update_begin / koala_update_end).
// Every input is loaded into optimizers of every fixed layout (fuzz_layouts.h:
// every method and dtype, sharded, fused, caller-owned state, per-tensor
// hyper-parameters; the seeds from gen_seeds.cpp and the format-version-1
// seeds written by libkoala 1.0 are checkpoints of these layouts).
//
// Invariants (a broken one aborts, which libFuzzer records as a crash):
//  - the status is KOALA_OK or KOALA_ERROR_BAD_STATE, never a crash or leak;
//  - BAD_STATE comes with a message naming koala_state_load, and the
//    optimizer's checkpoint bytes and koala_info are exactly as before;
//  - after an accepted load, saving reproduces the input bytes exactly (a
//    version-1 checkpoint saves as version 2: that one must load back
//    unchanged), a whole training step runs (OK, or NOT_FINITE with nothing
//    changed), and the resulting state saves and loads back.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fuzz_layouts.h"

namespace {

void step_after_load(koala_optimizer *opt, const fuzz::Layout &layout, bool two_phase) {
    fuzz::Tensors tensors(layout);
    // The checkpoint carries the phase: BAD_STATE here means it was saved
    // after a predict (and must have changed nothing).
    const std::vector<unsigned char> before_predict = fuzz::state_of(opt);
    koala_status st = koala_predict(opt, tensors.params.data(), nullptr);
    FUZZ_REQUIRE(st == KOALA_OK || st == KOALA_ERROR_BAD_STATE,
                 "predict after an accepted load gave %d", (int)st);
    if (st != KOALA_OK)
        FUZZ_REQUIRE(fuzz::state_of(opt) == before_predict, "a failed predict changed the state");
    const std::vector<unsigned char> before = fuzz::state_of(opt);
    if (two_phase) {
        size_t count = 0;
        FUZZ_REQUIRE(koala_sums_size(opt, &count) == KOALA_OK, "sums_size");
        std::vector<double> sums(count);
        st = koala_update_begin(opt, tensors.params.data(), tensors.grad_ptrs().data(),
                                sums.data(), nullptr);
        FUZZ_REQUIRE(st == KOALA_OK, "update_begin after an accepted load gave %d", (int)st);
        const std::vector<unsigned char> begun = fuzz::state_of(opt);
        st = koala_update_end(opt, 0.75, 0.6, tensors.params.data(), tensors.grad_ptrs().data(),
                              sums.data(), nullptr);
        FUZZ_REQUIRE(st == KOALA_OK || st == KOALA_ERROR_NOT_FINITE,
                     "update_end after an accepted load gave %d", (int)st);
        if (st != KOALA_OK) {
            // A failed phase 2 leaves the optimizer predicted again
            // (koala.h); phase 1 anew gives back the state before it.
            FUZZ_REQUIRE(fuzz::phase_of(opt) == 1, "phase %d after a failed update_end",
                         fuzz::phase_of(opt));
            FUZZ_REQUIRE(koala_update_begin(opt, tensors.params.data(),
                                            tensors.grad_ptrs().data(), sums.data(),
                                            nullptr) == KOALA_OK,
                         "update_begin anew");
            FUZZ_REQUIRE(fuzz::state_of(opt) == begun, "a failed update_end changed the state");
        }
    } else {
        st = koala_update(opt, 0.75, 0.6, tensors.params.data(), tensors.grad_ptrs().data(),
                          nullptr);
        FUZZ_REQUIRE(st == KOALA_OK || st == KOALA_ERROR_NOT_FINITE,
                     "update after an accepted load gave %d", (int)st);
        if (st != KOALA_OK)
            FUZZ_REQUIRE(fuzz::state_of(opt) == before, "a failed update changed the state");
    }
    fuzz::require_round_trip(opt, "a step on a loaded checkpoint");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const uint8_t mode = data[0];
    std::vector<unsigned char> buf(data + 1, data + size);
    if (mode & 1) fuzz::reseal(buf);
    const fuzz::StepPhase phase = (mode & 2) ? fuzz::kAfterPredict : fuzz::kAfterUpdate;
    const bool two_phase = (mode & 4) != 0;
    uint32_t version = 0;
    if (buf.size() >= 12) std::memcpy(&version, buf.data() + 8, 4);

    for (const fuzz::Layout &layout : fuzz::kLayouts) {
        std::unique_ptr<fuzz::Target> target = fuzz::make_stepped(layout, phase);
        koala_optimizer *opt = target->opt;
        const std::vector<unsigned char> before = fuzz::state_of(opt);
        // An empty vector's data() may be NULL: keep a valid pointer.
        const unsigned char empty = 0;
        const unsigned char *p = buf.empty() ? &empty : buf.data();
        const koala_status st = koala_state_load(opt, p, buf.size(), nullptr);
        if (st == KOALA_OK) {
            size_t need = 0;
            FUZZ_REQUIRE(koala_state_size(opt, &need) == KOALA_OK, "size after load");
            std::vector<unsigned char> saved(need);
            FUZZ_REQUIRE(koala_state_save(opt, saved.data(), saved.size(), nullptr) == KOALA_OK,
                         "save after load");
            if (version == 1) {
                // 1.0's format is read, 1.1's written: the rewrite must load
                // back to the same state.
                const std::vector<unsigned char> loaded = fuzz::state_of(opt);
                FUZZ_REQUIRE(koala_state_load(opt, saved.data(), saved.size(), nullptr) ==
                                 KOALA_OK,
                             "a version-1 checkpoint's version-2 rewrite does not load");
                FUZZ_REQUIRE(fuzz::state_of(opt) == loaded,
                             "a version-1 checkpoint's rewrite loads to another state");
            } else {
                FUZZ_REQUIRE(saved == buf, "an accepted checkpoint does not save back identically");
            }
            step_after_load(opt, layout, two_phase);
        } else {
            FUZZ_REQUIRE(st == KOALA_ERROR_BAD_STATE, "load returned %d", (int)st);
            FUZZ_REQUIRE(std::strstr(koala_last_error(), "koala_state_load") != nullptr,
                         "message does not name koala_state_load");
            FUZZ_REQUIRE(fuzz::state_of(opt) == before, "a rejected load changed the state");
        }
    }
    return 0;
}
