// libFuzzer target: ShareableList attaching to a segment whose bytes are anything.
//
// An input is one mode byte and then the whole content of a shared memory segment: the
// list header (magic, count, item size, type hash), the offset and length tables, the
// data. Another process of the same user can write all of that, before the attach or at
// any time after. The target creates the segment with those bytes, attaches a
// ShareableList to it, and reads, writes and searches every item; then it rewrites the
// segment with the same bytes again (as a hostile writer would, after the attach) and
// does it all once more through the same handle. Every refusal must be ValueError (a
// corrupt layout) or IndexError; never an out-of-bounds access (ASan) or a crash.
//
//   mode & 1   0: ShareableList<std::string>; 1: ShareableList<std::int64_t>
//
//   fuzz_shareable_list --write-corpus=DIR   writes the seeds (valid lists of both types)
// tests/fuzz/corpus-fuzz_shareable_list/ is what --write-corpus wrote.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <multiprocessing/shared_memory.hpp>

#include "fuzz_support.hpp"

namespace mp = multiprocessing;
namespace sm = multiprocessing::shared_memory;

namespace {

template <class T>
void exercise(sm::ShareableList<T>& list, const T& probe) {
    const std::size_t n = list.size();
    for (std::size_t i = 0; i < n && i < 256; ++i) {
        try {
            const T value = list[i];
            list[i] = value;
            list[i] = probe;
        } catch (const mp::ValueError&) {
        }
    }
    try {
        (void)list.count(probe);
        (void)list.index(probe);
    } catch (const mp::ValueError&) {
    }
    try {
        (void)list.at(-1);
        (void)list.at(static_cast<std::ptrdiff_t>(n));
    } catch (const mp::IndexError&) {
    }
}

template <class T>
void run(std::span<const std::uint8_t> content, const T& probe) {
    // At least one byte: a segment of size 0 cannot be created.
    sm::SharedMemory segment(std::nullopt, true, std::max<std::size_t>(content.size(), 1), /*track=*/false);
    std::memcpy(segment.buf().data(), content.data(), content.size());
    try {
        sm::ShareableList<T> list(segment.name());
        exercise(list, probe);
        // A hostile writer rewrites the layout after the attach (here: the input again,
        // undoing what exercise() wrote, with the count doubled for good measure).
        std::memcpy(segment.buf().data(), content.data(), content.size());
        if (content.size() >= 16) {
            std::uint64_t count;
            std::memcpy(&count, segment.buf().data() + 8, 8);
            count = count * 2 + 1;
            std::memcpy(segment.buf().data() + 8, &count, 8);
        }
        exercise(list, probe);
    } catch (const mp::ValueError&) {
        // refused at attach
    }
    segment.close();
    segment.unlink();
}

template <class T>
std::vector<std::uint8_t> content_of(std::initializer_list<T> items) {
    sm::ShareableList<T> list(items);
    auto buf = list.shm().buf();
    std::vector<std::uint8_t> out(reinterpret_cast<const std::uint8_t*>(buf.data()),
                                  reinterpret_cast<const std::uint8_t*>(buf.data()) + list.shm().size());
    list.shm().close();
    list.shm().unlink();
    return out;
}

std::vector<std::pair<std::string, std::vector<std::uint8_t>>> seeds() {
    std::vector<std::pair<std::string, std::vector<std::uint8_t>>> s;
    auto add = [&](std::string name, std::uint8_t mode, std::vector<std::uint8_t> content) {
        content.insert(content.begin(), mode);
        s.emplace_back(std::move(name), std::move(content));
    };
    add("strings", 0, content_of<std::string>({"alpha", "", "a longer string than eight"}));
    add("strings-empty", 0, content_of<std::string>({}));
    add("ints", 1, content_of<std::int64_t>({1, -2, 3}));
    // What the fix is for: an offset a terabyte into a segment of a few dozen bytes, and
    // a length past its item's capacity. (Were read and written as given, at any time.)
    auto far = content_of<std::string>({"alpha", "beta", "gamma"});
    const std::uint64_t terabyte = std::uint64_t(1) << 40;
    std::memcpy(far.data() + 8 * (4 + 2), &terabyte, 8);  // header: 4 words; offsets[2]
    add("regress-offset", 0, far);
    auto longer = content_of<std::string>({"alpha", "beta"});
    const std::uint64_t length = 1000;
    std::memcpy(longer.data() + 8 * (4 + 3), &length, 8);  // lengths[0], after 3 offsets
    add("regress-length", 0, longer);
    return s;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
    fuzz_support::write_corpus_if_asked(*argc, *argv, seeds);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::span<const std::uint8_t> content(data + 1, size - 1);
    if (data[0] & 1)
        run<std::int64_t>(content, 7);
    else
        run<std::string>(content, std::string("probe"));
    return 0;
}
