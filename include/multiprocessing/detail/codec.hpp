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
#include <variant>
#include <vector>

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

// Writes bytes to `out`, or, with no `out`, only counts them (the sizing pass). Given a
// capacity (what the sizing pass measured, and so what was reserved), a write past it
// throws instead of running over the neighbouring memory: an item whose encoding grew
// between the two passes (a user serializer that is not deterministic, or data another
// thread changes meanwhile) is refused.
class ByteWriter {
public:
    explicit ByteWriter(std::byte* out = nullptr) noexcept : out_(out) {}
    ByteWriter(std::byte* out, std::size_t capacity) noexcept : out_(out), capacity_(capacity) {}
    void write(const void* data, std::size_t n) {
        if (n > capacity_ - written_) throw_overrun(n);
        if (out_ && n) std::memcpy(out_ + written_, data, n);
        written_ += n;
    }
    std::size_t written() const noexcept { return written_; }
    std::size_t capacity() const noexcept { return capacity_; }

private:
    [[noreturn]] void throw_overrun(std::size_t n) const {
        throw ValueError("multiprocessing: an item's encoding grew between measuring it (" + std::to_string(capacity_) +
                         " bytes) and writing it (" + std::to_string(written_ + n) +
                         " bytes so far); is its serializer deterministic, and is another thread changing it?");
    }

    std::byte* out_;
    std::size_t capacity_ = SIZE_MAX;
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
    // The bytes of the message not read yet (the container size check below uses it).
    std::size_t remaining() const noexcept { return r_.remaining(); }

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

// cereal writes a std::shared_ptr or std::unique_ptr through a PtrWrapper, a struct
// holding a reference to the pointer: trivially copyable, and with only non-member
// save/load (which the concept below does not look for), so it passed for a plain
// class. Clang then chose the byte copy below, which sent the pointer's address and
// loaded the peer's address into the wrapper's reference; GCC found both and refused to
// compile. Found by tests/fuzz (f_shared: its seed changed from run to run). Excluded,
// cereal's own save/load write the pointee.
template <class T>
inline constexpr bool is_cereal_pointer_wrapper = false;
template <class T>
inline constexpr bool is_cereal_pointer_wrapper<cereal::memory_detail::PtrWrapper<T>> = true;

// A trivially copyable class with no serialize() of its own (Point{double x, y;}) goes
// as bytes, also when nested inside containers that cereal walks.
template <class T>
concept plain_bytes_class =
    std::is_class_v<T> && std::is_trivially_copyable_v<T> && !is_std_aggregate_cereal_knows<T> &&
    !is_cereal_pointer_wrapper<T> &&
    !cereal::traits::has_member_serialize<T, OutArchive>::value &&
    !cereal::traits::has_member_save<T, OutArchive>::value &&
    !cereal::traits::has_non_member_serialize<T, OutArchive>::value &&
    !cereal::traits::has_member_versioned_serialize<T, OutArchive>::value;

template <class T>
    requires std::is_arithmetic_v<T> || plain_bytes_class<T>
void CEREAL_SAVE_FUNCTION_NAME(OutArchive& ar, const T& t) {
    ar.saveBinary(std::addressof(t), sizeof t);
}
// A bool's only valid object representations are the bytes 0 and 1: a bool holding any
// other byte is neither true nor false when read (undefined behaviour; UBSan: "load of
// value 2, which is not a valid value for type 'bool'"). A sender of ours never writes
// one, so a message that has one is corrupt or hostile, and is refused. (Found by
// tests/fuzz: f_bool and std::optional's flag, which cereal loads as a bool.)
static_assert(sizeof(bool) == 1);
inline bool checked_bool(unsigned char byte) {
    if (byte > 1)
        throw ProcessError("multiprocessing: a message from another process is corrupt (a bool is neither 0 nor 1)");
    return byte == 1;
}

template <class T>
    requires std::is_arithmetic_v<T> || plain_bytes_class<T>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, T& t) {
    if constexpr (std::is_same_v<T, bool>) {
        unsigned char byte = 0;
        ar.loadBinary(&byte, 1);
        t = checked_bool(byte);
    } else {
        ar.loadBinary(std::addressof(t), sizeof t);
    }
}
template <class Archive, class T>
    requires std::is_same_v<Archive, OutArchive> || std::is_same_v<Archive, InArchive>
void CEREAL_SERIALIZE_FUNCTION_NAME(Archive& ar, cereal::NameValuePair<T>& t) {
    ar(t.value);
}
template <class T>
void CEREAL_SAVE_FUNCTION_NAME(OutArchive& ar, const cereal::SizeTag<T>& t) {
    ar(t.size);
}
// A container's element count, read before the container is sized: cereal resizes (or
// reserves, for the unordered containers) to it before it reads an element, so a hostile
// count of 2^60 would allocate, or touch, that much before the missing bytes are noticed
// (found by tests/fuzz: a std::string claiming 2^51 bytes). Every element takes at least
// one byte of the message, so a count larger than what is left of the message is
// refused here, before anything is allocated; what a message can make the receiver
// allocate is then bounded by the message's own size (which the receiver limits).
//
// The exception: elements that take no bytes at all (an empty class with
// AllowEmptyClassElision, std::monostate, std::tuple<>). A container of more such
// elements than there are bytes left after its count is refused too: it carries nothing
// but its count, nobody sends one in practice, and to accept it would mean accepting any
// count, i.e. an allocation (std::vector of an empty type: one byte each) or a loop (the
// node containers insert one by one) as large as a hostile count.
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, cereal::SizeTag<T>& t) {
    ar(t.size);
    if (t.size > ar.remaining())
        throw ProcessError("multiprocessing: a message from another process is truncated or corrupt (a container of " +
                           std::to_string(t.size) + " elements in the " + std::to_string(ar.remaining()) +
                           " bytes left of it)");
}
template <class T>
void CEREAL_SAVE_FUNCTION_NAME(OutArchive& ar, const cereal::BinaryData<T>& bd) {
    ar.saveBinary(bd.data, static_cast<std::size_t>(bd.size));
}
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, cereal::BinaryData<T>& bd) {
    ar.loadBinary(bd.data, static_cast<std::size_t>(bd.size));
    // cereal loads a std::array<bool, N> or std::valarray<bool> as one block of bytes:
    // each must be a valid bool (see checked_bool), checked before anything reads one.
    if constexpr (std::is_same_v<std::remove_cv_t<std::remove_pointer_t<std::remove_reference_t<T>>>, bool>) {
        const auto* bytes = static_cast<const unsigned char*>(bd.data);
        for (std::size_t i = 0; i < static_cast<std::size_t>(bd.size); ++i) (void)checked_bool(bytes[i]);
    }
}

// std::valarray of numbers: cereal's own save and load take &v[0], which for an empty
// valarray binds a reference to a null pointer (undefined behaviour; found by tests/fuzz:
// f_valarray with 0 elements, which a sender of an empty valarray hits too). These are
// the same, in the same format, without touching an element that is not there; being
// more specialized (our archives), they are chosen over cereal's.
template <class T>
    requires std::is_arithmetic_v<T>
void CEREAL_SAVE_FUNCTION_NAME(OutArchive& ar, const std::valarray<T>& v) {
    ar(cereal::make_size_tag(static_cast<cereal::size_type>(v.size())));
    if (v.size() != 0) ar(cereal::binary_data(&v[0], v.size() * sizeof(T)));
}
template <class T>
    requires std::is_arithmetic_v<T>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, std::valarray<T>& v) {
    cereal::size_type size = 0;
    ar(cereal::make_size_tag(size));  // checked against what is left (see SizeTag above)
    v.resize(static_cast<std::size_t>(size));
    if (size != 0) ar(cereal::binary_data(&v[0], static_cast<std::size_t>(size) * sizeof(T)));
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

// A trivially copyable value decoded from raw bytes is whatever the bytes say, and not
// every byte pattern is a value: a bool is 0 or 1, a variant's index must name one of its
// alternatives (std::visit on any other index calls through its table out of bounds).
// Such values from a corrupt or hostile message are refused here, before anything uses
// them. (Found by tests/fuzz: f_bool, f_variant_raw, f_bool_array.) The wire format is
// unchanged: the pool's workers read blocks of such items as raw bytes too.
//
// Not covered: a std::optional's "engaged" flag (a bool inside the object, where no
// portable code can look at it without reading it), and a plain struct with a bool or an
// enum member. See the fuzz report: an optional at the top level of a message should go
// through cereal, whose loader checks its flag, on both the codec's and the pool's paths.
template <class T>
inline constexpr bool is_std_variant = false;
template <class... T>
inline constexpr bool is_std_variant<std::variant<T...>> = true;
template <class T>
inline constexpr bool is_std_array = false;
template <class T, std::size_t N>
inline constexpr bool is_std_array<std::array<T, N>> = true;

template <class T>
void check_raw_value(const T& value) {
    if constexpr (std::is_same_v<T, bool>) {
        (void)checked_bool(reinterpret_cast<const unsigned char&>(value));
    } else if constexpr (is_std_variant<T>) {
        // index() reads the index as the integer it is stored as: defined for any byte.
        if (value.index() >= std::variant_size_v<T>)
            throw ProcessError("multiprocessing: a message from another process is corrupt (a std::variant's "
                               "index is " + std::to_string(value.index()) + ")");
        std::visit([](const auto& alternative) { check_raw_value(alternative); }, value);
    } else if constexpr (is_std_array<T>) {
        for (const auto& element : value) check_raw_value(element);
    }
}

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
        if constexpr (std::is_same_v<T, bool>) {
            return checked_bool(storage[0]);  // see checked_bool: not any byte is a bool
        } else {
            const T& value = *std::launder(reinterpret_cast<T*>(storage));
            check_raw_value(value);
            return value;
        }
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

// Runs `put_all(ByteWriter&)` twice: once to size the buffer, once to fill it.
template <class PutAll>
std::vector<std::byte> encode_with(PutAll&& put_all) {
    ByteWriter counter;
    put_all(counter);
    std::vector<std::byte> out(counter.written());
    ByteWriter w(out.data());
    put_all(w);
    return out;
}

template <class... T>
std::vector<std::byte> encode_values(const T&... values) {
    return encode_with([&](ByteWriter& w) { (put(w, values), ...); });
}

}  // namespace multiprocessing::detail
