// What can cross a process boundary, and how it is written into shared memory.
//
//   * trivially copyable values (ints, doubles, PODs like Point{double x, y;}) are
//     copied as bytes;
//   * everything else goes through cereal, the library's one customization point: the
//     standard library's value types work out of the box, and a user type works once it
//     has `template <class Archive> void serialize(Archive& ar) { ar(a, b); }` (or
//     cereal's save/load pair);
//   * anything else (raw pointers, std::function, types without serialize()) is a
//     compile-time error that names the type and says how to fix it.
//
// Encoding is two passes over the value: one that only counts bytes, so the exact room
// can be reserved in a shared ring, and one that writes straight into that room.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <type_traits>

#include <cereal/cereal.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/bitset.hpp>
#include <cereal/types/chrono.hpp>
#include <cereal/types/complex.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/forward_list.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/memory.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/valarray.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>

#include "../errors.hpp"

namespace multiprocessing::detail {

// ---- byte sinks and sources ------------------------------------------------------------

// Writes bytes to `out`, or, with no `out`, only counts them (the sizing pass).
class ByteWriter {
public:
    explicit ByteWriter(std::byte* out = nullptr) noexcept : out_(out) {}
    void write(const void* data, std::size_t n) noexcept {
        if (out_ && n) std::memcpy(out_ + written_, data, n);
        written_ += n;
    }
    std::size_t written() const noexcept { return written_; }

private:
    std::byte* out_;
    std::size_t written_ = 0;
};

class ByteReader {
public:
    ByteReader() = default;
    explicit ByteReader(std::span<const std::byte> in) noexcept : p_(in.data()), end_(in.data() + in.size()) {}
    void read(void* data, std::size_t n) {
        if (n) std::memcpy(data, take(n), n);
    }
    const std::byte* take(std::size_t n) {
        if (static_cast<std::size_t>(end_ - p_) < n)
            throw ProcessError("multiprocessing: a message from another process is truncated or corrupt");
        const std::byte* at = p_;
        p_ += n;
        return at;
    }
    std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - p_); }

private:
    const std::byte* p_ = nullptr;
    const std::byte* end_ = nullptr;
};

// ---- cereal archives over them ----------------------------------------------------------

class OutArchive : public cereal::OutputArchive<OutArchive, cereal::AllowEmptyClassElision> {
public:
    explicit OutArchive(ByteWriter& w) : OutputArchive(this), w_(w) {}
    void saveBinary(const void* data, std::size_t n) { w_.write(data, n); }

private:
    ByteWriter& w_;
};

class InArchive : public cereal::InputArchive<InArchive, cereal::AllowEmptyClassElision> {
public:
    explicit InArchive(ByteReader& r) : InputArchive(this), r_(r) {}
    void loadBinary(void* data, std::size_t n) { r_.read(data, n); }

private:
    ByteReader& r_;
};

}  // namespace multiprocessing::detail

// Pairs the two archives for cereal, whose enum support (std::byte among them) loads
// through save_minimal's type and so must know the output archive of an input archive.
CEREAL_SETUP_ARCHIVE_TRAITS(multiprocessing::detail::InArchive, multiprocessing::detail::OutArchive)

namespace multiprocessing::detail {

template <class T>
inline constexpr bool is_std_aggregate_cereal_knows = false;
template <class T, std::size_t N>
inline constexpr bool is_std_aggregate_cereal_knows<std::array<T, N>> = true;
template <class... T>
inline constexpr bool is_std_aggregate_cereal_knows<std::variant<T...>> = true;
template <class T>
inline constexpr bool is_std_aggregate_cereal_knows<std::optional<T>> = true;
template <class T>
inline constexpr bool is_std_aggregate_cereal_knows<std::complex<T>> = true;
template <class A, class B>
inline constexpr bool is_std_aggregate_cereal_knows<std::pair<A, B>> = true;
template <class... T>
inline constexpr bool is_std_aggregate_cereal_knows<std::tuple<T...>> = true;
template <class R, class P>
inline constexpr bool is_std_aggregate_cereal_knows<std::chrono::duration<R, P>> = true;
template <class C, class D>
inline constexpr bool is_std_aggregate_cereal_knows<std::chrono::time_point<C, D>> = true;

// A trivially copyable class with no serialize() of its own (Point{double x, y;}) goes
// as bytes, also when nested inside containers that cereal walks.
template <class T>
concept plain_bytes_class =
    std::is_class_v<T> && std::is_trivially_copyable_v<T> && !is_std_aggregate_cereal_knows<T> &&
    !cereal::traits::has_member_serialize<T, OutArchive>::value &&
    !cereal::traits::has_member_save<T, OutArchive>::value &&
    !cereal::traits::has_non_member_serialize<T, OutArchive>::value &&
    !cereal::traits::has_member_versioned_serialize<T, OutArchive>::value;

template <class T>
    requires std::is_arithmetic_v<T> || plain_bytes_class<T>
void CEREAL_SAVE_FUNCTION_NAME(OutArchive& ar, const T& t) {
    ar.saveBinary(std::addressof(t), sizeof t);
}
template <class T>
    requires std::is_arithmetic_v<T> || plain_bytes_class<T>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, T& t) {
    ar.loadBinary(std::addressof(t), sizeof t);
}
template <class Archive, class T>
    requires std::is_same_v<Archive, OutArchive> || std::is_same_v<Archive, InArchive>
void CEREAL_SERIALIZE_FUNCTION_NAME(Archive& ar, cereal::NameValuePair<T>& t) {
    ar(t.value);
}
template <class Archive, class T>
    requires std::is_same_v<Archive, OutArchive> || std::is_same_v<Archive, InArchive>
void CEREAL_SERIALIZE_FUNCTION_NAME(Archive& ar, cereal::SizeTag<T>& t) {
    ar(t.size);
}
template <class T>
void CEREAL_SAVE_FUNCTION_NAME(OutArchive& ar, const cereal::BinaryData<T>& bd) {
    ar.saveBinary(bd.data, static_cast<std::size_t>(bd.size));
}
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, cereal::BinaryData<T>& bd) {
    ar.loadBinary(bd.data, static_cast<std::size_t>(bd.size));
}

// ---- what may cross -------------------------------------------------------------------

template <class T>
concept raw_bytes = std::is_trivially_copyable_v<T> && !std::is_pointer_v<T> &&
                    !std::is_member_pointer_v<T> && !std::is_reference_v<T>;

template <class T>
concept cereal_serializable = cereal::traits::is_output_serializable<T, OutArchive>::value &&
                              cereal::traits::is_input_serializable<T, InArchive>::value;

// Queues, locks, pipes, shared values: handles to an object that lives in shared memory
// (API.md, "Shared objects are handles"). They reach another process by inheritance or
// as a Process argument, never inside a message, as in Python ("Queue objects should
// only be shared between processes through inheritance").
template <class T>
concept process_shared_handle = requires { requires T::is_process_shared_handle; };

template <class T>
concept transferable =
    !std::is_pointer_v<T> && !process_shared_handle<T> && (raw_bytes<T> || cereal_serializable<T>);

template <class T>
inline constexpr bool dependent_false = false;

// Instantiated only to fail: the compiler's "in instantiation of cannot_cross_process_
// boundary<T>" line names the offending type, and the message says what to do.
template <class T>
struct cannot_cross_process_boundary {
    static_assert(!process_shared_handle<T>,
                  "multiprocessing: a Queue, Lock, Pipe end, Value or other shared handle cannot be sent "
                  "inside a message or a task argument. Give it to the child as a Process argument (or a "
                  "Pool initializer argument), or create it before start() so the child inherits it.");
    static_assert(!std::is_pointer_v<T> || process_shared_handle<T>,
                  "multiprocessing: a raw pointer cannot cross a process boundary (the other process has "
                  "its own memory). Pass the value itself: a std::string instead of a char*, a "
                  "std::vector instead of a pointer and a length.");
    static_assert(std::is_pointer_v<T> || process_shared_handle<T> || dependent_false<T>,
                  "multiprocessing: this type cannot cross a process boundary: it is not trivially "
                  "copyable and has no cereal serialization. Fix: give it a member "
                  "`template <class Archive> void serialize(Archive& ar) { ar(field1, field2); }` "
                  "(cereal's customization point, the one the library uses), or pass a value type.");
};

template <class T>
constexpr void require_transferable() {
    if constexpr (!transferable<T>) (void)sizeof(cannot_cross_process_boundary<T>);
}

// What a Process (or a Pool initializer) may take as an argument: a value that can
// cross, or a shared handle, which the child gets as the same shared object.
template <class T>
constexpr void require_process_argument() {
    if constexpr (!process_shared_handle<T>) require_transferable<T>();
}

// ---- encode / decode ------------------------------------------------------------------

template <class T>
void put(ByteWriter& w, const T& value) {
    require_transferable<T>();
    if constexpr (raw_bytes<T>) {
        w.write(std::addressof(value), sizeof(T));
    } else {
        OutArchive ar(w);
        ar(value);
    }
}

template <class T>
T get(ByteReader& r) {
    require_transferable<T>();
    if constexpr (raw_bytes<T>) {
        // Copying the bytes into suitably aligned storage creates the object (a
        // trivially copyable type needs no constructor call).
        alignas(T) unsigned char storage[sizeof(T)];
        r.read(storage, sizeof(T));
        return *std::launder(reinterpret_cast<T*>(storage));
    } else {
        static_assert(std::is_default_constructible_v<T>,
                      "multiprocessing: a cereal-serialized type must be default constructible to be "
                      "rebuilt in another process (or give it cereal's load_and_construct).");
        T value;
        InArchive ar(r);
        ar(value);
        return value;
    }
}

template <class... T>
std::size_t encoded_size(const T&... values) {
    ByteWriter counter;
    (put(counter, values), ...);
    return counter.written();
}

}  // namespace multiprocessing::detail
