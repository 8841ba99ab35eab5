// libFuzzer target: the receiving end of a Connection, fed a hostile byte stream.
//
// An input is one mode byte and then the bytes a peer writes into the connection (frame
// headers that lie, payloads that stop, values whose counts, flags, indices and nesting
// are anything). The bytes go through a socketpair, as from a keyless Listener's peer;
// this end receives until the stream ends or it refuses, and every refusal must be an
// exception (EOFError, ProcessError, TimeoutError, ValueError, BufferTooShort,
// std::system_error(EMSGSIZE)), never a crash, a sanitizer report or an allocation
// larger than the bytes that arrived (.ci/fuzz runs with -malloc_limit_mb).
//
//   mode % 6   which receive: 0 recv() of a struct through cereal (optional, variant,
//              bool, strings, map, a recursive tree), 1 recv() of a raw
//              std::optional<double> (the manager's timeout argument), 2 recv() of a raw
//              variant, 3 recv_bytes(), 4 recv_bytes(maxlength = 64), 5 recv_bytes_into
//              a 32-byte buffer
//   mode & 8   the default max_message_size (1 GiB: a lying header must cost nothing
//              because the buffer grows only with what arrives); otherwise 64 KiB
//
//   fuzz_connection_recv --write-corpus=DIR   writes the seeds (valid streams of each
//                                             mode, and regressions: seed-regress-*)
// tests/fuzz/corpus-fuzz_connection_recv/ is what --write-corpus wrote, plus inputs the
// fuzzer found (regress-*, without "seed-"): regress-cereal-variant-index, a variant index
// cereal rejects with its own exception type, which escaped recv() as cereal::Exception.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <span>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <variant>
#include <vector>

#include <multiprocessing/connection.hpp>

#include "fuzz_support.hpp"

namespace mp = multiprocessing;
namespace detail = multiprocessing::detail;

namespace {

struct Tree {
    std::vector<Tree> kids;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(kids);
    }
};

struct Message {
    std::optional<double> timeout;
    std::variant<std::int32_t, std::string> key;
    bool flag = false;
    std::vector<std::string> words;
    std::map<std::string, std::int32_t> counts;
    Tree tree;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(timeout, key, flag, words, counts, tree);
    }
};

using RawVariant = std::variant<std::int32_t, double>;

// Writes the stream into one end of a socketpair and closes it, so the receiver meets
// EOF after the last byte. Inputs are small (libFuzzer's -max_len), so the socket
// buffer holds them and one thread suffices.
template <class T>
std::pair<mp::Connection<T>, bool> connected_to(std::span<const std::uint8_t> stream) {
    auto [mine, theirs] = mp::Pipe<T>();
    const int fd = theirs.fileno();
    std::size_t done = 0;
    while (done < stream.size()) {
        const ssize_t n = ::send(fd, stream.data() + done, stream.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n <= 0) break;  // a full buffer: the rest is dropped, the receiver sees EOF
        done += static_cast<std::size_t>(n);
    }
    theirs.close();
    return {std::move(mine), true};
}

template <class T, class Receive>
void receive_all(std::span<const std::uint8_t> stream, bool default_limit, Receive receive) {
    auto [conn, ok] = connected_to<T>(stream);
    (void)ok;
    if (!default_limit) conn.set_max_message_size(64 * 1024);
    for (int i = 0; i < 64 && conn.readable(); ++i) {
        try {
            receive(conn);
        } catch (const mp::EOFError&) {
            return;  // the stream ended (cleanly or inside a message)
        } catch (const mp::BufferTooShort&) {
            // consumed whole; the next message follows
        } catch (const std::system_error& e) {
            if (e.code().value() != EMSGSIZE) throw;
            return;  // the end stopped receiving
        } catch (const mp::ProcessError&) {
            // a corrupt value: the frame was read whole, so the stream goes on
        } catch (const mp::ValueError&) {
            return;
        }
    }
}

void run(std::uint8_t mode, std::span<const std::uint8_t> stream) {
    const bool default_limit = (mode & 8) != 0;
    switch (mode % 6) {
        case 0:
            receive_all<Message>(stream, default_limit, [](auto& c) { (void)c.recv(); });
            break;
        case 1:
            receive_all<std::optional<double>>(stream, default_limit, [](auto& c) {
                const auto v = c.recv();
                volatile double sink = v ? *v : 0.0;  // reads the flag, as a caller would
                (void)sink;
            });
            break;
        case 2:
            receive_all<RawVariant>(stream, default_limit, [](auto& c) {
                const auto v = c.recv();
                (void)std::visit([](auto x) { return static_cast<double>(x); }, v);
            });
            break;
        case 3:
            receive_all<int>(stream, default_limit, [](auto& c) { (void)c.recv_bytes(); });
            break;
        case 4:
            receive_all<int>(stream, default_limit, [](auto& c) { (void)c.recv_bytes(std::size_t(64)); });
            break;
        default:
            receive_all<int>(stream, default_limit, [](auto& c) {
                std::byte buf[32];
                (void)c.recv_bytes_into(std::span<std::byte>(buf));
            });
            break;
    }
}

// ---- seeds --------------------------------------------------------------------------

std::vector<std::uint8_t> frame(const std::vector<std::byte>& payload) {
    std::vector<std::uint8_t> out(detail::wire::frame_header_size);
    detail::wire::encode_frame_header(reinterpret_cast<std::byte*>(out.data()), payload.size());
    for (auto b : payload) out.push_back(static_cast<std::uint8_t>(b));
    return out;
}
std::vector<std::uint8_t> header_only(std::uint64_t claimed) {
    std::vector<std::uint8_t> out(detail::wire::frame_header_size);
    detail::wire::encode_frame_header(reinterpret_cast<std::byte*>(out.data()), claimed);
    return out;
}

std::vector<std::pair<std::string, std::vector<std::uint8_t>>> seeds() {
    std::vector<std::pair<std::string, std::vector<std::uint8_t>>> s;
    auto add = [&](std::string name, std::uint8_t mode, std::vector<std::uint8_t> stream) {
        stream.insert(stream.begin(), mode);
        s.emplace_back(std::move(name), std::move(stream));
    };
    Message m;
    m.timeout = 1.5;
    m.key = std::string("k");
    m.flag = true;
    m.words = {"a", "bb"};
    m.counts = {{"x", 1}};
    m.tree.kids.resize(2);
    m.tree.kids[0].kids.resize(1);
    auto twice = [](std::vector<std::uint8_t> a) {
        auto b = a;
        a.insert(a.end(), b.begin(), b.end());
        return a;
    };
    add("message", 0, twice(frame(detail::encode_values(m))));
    add("optional", 1, twice(frame(detail::encode_values(std::optional<double>(2.5)))));
    add("optional-empty", 1, frame(detail::encode_values(std::optional<double>())));
    add("variant", 2, frame(detail::encode_values(RawVariant(1.5))));
    const std::vector<std::byte> bytes(40, std::byte{'b'});
    add("bytes", 3, twice(frame(bytes)));
    add("bytes-maxlength", 4, frame(bytes));
    add("bytes-into", 5, twice(frame(bytes)));

    // What the fixes are for (issue 14): each must end in an exception.
    // A header claiming 1 GiB, then a few bytes: was allocated and zero-filled at once.
    auto lying = header_only(std::uint64_t(1) << 30);
    lying.insert(lying.end(), {1, 2, 3, 4});
    add("regress-lying-header", 8 | 3, lying);
    add("regress-lying-header-value", 8 | 0, lying);
    // A header past the limit: EMSGSIZE before anything is read.
    add("regress-oversized", 0, header_only(std::uint64_t(1) << 40));
    // An optional's flag byte of 2 (undefined behaviour once read as a bool).
    auto flag = detail::encode_values(std::optional<double>(2.5));
    flag[static_cast<std::size_t>(detail::optional_flag_offset<std::optional<double>>())] = std::byte{2};
    add("regress-optional-flag", 1, frame(flag));
    // A tree 1,000 levels deep (the limit is 256): was unbounded recursion.
    std::vector<std::byte> deep = detail::encode_values(Message{});
    {
        std::vector<std::byte> nested;
        for (int i = 0; i < 1000; ++i) {
            std::uint64_t one = 1;
            const auto* p = reinterpret_cast<const std::byte*>(&one);
            nested.insert(nested.end(), p, p + 8);
        }
        // Message{} ends with its tree's count (0): replace it with the nesting.
        deep.resize(deep.size() - 8);
        deep.insert(deep.end(), nested.begin(), nested.end());
    }
    add("regress-deep-tree", 0, frame(deep));
    // A count of strings as large as the bytes left: was count x 32 bytes reserved.
    {
        std::vector<std::byte> counts = detail::encode_values(Message{});
        // Message{}: optional (raw, via cereal: flag), variant index + int, bool, then the
        // words' count; make that count the size of the rest.
        const std::size_t words_at = counts.size() - 8 - 8 - 8;  // words, counts, tree counts
        const std::uint64_t claim = 2000;
        std::memcpy(counts.data() + words_at, &claim, 8);
        counts.resize(counts.size() + 2000, std::byte{0xff});
        add("regress-count", 0, frame(counts));
    }
    return s;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
    fuzz_support::write_corpus_if_asked(*argc, *argv, seeds);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    run(data[0], std::span<const std::uint8_t>(data + 1, size - 1));
    return 0;
}
