// libFuzzer harness: any bytes into koala_state_load.
//
// Input: one mode byte, then the checkpoint bytes.
//   mode bit 0: recompute the checksum first (fuzz_util.h), so mutations of
//               a real checkpoint get past the checksum to the field checks;
//   mode bit 1: the target optimizers sit between predict and update.
// Every input is loaded into optimizers of four fixed layouts (both methods,
// both dtypes; seeds from gen_seeds.cpp are checkpoints of these layouts).
//
// Invariants (a broken one aborts, which libFuzzer records as a crash):
//  - the status is KOALA_OK or KOALA_ERROR_BAD_STATE, never a crash or leak;
//  - BAD_STATE comes with a message naming koala_state_load, and the
//    optimizer's checkpoint bytes and koala_info are exactly as before;
//  - after an accepted load, saving reproduces the input bytes exactly, a
//    whole training step runs (OK, or NOT_FINITE with nothing changed), and
//    the resulting state saves and loads back.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fuzz_layouts.h"
#include "fuzz_util.h"

namespace {

void step_after_load(koala_optimizer *opt, const fuzz::Layout &layout) {
    fuzz::Tensors tensors(layout);
    // The checkpoint carries the phase: BAD_STATE here means it was saved
    // between predict and update (and must have changed nothing).
    const std::vector<unsigned char> before_predict = fuzz::state_of(opt);
    koala_status st = koala_predict(opt, tensors.params.data(), nullptr);
    FUZZ_REQUIRE(st == KOALA_OK || st == KOALA_ERROR_BAD_STATE,
                 "predict after an accepted load gave %d", (int)st);
    if (st != KOALA_OK)
        FUZZ_REQUIRE(fuzz::state_of(opt) == before_predict, "a failed predict changed the state");
    const std::vector<unsigned char> before = fuzz::state_of(opt);
    st = koala_update(opt, 0.75, 0.6, tensors.params.data(), tensors.grad_ptrs().data(), nullptr);
    FUZZ_REQUIRE(st == KOALA_OK || st == KOALA_ERROR_NOT_FINITE,
                 "update after an accepted load gave %d", (int)st);
    if (st != KOALA_OK)
        FUZZ_REQUIRE(fuzz::state_of(opt) == before, "a failed update changed the state");
    fuzz::require_round_trip(opt, "a step on a loaded checkpoint");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const uint8_t mode = data[0];
    std::vector<unsigned char> buf(data + 1, data + size);
    if (mode & 1) fuzz::reseal(buf);
    const bool predicted = (mode & 2) != 0;

    for (const fuzz::Layout &layout : fuzz::kLayouts) {
        koala_optimizer *opt = fuzz::make_stepped(layout, predicted);
        const std::vector<unsigned char> before = fuzz::state_of(opt);
        // An empty vector's data() may be NULL: keep a valid pointer.
        const unsigned char empty = 0;
        const unsigned char *p = buf.empty() ? &empty : buf.data();
        const koala_status st = koala_state_load(opt, p, buf.size(), nullptr);
        if (st == KOALA_OK) {
            std::vector<unsigned char> saved(buf.size());
            FUZZ_REQUIRE(koala_state_save(opt, saved.data(), saved.size(), nullptr) == KOALA_OK,
                         "save after load");
            FUZZ_REQUIRE(saved == buf, "an accepted checkpoint does not save back identically");
            step_after_load(opt, layout);
        } else {
            FUZZ_REQUIRE(st == KOALA_ERROR_BAD_STATE, "load returned %d", (int)st);
            FUZZ_REQUIRE(std::strstr(koala_last_error(), "koala_state_load") != nullptr,
                         "message does not name koala_state_load");
            FUZZ_REQUIRE(fuzz::state_of(opt) == before, "a rejected load changed the state");
        }
        koala_destroy(opt);
    }
    return 0;
}
