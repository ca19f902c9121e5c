// Writes the committed seed corpora:
//   corpus/state_load/: real checkpoints of the fixed layouts (fuzz_layouts.h)
//     in several states, each behind a mode byte (see fuzz_state_load.cpp);
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
    const char *names[] = {"v32", "v64", "m32", "m64"};
    int written = 0;
    for (size_t l = 0; l < sizeof fuzz::kLayouts / sizeof fuzz::kLayouts[0]; ++l) {
        const fuzz::Layout &layout = fuzz::kLayouts[l];
        struct {
            const char *name;
            int steps;
            bool predicted;
        } states[] = {{"fresh", 0, false}, {"step1", 1, false}, {"step4_predicted", 4, true}};
        for (const auto &s : states) {
            koala_optimizer *opt = fuzz::make_stepped(layout, s.predicted, s.steps, 0.3);
            const std::vector<unsigned char> ckp = checkpoint(opt);
            koala_destroy(opt);
            for (unsigned char mode : {0, 1, 2}) {
                std::vector<unsigned char> seed{mode};
                seed.insert(seed.end(), ckp.begin(), ckp.end());
                write_file(dir + "/state_load/" + names[l] + "_" + s.name + "_mode" +
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
