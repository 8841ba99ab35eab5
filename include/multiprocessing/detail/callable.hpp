// How a function and its captures travel to another process.
//
// Accepted: function pointers, lambdas without captures, lambdas whose captures are
// all trivially copyable, and function objects that cereal can serialize. Their bytes
// (or serialized form) go in the task; the code itself is found in the other process by
// its place in the loaded image (see code_address), valid in a fork child and in a
// spawned one alike.
//
// Rejected at compile time, with the reason: std::function (it hides what it holds, so
// nothing can say whether that is safe to copy) and lambdas capturing non-trivially-
// copyable things such as a std::string (their heap memory stays in the parent).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <functional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include <link.h>

#include "../errors.hpp"
#include "codec.hpp"
#include "reduction.hpp"

namespace multiprocessing::detail {

template <class F>
inline constexpr bool is_std_function = false;
template <class Sig>
inline constexpr bool is_std_function<std::function<Sig>> = true;

template <class F>
concept transferable_callable =
    !is_std_function<F> &&
    (std::is_function_v<std::remove_pointer_t<F>> ||
     (std::is_class_v<F> && (raw_bytes<F> || cereal_serializable<F>)));

template <class F>
struct callable_cannot_cross_process_boundary {
    static_assert(!is_std_function<F>,
                  "multiprocessing: a std::function cannot be sent to another process: it may hold "
                  "anything, including pointers into this process. Pass the function pointer or the "
                  "lambda itself instead.");
    static_assert(is_std_function<F> || dependent_false<F>,
                  "multiprocessing: this callable cannot be sent to another process: a lambda's captures "
                  "must all be trivially copyable (ints, doubles, PODs), since anything owning heap memory "
                  "(a std::string, a std::vector) would point into this process. Fix: pass such values "
                  "as task arguments instead of capturing them, bind them with mp::partial(f, values...) "
                  "(functools.partial), or use a function object with a cereal `serialize(Archive&)`.");
};

template <class F>
constexpr void require_transferable_callable() {
    if constexpr (!transferable_callable<F>) (void)sizeof(callable_cannot_cross_process_boundary<F>);
}

// A function or class type as it is stored for sending: functions decay to pointers.
template <class F>
using stored_callable_t = std::decay_t<F>;

// Arguments are stored as values. A string literal or char* argument becomes a
// std::string (a pointer would mean nothing in the other process).
template <class A>
using stored_arg_t = std::conditional_t<
    std::is_same_v<std::decay_t<A>, const char*> || std::is_same_v<std::decay_t<A>, char*>,
    std::string, std::decay_t<A>>;

// The address of code, as it travels: which loaded image holds it and where in that
// image. A fork child could use raw addresses, but a spawned child (a fresh exec of the
// same executable) has every image at another base under ASLR, so an address only
// means something as (image, offset). One encoding serves every start method.
using code_address = std::uint64_t;

namespace code_image {

// Bits of a code_address: image index (in dl_iterate_phdr order: the executable first,
// then its libraries in load order, which a fresh exec of the same program repeats),
// a check byte of the image's path, and the offset from the image's load base.
inline constexpr int index_shift = 56;
inline constexpr int check_shift = 48;
inline constexpr std::uint64_t offset_mask = (std::uint64_t{1} << check_shift) - 1;

struct Image {
    std::uintptr_t base;   // dlpi_addr: what offsets are relative to
    std::uintptr_t begin;  // the lowest and highest address of its loaded segments
    std::uintptr_t end;
    std::uint8_t check;    // a hash byte of its path
};

struct Table {
    std::vector<Image> images;  // by index
};

inline std::uint8_t path_check(const char* path) noexcept {
    std::uint32_t h = 2166136261u;  // FNV-1a
    for (const char* p = path ? path : ""; *p; ++p) h = (h ^ static_cast<unsigned char>(*p)) * 16777619u;
    return static_cast<std::uint8_t>(h ^ (h >> 8) ^ (h >> 16) ^ (h >> 24));
}

inline const Table* build_table() {
    auto* table = new Table;
    ::dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t, void* out) -> int {
            Image image{info->dlpi_addr, UINTPTR_MAX, 0, path_check(info->dlpi_name)};
            for (int i = 0; i < info->dlpi_phnum; ++i) {
                const auto& ph = info->dlpi_phdr[i];
                if (ph.p_type != PT_LOAD) continue;
                image.begin = std::min<std::uintptr_t>(image.begin, info->dlpi_addr + ph.p_vaddr);
                image.end = std::max<std::uintptr_t>(image.end, info->dlpi_addr + ph.p_vaddr + ph.p_memsz);
            }
            static_cast<Table*>(out)->images.push_back(image);
            return 0;
        },
        table);
    return table;
}

// The images as last seen. Rebuilt when an address or index is not found (a library
// dlopen'ed since); old tables are leaked on purpose, since a reader may still hold
// one, and there are only as many as there are dlopen's that mattered.
inline std::atomic<const Table*>& current_table() noexcept {
    static std::atomic<const Table*> table{nullptr};
    return table;
}
inline const Table& table(bool rebuild = false) {
    static std::mutex rebuilding;
    // acquire: pairs with the release store below, so the table's contents are seen.
    const Table* t = current_table().load(std::memory_order_acquire);
    if (t && !rebuild) return *t;
    std::lock_guard lock(rebuilding);
    const Table* again = current_table().load(std::memory_order_acquire);
    if (again && again != t) return *again;  // another thread rebuilt it meanwhile
    const Table* fresh = build_table();
    current_table().store(fresh, std::memory_order_release);
    return *fresh;
}

inline std::optional<code_address> find(const Table& t, std::uintptr_t address) noexcept {
    for (std::size_t i = 0; i < t.images.size() && i < 256; ++i) {
        const Image& image = t.images[i];
        if (address >= image.begin && address < image.end)
            return (std::uint64_t(i) << index_shift) | (std::uint64_t(image.check) << check_shift) |
                   ((address - image.base) & offset_mask);
    }
    return std::nullopt;
}

inline code_address encode(std::uintptr_t address) {
    if (auto a = find(table(), address)) return *a;
    if (auto a = find(table(/*rebuild=*/true), address)) return *a;
    throw ValueError("multiprocessing: this function's code is in no loaded executable or library (generated at "
                     "run time?), so another process cannot find it; pass a function compiled into the program");
}

inline std::uintptr_t decode(code_address a) {
    const std::size_t index = a >> index_shift;
    const auto check = static_cast<std::uint8_t>(a >> check_shift);
    for (bool rebuild : {false, true}) {
        const Table& t = table(rebuild);
        if (index < t.images.size() && t.images[index].check == check)
            return t.images[index].base + (a & offset_mask);
    }
    throw ProcessError("multiprocessing: a function sent from another process lives in a library that is not loaded "
                       "here at the same place in the load order (a library dlopen'ed in one process only?); "
                       "load it the same way in both, or use the fork start method");
}

}  // namespace code_image

template <class Fn>
code_address address_of_code(Fn* fn) {
    return code_image::encode(reinterpret_cast<std::uintptr_t>(fn));
}
template <class Fn>
Fn* code_at(code_address address) {
    return reinterpret_cast<Fn*>(code_image::decode(address));
}

// A member function pointer, as it travels (a manager's exposed methods): the Itanium
// C++ ABI's {ptr, adj}. A non-virtual ptr is a code address, so it travels as a
// code_address; a virtual one is an offset into the vtable, the same in every process of
// the program. The "virtual" flag is ptr's low bit on x86-64, adj's on ARM (where code
// addresses can be odd).
struct MemberFunctionBits {
    std::uintptr_t ptr;
    std::ptrdiff_t adj;
};
inline bool member_function_is_virtual(const MemberFunctionBits& bits) noexcept {
#if defined(__aarch64__) || defined(__arm__)
    return (bits.adj & 1) != 0;
#else
    return (bits.ptr & 1) != 0;
#endif
}
template <class M>
    requires std::is_member_function_pointer_v<M>
void put_member_function(ByteWriter& w, M m) {
    static_assert(sizeof(M) == sizeof(MemberFunctionBits), "a member function pointer of an unexpected layout");
    MemberFunctionBits bits;
    std::memcpy(&bits, &m, sizeof bits);
    const bool is_virtual = member_function_is_virtual(bits);
    put(w, is_virtual);
    put(w, is_virtual ? std::uint64_t(bits.ptr) : address_of_code(reinterpret_cast<void (*)()>(bits.ptr)));
    put(w, static_cast<std::int64_t>(bits.adj));
}
template <class M>
    requires std::is_member_function_pointer_v<M>
M get_member_function(ByteReader& r) {
    const bool is_virtual = get<bool>(r);
    const auto where = get<std::uint64_t>(r);
    MemberFunctionBits bits{is_virtual ? std::uintptr_t(where) : reinterpret_cast<std::uintptr_t>(code_at<void()>(where)),
                            static_cast<std::ptrdiff_t>(get<std::int64_t>(r))};
    M m;
    std::memcpy(&m, &bits, sizeof m);
    return m;
}

// Writes a callable into a task.
template <class F>
void put_callable(ByteWriter& w, const F& f) {
    if constexpr (!transferable_callable<F>) {
        require_transferable_callable<F>();  // fails; nothing below is instantiated
    } else if constexpr (std::is_pointer_v<F>) {
        code_address a = address_of_code(f);
        w.write(&a, sizeof a);
    } else if constexpr (std::is_empty_v<F> && std::is_trivially_copyable_v<F>) {
        // A capture-less lambda: nothing to send.
    } else {
        put(w, f);
    }
}

template <class F>
F get_callable(ByteReader& r) {
    if constexpr (!transferable_callable<F>) {
        require_transferable_callable<F>();
        unreachable_after_failed_check();
    } else if constexpr (std::is_pointer_v<F>) {
        code_address a;
        r.read(&a, sizeof a);
        return code_at<std::remove_pointer_t<F>>(a);
    } else if constexpr (std::is_empty_v<F> && std::is_trivially_copyable_v<F>) {
        // C++20 lambdas without captures are default constructible; other empty trivially
        // copyable classes are rebuilt from their (meaningless) bytes.
        if constexpr (std::is_default_constructible_v<F>) {
            return F{};
        } else {
            alignas(F) unsigned char storage[sizeof(F)] = {};
            return *std::launder(reinterpret_cast<F*>(storage));
        }
    } else {
        return get<F>(r);
    }
}

// A call that can be made in a spawned process: `runner` is a `void(ByteReader&)` that
// decodes a callable and its arguments from `payload` and calls it; `fds` are passed to
// the process along with it (the shared handles among the arguments, reduction.hpp).
struct PortableCall {
    code_address runner = 0;
    std::vector<std::byte> payload;
    PassedFds fds;
    explicit operator bool() const noexcept { return runner != 0; }
};

template <class Fn, class... A>
void run_portable_call(ByteReader& in) {
    Fn fn = get_callable<Fn>(in);
    std::tuple<A...> args{rebuild_argument<A>(in)...};  // braced: decoded left to right
    std::apply([&](auto&... a) { std::invoke(fn, a...); }, args);
}

// Encodes f(args...) for a spawned process. `fds_ahead`: how many fds the start path
// passes before the arguments' (see PassedFds). A handle whose reduce() refuses (a
// Barrier with an action) throws ValueError from here, at start().
template <class Fn, class... A>
PortableCall make_portable_call(int fds_ahead, const Fn& fn, const A&... args) {
    // Process and Pool admit only arguments that are transferable or shared handles
    // (require_process_argument), and every shared handle has a reducer.
    static_assert((spawn_portable<A> && ...),
                  "multiprocessing: a shared handle type without reduce()/rebuild() (detail/reduction.hpp)");
    PortableCall call{.runner = address_of_code(&run_portable_call<Fn, A...>), .payload = {}, .fds = PassedFds(fds_ahead)};
    // Reduced once, before the two passes of encode_with (each reduce adds fds).
    const std::tuple<decltype(portable_form(args, call.fds))...> forms{portable_form(args, call.fds)...};
    call.payload = encode_with([&](ByteWriter& w) {
        put_callable(w, fn);
        std::apply([&](const auto&... form) { (put(w, form), ...); }, forms);
    });
    return call;
}

}  // namespace multiprocessing::detail
