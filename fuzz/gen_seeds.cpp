// Writes the committed seed corpora:
//   corpus/state_load/v2_*: real checkpoints (format version 2) of the fixed
//     layouts (fuzz_layouts.h) in several states, each behind a mode byte
//     (see fuzz_state_load.cpp). The seeds without the v2_ prefix are
//     libkoala 1.0's (format version 1) and are kept as they are;
//   corpus/api_args/:   deterministic pseudo-random byte strings (the API
//     harness decodes any bytes; these only give it a varied start).
// Usage: gen_seeds CORPUS_DIR. Deterministic: re-running rewrites the same files.
#include <cstdio>
#include <string>
#include <vector>

#include "fuzz_layouts.h"

namespace {

void write_file(const std::string &path, const std::vector<unsigned char> &bytes) {
    FILE *f = std::fopen(path.c_str(), "wb");
    FUZZ_REQUIRE(f != nullptr, "cannot write %s", path.c_str());
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
}

std::vector<unsigned char> checkpoint(const koala_optimizer *opt) {
    size_t size = 0;
    FUZZ_REQUIRE(koala_state_size(opt, &size) == KOALA_OK, "size");
    std::vector<unsigned char> bytes(size);
    FUZZ_REQUIRE(koala_state_save(opt, bytes.data(), size, nullptr) == KOALA_OK, "save");
    return bytes;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    int written = 0;
    for (const fuzz::Layout &layout : fuzz::kLayouts) {
        struct {
            const char *name;
            int steps;
            fuzz::StepPhase phase;
        } states[] = {{"fresh", 0, fuzz::kAfterUpdate},
                      {"step1", 1, fuzz::kAfterUpdate},
                      {"step4_predicted", 4, fuzz::kAfterPredict},
                      {"step3_begun", 3, fuzz::kAfterBegin}};
        for (const auto &s : states) {
            std::unique_ptr<fuzz::Target> target = fuzz::make_stepped(layout, s.phase, s.steps, 0.3);
            const std::vector<unsigned char> ckp = checkpoint(target->opt);
            for (unsigned char mode : {0, 1, 2, 4}) {
                std::vector<unsigned char> seed{mode};
                seed.insert(seed.end(), ckp.begin(), ckp.end());
                write_file(dir + "/state_load/v2_" + layout.name + "_" + s.name + "_mode" +
                               std::to_string(mode),
                           seed);
                ++written;
            }
        }
    }
    // A fixed LCG: the same bytes on every machine.
    unsigned long long x = 0x6b6f616c61ull;
    for (int k = 0; k < 24; ++k) {
        std::vector<unsigned char> seed(32 + 16 * k);
        for (unsigned char &b : seed) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            b = static_cast<unsigned char>(x >> 56);
        }
        write_file(dir + "/api_args/lcg_" + std::to_string(k), seed);
        ++written;
    }
    std::printf("gen_seeds: wrote %d files under %s\n", written, dir.c_str());
    return 0;
}
