// What the fuzz targets here share: each writes its own seed corpus (the files in
// tests/fuzz/corpus*/) from the same code that knows its input format, so the seeds
// always match it.
#pragma once

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

// The directory of a `--write-corpus=DIR` argument, or empty.
inline std::string corpus_flag(std::string_view arg) {
    constexpr std::string_view flag = "--write-corpus=";
    return arg.starts_with(flag) ? std::string(arg.substr(flag.size())) : std::string();
}

}  // namespace fuzz_support
