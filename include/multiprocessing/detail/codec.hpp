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

#include <algorithm>
#include <array>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
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

    // How deep a value may nest (each container, each class with serialize(), each
    // optional or variant counts one level): cereal loads recursively, so without a limit
    // a message of nothing but "a list holding a list holding ..." (8 bytes a level)
    // overflows the receiver's stack, a crash no exception can report. 256 levels are far
    // more than any honest value has and far less than a thread's stack allows.
    static constexpr int max_depth = 256;
    void enter() {
        if (++depth_ > max_depth)
            throw ProcessError("multiprocessing: a message from another process nests deeper than " +
                               std::to_string(max_depth) +
                               " levels (containers or classes inside one another); it is corrupt or hostile, "
                               "and is refused before it can exhaust the stack");
    }
    void leave() noexcept { --depth_; }

private:
    ByteReader& r_;
    int depth_ = 0;
};

}  // namespace multiprocessing::detail

// Pairs the two archives for cereal, whose enum support (std::byte among them) loads
// through save_minimal's type and so must know the output archive of an input archive.
CEREAL_SETUP_ARCHIVE_TRAITS(multiprocessing::detail::InArchive, multiprocessing::detail::OutArchive)

namespace multiprocessing::detail {

// cereal calls prologue() before it loads any value and epilogue() after; these count
// the nesting for InArchive::max_depth. Only values that can hold others count: cereal's
// own wrappers (a name-value pair, a size, a block of bytes) and numbers are leaves or
// stand for the value they wrap. (An exception leaves the count high, but the archive is
// dropped with the message.)
template <class T>
inline constexpr bool counts_as_nesting_level = std::is_class_v<T>;
template <class T>
inline constexpr bool counts_as_nesting_level<cereal::NameValuePair<T>> = false;
template <class T>
inline constexpr bool counts_as_nesting_level<cereal::SizeTag<T>> = false;
template <class T>
inline constexpr bool counts_as_nesting_level<cereal::BinaryData<T>> = false;

template <class T>
void prologue(InArchive& ar, const T&) {
    if constexpr (counts_as_nesting_level<T>) ar.enter();
}
template <class T>
void epilogue(InArchive& ar, const T&) noexcept {
    if constexpr (counts_as_nesting_level<T>) ar.leave();
}

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
// Refuses `count` elements of `element_bytes` each (their encoded size, which for numbers
// is also what they take in memory) when the message has fewer bytes left than they need.
inline void require_bytes_for(InArchive& ar, cereal::size_type count, std::size_t element_bytes) {
    if (element_bytes != 0 && count > ar.remaining() / element_bytes)
        throw ProcessError("multiprocessing: a message from another process is truncated or corrupt (" +
                           std::to_string(count) + " elements of " + std::to_string(element_bytes) +
                           " bytes each in the " + std::to_string(ar.remaining()) + " bytes left of it)");
}

template <class T>
    requires std::is_arithmetic_v<T>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, std::valarray<T>& v) {
    cereal::size_type size = 0;
    ar(cereal::make_size_tag(size));  // checked against what is left (see SizeTag above)
    require_bytes_for(ar, size, sizeof(T));
    v.resize(static_cast<std::size_t>(size));
    if (size != 0) ar(cereal::binary_data(&v[0], static_cast<std::size_t>(size) * sizeof(T)));
}

// std::filesystem::path crosses as its native string (Python pickles a PurePath as its
// parts). Matched by shape rather than by name, so that this header need not include
// <filesystem> (~26k lines) for every program: a program that sends a path has included
// it. Only a filesystem path class (std's, or boost's) has all of these.
template <class P>
concept filesystem_path = requires(const P& p) {
    typename P::string_type;
    { p.native() } -> std::same_as<const typename P::string_type&>;
    p.root_name();
    p.extension();
    p.lexically_normal();
    P::preferred_separator;
};
template <class P>
    requires filesystem_path<P>
void CEREAL_SAVE_FUNCTION_NAME(OutArchive& ar, const P& path) {
    ar(path.native());
}
template <class P>
    requires filesystem_path<P>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, P& path) {
    typename P::string_type native;
    ar(native);
    path = P(std::move(native));
}

// ---- containers: memory only for elements that arrived ---------------------------------
//
// cereal sizes a container to its count before it reads an element (resize, or reserve
// for the unordered ones). The SizeTag check above bounds the count by the bytes left,
// but not the memory: count x sizeof(element) is reserved, so an 8 MiB message claiming
// 8 Mi std::strings made the receiver allocate 256 MiB before it noticed that the
// strings were missing (~33x the message). The loaders below, chosen over cereal's for
// our archive (more specialized) and in the same format, allocate only what the message
// can fill:
//   * numbers (vector, string, valarray): the count is checked against the bytes left at
//     sizeof(element) each, then the block is read at once: memory = message bytes;
//   * anything else: elements are appended one by one as they decode, the container
//     growing geometrically from at most 64 KiB, so what a message makes the receiver
//     hold is what it actually carried (times the element's in-memory size over its
//     smallest encoding, and the container's growth factor), never what it claimed.
inline constexpr std::size_t initial_reserve_bytes = 64 * 1024;

template <class T>
std::size_t initial_reserve(cereal::size_type count) noexcept {
    const std::size_t cap = std::max<std::size_t>(1, initial_reserve_bytes / sizeof(T));
    return static_cast<std::size_t>(std::min<cereal::size_type>(count, cap));
}

// A vector of numbers or a string: the count, then the elements as one block of bytes.
template <class C>
void load_contiguous(InArchive& ar, C& c) {
    using T = typename C::value_type;
    cereal::size_type size = 0;
    ar(cereal::make_size_tag(size));
    require_bytes_for(ar, size, sizeof(T));
    c.resize(static_cast<std::size_t>(size));
    if (size != 0) ar(cereal::binary_data(c.data(), static_cast<std::size_t>(size) * sizeof(T)));
}

template <class T, class A>
    requires std::is_arithmetic_v<T> && (!std::is_same_v<T, bool>)
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, std::vector<T, A>& v) {
    load_contiguous(ar, v);
}

// The fewest bytes an element of type T takes in a message: a number or a plain struct
// its size, a string or container its count, an optional its flag, a variant its index;
// anything else at least one byte. A count that cannot fit at this rate is refused at
// once, before the first element is decoded.
template <class T>
constexpr std::size_t min_encoded_size() noexcept {
    if constexpr (std::is_arithmetic_v<T> || plain_bytes_class<T>)
        return sizeof(T);
    else if constexpr (is_std_aggregate_cereal_knows<T>)
        return 1;
    else if constexpr (requires(const T& t) {
                           typename T::value_type;
                           t.size();
                           t.begin();
                       })
        return sizeof(cereal::size_type);
    else
        return 1;
}

template <class C>
void load_appending(InArchive& ar, C& c) {
    cereal::size_type size = 0;
    ar(cereal::make_size_tag(size));
    require_bytes_for(ar, size, min_encoded_size<typename C::value_type>());
    c.clear();
    if constexpr (requires { c.reserve(std::size_t(1)); })
        c.reserve(initial_reserve<typename C::value_type>(size));
    for (cereal::size_type i = 0; i < size; ++i) {
        c.emplace_back();
        ar(c.back());
    }
}

template <class T, class A>
    requires(!std::is_arithmetic_v<T>)
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, std::vector<T, A>& v) {
    load_appending(ar, v);
}
template <class T, class A>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, std::deque<T, A>& d) {
    load_appending(ar, d);
}
template <class T, class A>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, std::list<T, A>& l) {
    load_appending(ar, l);
}
template <class T, class A>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, std::forward_list<T, A>& l) {
    cereal::size_type size = 0;
    ar(cereal::make_size_tag(size));
    require_bytes_for(ar, size, min_encoded_size<T>());  // as every other container
    l.clear();
    auto last = l.before_begin();
    for (cereal::size_type i = 0; i < size; ++i) {
        last = l.emplace_after(last);
        ar(*last);
    }
}

template <class CharT, class Traits, class A>
    requires std::is_arithmetic_v<CharT>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, std::basic_string<CharT, Traits, A>& str) {
    load_contiguous(ar, str);
}

// cereal reserves buckets for the claimed count (8 bytes each); these start small.
template <class S>
void load_unordered_set(InArchive& ar, S& set) {
    cereal::size_type size = 0;
    ar(cereal::make_size_tag(size));
    require_bytes_for(ar, size, min_encoded_size<typename S::key_type>());
    set.clear();
    set.reserve(initial_reserve<typename S::key_type>(size));
    for (cereal::size_type i = 0; i < size; ++i) {
        typename S::key_type key;
        ar(key);
        set.emplace(std::move(key));
    }
}
template <class K, class H, class E, class A>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, std::unordered_set<K, H, E, A>& set) {
    load_unordered_set(ar, set);
}
template <class K, class H, class E, class A>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, std::unordered_multiset<K, H, E, A>& set) {
    load_unordered_set(ar, set);
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
                  "(cereal's customization point, the one the library uses); for a type you cannot "
                  "edit (a library's, a std one), a non-member `template <class Archive> void "
                  "serialize(Archive& ar, T& value)` (or save/load) in namespace cereal; or pass a value type.");
};

template <class T>
constexpr void require_transferable() {
    if constexpr (!transferable<T>) (void)sizeof(cannot_cross_process_boundary<T>);
}

// What the encoders do for a type that cannot cross: the one static_assert above, and
// nothing else instantiated (no cereal or "deleted function" errors after it).
[[noreturn]] inline void unreachable_after_failed_check() { std::abort(); }

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
// A std::optional's "engaged" flag is a bool inside the object: a flag byte of 2 makes
// has_value() undefined behaviour (UBSan), and every built-in blocking manager method
// takes its timeout as a std::optional<double>. The flag's place is found once per type,
// by construction (optional_flag_offset), and its byte checked before has_value() runs.
//
// Not covered: a plain struct with a bool or an enum member (no code can know which of
// its bytes those are); give such a struct a serialize() to have it checked.
template <class T>
inline constexpr bool is_std_variant = false;
template <class T>
inline constexpr bool is_std_optional = false;
template <class T>
inline constexpr bool is_std_optional<std::optional<T>> = true;

// The offset of a trivially copyable std::optional<T>'s engaged flag: the one byte that
// an empty optional sets to 0 whatever the storage held before, and an engaged one (its
// value all 0xff bytes) sets to 1. The value's own bytes fail the first test (an empty
// optional leaves them as they were) or the second (they are 0xff). -1 if no single byte
// qualifies (an implementation that stores the flag otherwise): then it is not checked.
template <class O>
std::ptrdiff_t optional_flag_offset() noexcept {
    static const std::ptrdiff_t offset = [] {
        using V = typename O::value_type;
        auto bytes_of_object = [](auto fill, auto construct) {
            alignas(O) unsigned char storage[sizeof(O)];
            std::memset(storage, fill, sizeof storage);
            construct(static_cast<void*>(storage));
            std::array<unsigned char, sizeof(O)> out{};
            std::memcpy(out.data(), storage, sizeof(O));
            return out;
        };
        auto empty = [](void* at) { ::new (at) O(); };
        auto engaged = [](void* at) {
            std::array<unsigned char, sizeof(V)> ones;
            ones.fill(0xff);
            ::new (at) O(std::in_place, std::bit_cast<V>(ones));
        };
        const auto e0 = bytes_of_object(0x00, empty), e1 = bytes_of_object(0xff, empty);
        const auto on = bytes_of_object(0x00, engaged);
        std::ptrdiff_t found = -1;
        for (std::size_t i = 0; i < sizeof(O); ++i) {
            if (e0[i] == 0 && e1[i] == 0 && on[i] == 1) {
                if (found >= 0) return std::ptrdiff_t(-1);
                found = static_cast<std::ptrdiff_t>(i);
            }
        }
        return found;
    }();
    return offset;
}
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
    } else if constexpr (is_std_optional<T>) {
        if (const std::ptrdiff_t at = optional_flag_offset<T>(); at >= 0) {
            const unsigned char flag = reinterpret_cast<const unsigned char*>(std::addressof(value))[at];
            if (flag > 1)
                throw ProcessError("multiprocessing: a message from another process is corrupt (a std::optional's "
                                   "flag is " + std::to_string(flag) + ", neither 0 nor 1)");
        }
        if (value.has_value()) check_raw_value(*value);
    }
}

template <class T>
void put(ByteWriter& w, const T& value) {
    if constexpr (!transferable<T>) {
        require_transferable<T>();
    } else if constexpr (raw_bytes<T>) {
        w.write(std::addressof(value), sizeof(T));
    } else {
        OutArchive ar(w);
        ar(value);
    }
}

template <class T>
T get(ByteReader& r) {
    if constexpr (!transferable<T>) {
        require_transferable<T>();
        unreachable_after_failed_check();
    } else if constexpr (raw_bytes<T>) {
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
        try {
            ar(value);
        } catch (const cereal::Exception& e) {
            // cereal's own checks (a variant index that names no alternative, ...) throw
            // its exception type: a caller expects the library's (errors.hpp).
            throw ProcessError(std::string("multiprocessing: a message from another process is corrupt (") + e.what() +
                               ")");
        }
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
