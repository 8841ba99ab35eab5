// The parent's side of a result: a one-shot slot that the pool's result thread fills and
// any number of threads wait on (AsyncResult's shared state).
#pragma once

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <optional>
#include <type_traits>
#include <vector>

#include "deadline.hpp"
#include "futex.hpp"
#include "remote_exception.hpp"

namespace multiprocessing::detail {

// Callback types as API.md gives them: the result by const reference, nothing for void.
template <class T>
struct value_callback {
    using type = std::function<void(const T&)>;
};
template <>
struct value_callback<void> {
    using type = std::function<void()>;
};
template <class T>
using value_callback_t = typename value_callback<T>::type;

// Python's error_callback(exc): takes the exception as a std::exception_ptr (any
// exception; rethrow it to look inside) or as a const std::exception& (what Python code
// reads: its type and what()). Every exception a task ends with is a std::exception
// (the task's own type, RemoteError, WorkerLostError, ...).
class ErrorCallback {
public:
    ErrorCallback() = default;
    template <class F>
        requires std::invocable<F&, std::exception_ptr>
    ErrorCallback(F fn) : fn_(std::move(fn)) {}  // NOLINT(google-explicit-constructor): a callback slot
    template <class F>
        requires(!std::invocable<F&, std::exception_ptr> && std::invocable<F&, const std::exception&>)
    ErrorCallback(F fn)  // NOLINT(google-explicit-constructor)
        : fn_([fn = std::move(fn)](std::exception_ptr error) mutable {
              try {
                  std::rethrow_exception(error);
              } catch (const std::exception& e) {
                  fn(e);
              } catch (...) {
                  fn(ProcessError("multiprocessing: the task failed with an exception that is not a "
                                  "std::exception"));
              }
          }) {}

    explicit operator bool() const noexcept { return static_cast<bool>(fn_); }
    void operator()(std::exception_ptr error) const { fn_(std::move(error)); }

private:
    std::function<void(std::exception_ptr)> fn_;
};
using error_callback_t = ErrorCallback;

// Runs a user callback in the result thread; an exception escaping it must not kill the
// thread that serves every other result, so it is reported and dropped.
template <class Fn, class... A>
void run_callback(const Fn& fn, A&&... args) noexcept {
    if (!fn) return;
    try {
        fn(std::forward<A>(args)...);
    } catch (...) {
        auto info = describe_current_exception();
        std::fprintf(stderr, "multiprocessing: a pool callback threw %s: %s (ignored)\n", info.type.c_str(),
                     info.what.c_str());
    }
}

class ResultSlotBase {
public:
    bool ready() const noexcept {
        // acquire: pairs with the release in publish(): a reader that sees ready sees
        // the value or error written before it.
        return ready_.load(std::memory_order_acquire) != 0;
    }

    void wait() const {
        while (!wait_until(std::nullopt)) {
        }
    }

    // True if ready within `timeout`.
    bool wait_for(std::chrono::duration<double> timeout) const {
        // Through Deadline: it saturates a timeout too large for the clock (1e12 s) to
        // "never" instead of overflowing.
        return wait_until(Deadline(timeout).at());
    }

    std::exception_ptr error() const noexcept { return error_; }

protected:
    // Called once, by the thread that completed the result, after the value or error is
    // stored and the callbacks have run.
    void publish() noexcept {
        // release: see ready().
        ready_.store(1, std::memory_order_release);
        // seq_cst fence: Dekker with wait_until's "count as waiter, fence, re-check".
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (waiters_.load(std::memory_order_relaxed)) futex_wake(ready_);
    }

    std::exception_ptr error_;

private:
    bool wait_until(std::optional<std::chrono::steady_clock::time_point> deadline) const {
        if (ready()) return true;
        // A short poll first: a result usually comes back within microseconds.
        if (spin_until([&] { return ready(); }, SpinPolicy{1000, std::chrono::microseconds(20)})) return true;
        for (;;) {
            std::optional<std::chrono::nanoseconds> left;
            if (deadline) {
                left = *deadline - std::chrono::steady_clock::now();
                if (left->count() <= 0) return ready();
            }
            // relaxed increments: the fence below orders them against the re-check.
            waiters_.fetch_add(1, std::memory_order_relaxed);
            std::atomic_thread_fence(std::memory_order_seq_cst);
            if (!ready()) futex_wait(ready_, 0, left);
            waiters_.fetch_sub(1, std::memory_order_relaxed);
            if (ready()) return true;
        }
    }

    mutable std::atomic<std::uint32_t> ready_{0};
    mutable std::atomic<std::uint32_t> waiters_{0};
};

// The slot for a value of type T (void: no value).
template <class T>
class ResultSlot : public ResultSlotBase {
public:
    ResultSlot(value_callback_t<T> callback = {}, error_callback_t error_callback = {})
        : callback_(std::move(callback)), error_callback_(std::move(error_callback)) {}

    // The first completion wins; later ones (a map's other chunks after a failure) are
    // ignored. Only the result thread (or terminate, after it stopped) completes.
    template <class... V>
    void set_value(V&&... v) {
        if (done_) return;
        done_ = true;
        if constexpr (!std::is_void_v<T>) {
            value_.emplace(std::forward<V>(v)...);
            run_callback(callback_, *value_);
        } else {
            run_callback(callback_);
        }
        publish();
    }

    void set_error(std::exception_ptr e) {
        if (done_) return;
        done_ = true;
        error_ = std::move(e);
        run_callback(error_callback_, error_);
        publish();
    }

    bool done() const noexcept { return done_; }

    // Only after ready().
    const std::conditional_t<std::is_void_v<T>, char, T>& value() const {
        if constexpr (!std::is_void_v<T>)
            return *value_;
        else {
            static const char none = 0;
            return none;
        }
    }

    // Only after ready(), by the result's single owner.
    auto take_value() { return std::move(*value_); }

private:
    value_callback_t<T> callback_;
    error_callback_t error_callback_;
    std::optional<std::conditional_t<std::is_void_v<T>, char, T>> value_;
    bool done_ = false;  // touched by the completing thread only
};

}  // namespace multiprocessing::detail
