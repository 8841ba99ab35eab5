// Python's multiprocessing.sharedctypes: Value, Array, RawValue, RawArray.
//
// The value or the elements live in shared memory, so a child's writes are the
// parent's reads (nothing is copied). T must be trivially copyable, as ctypes types
// are: an int, a double, a bool, or a plain struct like Point{double x, y;}. Value and
// Array are synchronized: get_lock() gives the RLock (by default; a Lock if you pass
// one) to hold around read-modify-write sequences such as `v.value() += 1`.
#pragma once

#include <algorithm>
#include <cstddef>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <new>
#include <string>
#include <mutex>
#include <ranges>
#include <span>
#include <type_traits>
#include <utility>

#include "context.hpp"
#include "detail/shared_object.hpp"
#include "errors.hpp"
#include "synchronize.hpp"

namespace multiprocessing {

namespace detail {

// The bytes of a shared value or array: an aligned slot for each element.
template <class T>
struct alignas(alignof(T) > 64 ? alignof(T) : 64) SharedElements {
    std::size_t count;
    explicit SharedElements(std::size_t n) : count(n) {}
};

template <class T>
class SharedStorage {
    static_assert(std::is_trivially_copyable_v<T> && !std::is_pointer_v<T>,
                  "multiprocessing: Value<T>/Array<T> hold T in shared memory, so T must be trivially "
                  "copyable and hold no pointers (an int, a double, a bool, a struct of those), as "
                  "Python's ctypes types are. For strings or containers, use a Queue, a Pipe or a "
                  "manager.");

public:
    SharedStorage() = default;
    explicit SharedStorage(std::size_t n)
        : block_(SharedBlock<SharedElements<T>>::create(n * sizeof(T), "mp-sharedctypes", n)) {
        // The segment is zero-filled, which is Python's Array(typecode, n). A struct with
        // default member values gets them, as it would anywhere else.
        if constexpr (!std::is_trivially_default_constructible_v<T> && std::is_default_constructible_v<T>)
            std::uninitialized_value_construct_n(data(), n);
    }
    T* data() const noexcept { return std::launder(reinterpret_cast<T*>(block_.extra())); }
    std::size_t size() const noexcept { return block_->count; }

    ReducedBlock reduce(PassedFds& fds) const { return block_.reduce(fds); }
    static SharedStorage rebuild(const ReducedBlock& r) {
        SharedStorage s;
        s.block_ = SharedBlock<SharedElements<T>>::rebuild(r);
        if (s.block_.extra_size() < s.size() * sizeof(T))
            throw ValueError("a shared Value or Array passed to this process is smaller than its element count says");
        return s;
    }

private:
    SharedBlock<SharedElements<T>> block_;
};

// A Value or Array in a spawned child's payload: its storage and its lock.
template <class L>
struct ReducedSynchronized {
    ReducedBlock storage;
    typename L::reduced_type lock;
};

// What Value and Array add to their raw forms: the lock, and Python's `with v:` as
// `std::lock_guard g(v);`.
template <class L>
class Synchronized {
public:
    L& get_lock() noexcept { return lock_; }
    void acquire() { lock_.acquire(); }
    void release() { lock_.release(); }
    void lock() { lock_.acquire(); }
    void unlock() { lock_.release(); }
    bool try_lock() { return lock_.acquire(false); }

protected:
    Synchronized() = default;
    explicit Synchronized(L lock) : lock_(std::move(lock)) {}
    const L& lock_handle() const noexcept { return lock_; }

private:
    L lock_;
};

}  // namespace detail

// RawValue(typecode, value): one T in shared memory, no lock.
template <class T>
class RawValue {
public:
    static constexpr bool is_process_shared_handle = true;

    RawValue() : RawValue(T{}) {}
    explicit RawValue(const T& initial) : storage_(1) { *storage_.data() = initial; }

    T& value() const noexcept { return *storage_.data(); }

    // Under spawn and forkserver, the segment's fd reaches the child (detail/reduction.hpp).
    using reduced_type = detail::ReducedBlock;
    reduced_type reduce(detail::PassedFds& fds) const { return storage_.reduce(fds); }
    static RawValue rebuild(const reduced_type& r) { return RawValue(detail::SharedStorage<T>::rebuild(r)); }

protected:
    explicit RawValue(detail::SharedStorage<T> storage) : storage_(std::move(storage)) {}

private:
    detail::SharedStorage<T> storage_;
};

// Value(typecode, value): a RawValue with a lock (an RLock unless L says otherwise).
template <class T, class L = RLock>
class Value : public RawValue<T>, public detail::Synchronized<L> {
public:
    Value() = default;
    explicit Value(const T& initial) : RawValue<T>(initial) {}
    Value(const T& initial, L lock) : RawValue<T>(initial), detail::Synchronized<L>(std::move(lock)) {}

    // The unsynchronized view (Python's get_obj()).
    const RawValue<T>& get_obj() const noexcept { return *this; }

    using reduced_type = detail::ReducedSynchronized<L>;
    reduced_type reduce(detail::PassedFds& fds) const {
        return {RawValue<T>::reduce(fds), this->lock_handle().reduce(fds)};
    }
    static Value rebuild(const reduced_type& r) { return Value(RawValue<T>::rebuild(r.storage), L::rebuild(r.lock)); }

private:
    Value(RawValue<T> storage, L lock) : RawValue<T>(std::move(storage)), detail::Synchronized<L>(std::move(lock)) {}
};

// RawArray(typecode, n | sequence): a fixed-size array in shared memory, no lock.
template <class T>
class RawArray {
public:
    static constexpr bool is_process_shared_handle = true;
    using value_type = T;
    using iterator = T*;
    using const_iterator = const T*;

    // n zero-filled elements (Array('i', 10)).
    explicit RawArray(std::size_t n) : storage_(n) {}
    // The given elements (Array('i', [1, 2, 3])).
    RawArray(std::initializer_list<T> items) : RawArray(std::span<const T>(items.begin(), items.size())) {}
    template <std::ranges::input_range R>
        requires(std::convertible_to<std::ranges::range_reference_t<R>, T> &&
                 !std::is_base_of_v<RawArray, std::remove_cvref_t<R>>)  // copies share, never clone
    explicit RawArray(R&& items) : storage_(count(items)) {
        std::ranges::copy(items, storage_.data());
    }

    T& operator[](std::size_t i) const noexcept { return storage_.data()[i]; }
    T& at(std::size_t i) const {
        if (i >= size())
            throw IndexError("Array index " + std::to_string(i) + " out of range (size " + std::to_string(size()) +
                             ")");
        return storage_.data()[i];
    }
    std::size_t size() const noexcept { return storage_.size(); }
    T* data() const noexcept { return storage_.data(); }
    std::span<T> span() const noexcept { return {data(), size()}; }
    T* begin() const noexcept { return data(); }
    T* end() const noexcept { return data() + size(); }

    // Under spawn and forkserver, the segment's fd reaches the child (detail/reduction.hpp).
    using reduced_type = detail::ReducedBlock;
    reduced_type reduce(detail::PassedFds& fds) const { return storage_.reduce(fds); }
    static RawArray rebuild(const reduced_type& r) { return RawArray(detail::SharedStorage<T>::rebuild(r)); }

protected:
    explicit RawArray(detail::SharedStorage<T> storage) : storage_(std::move(storage)) {}

private:
    template <class R>
    static std::size_t count(R& items) {
        if constexpr (std::ranges::sized_range<R>) {
            return std::ranges::size(items);
        } else {
            return static_cast<std::size_t>(std::ranges::distance(items));
        }
    }
    detail::SharedStorage<T> storage_;
};

// Array(typecode, n | sequence): a RawArray with a lock (an RLock unless L says otherwise).
template <class T, class L = RLock>
class Array : public RawArray<T>, public detail::Synchronized<L> {
    using Lock = detail::Synchronized<L>;

public:
    explicit Array(std::size_t n) : RawArray<T>(n) {}
    Array(std::size_t n, L lock) : RawArray<T>(n), Lock(std::move(lock)) {}
    Array(std::initializer_list<T> items) : RawArray<T>(items) {}
    Array(std::initializer_list<T> items, L lock) : RawArray<T>(items), Lock(std::move(lock)) {}
    template <std::ranges::input_range R>
        requires(std::convertible_to<std::ranges::range_reference_t<R>, T> &&
                 !std::is_base_of_v<RawArray<T>, std::remove_cvref_t<R>>)
    explicit Array(R&& items) : RawArray<T>(std::forward<R>(items)) {}
    // Array(typecode, sequence, lock=lock).
    template <std::ranges::input_range R>
        requires(std::convertible_to<std::ranges::range_reference_t<R>, T> &&
                 !std::is_base_of_v<RawArray<T>, std::remove_cvref_t<R>>)
    Array(R&& items, L lock) : RawArray<T>(std::forward<R>(items)), Lock(std::move(lock)) {}

    const RawArray<T>& get_obj() const noexcept { return *this; }

    using reduced_type = detail::ReducedSynchronized<L>;
    reduced_type reduce(detail::PassedFds& fds) const {
        return {RawArray<T>::reduce(fds), this->lock_handle().reduce(fds)};
    }
    static Array rebuild(const reduced_type& r) { return Array(RawArray<T>::rebuild(r.storage), L::rebuild(r.lock)); }

private:
    Array(RawArray<T> storage, L lock) : RawArray<T>(std::move(storage)), Lock(std::move(lock)) {}
};

// Context's factories (declared in context.hpp).
template <class T, class... A>
auto Context::Value(A&&... args) const {
    return multiprocessing::Value<T>(std::forward<A>(args)...);
}
template <class T, class... A>
auto Context::Array(A&&... args) const {
    return multiprocessing::Array<T>(std::forward<A>(args)...);
}

}  // namespace multiprocessing
