// What the fuzz targets here share: each writes its own seed corpus (the files in
// tests/fuzz/corpus*/) from the same code that knows its input format, so the seeds
// always match it.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace fuzz_support {

// Writes each (name, bytes) of `seeds` to DIR/seed-NAME; 0 on success.
template <class Seeds>
int write_corpus(const std::string& dir, const Seeds& seeds) {
    std::filesystem::create_directories(dir);
    for (const auto& [name, bytes] : seeds) {
        std::ofstream f(std::filesystem::path(dir) / ("seed-" + name), std::ios::binary | std::ios::trunc);
        f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
        if (!f) return 1;
    }
    return 0;
}

// For LLVMFuzzerInitialize, before libFuzzer reads its flags: `--write-corpus=DIR` writes
// the target's seeds there and exits with write_corpus's status.
template <class SeedsFn>
void write_corpus_if_asked(int argc, char** argv, SeedsFn&& seeds) {
    constexpr std::string_view flag = "--write-corpus=";
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg.starts_with(flag)) std::exit(write_corpus(std::string(arg.substr(flag.size())), seeds()));
    }
}

}  // namespace fuzz_support
