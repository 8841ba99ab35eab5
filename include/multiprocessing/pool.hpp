// Python's multiprocessing.pool: Pool, AsyncResult, MapResult, IMapIterator.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "context.hpp"
#include "detail/callable.hpp"
#include "detail/codec.hpp"
#include "detail/pool_core.hpp"
#include "detail/progress.hpp"
#include "detail/results.hpp"
#include "detail/worker.hpp"
#include "errors.hpp"
#include "functools.hpp"  // mp::partial, for the functions given to a pool

namespace multiprocessing {

namespace detail {

// What a pool's initializer is: any callable a task may be, with Python's initargs
// after it: `.initializer = {init, queue}` is `initializer=init, initargs=(queue,)`.
// Like Process arguments, initargs may be shared handles (a Queue, a Lock, a Value).
class Initializer {
public:
    Initializer() = default;
    template <class F, class... Args>
        requires(!std::is_same_v<std::decay_t<F>, Initializer> &&
                 std::is_invocable_v<stored_callable_t<F>&, stored_arg_t<Args>&...>)
    Initializer(F&& f, Args&&... initargs) {  // NOLINT: converting, so `.initializer = init` reads as in Python
        using Fn = stored_callable_t<F>;
        require_transferable_callable<Fn>();
        (require_process_argument<stored_arg_t<Args>>(), ...);
        Fn fn(std::forward<F>(f));
        std::tuple<stored_arg_t<Args>...> stored(std::forward<Args>(initargs)...);
        // Encoded only for a pool whose workers are spawned: a fork pool needs none of it.
        portable_ = [fn, stored](int fds_ahead) {
            return std::apply([&](const auto&... a) { return make_portable_call(fds_ahead, fn, a...); }, stored);
        };
        fn_ = [fn, stored]() mutable { std::apply([&](auto&... a) { std::invoke(fn, a...); }, stored); };
    }
    explicit operator bool() const noexcept { return static_cast<bool>(fn_); }
    const std::function<void()>& function() const noexcept { return fn_; }
    // The same call, encoded for a spawned worker that is given `fds_ahead` fds before
    // the initializer's own.
    PortableCall portable(int fds_ahead) const { return portable_ ? portable_(fds_ahead) : PortableCall{}; }

private:
    std::function<void()> fn_;
    std::function<PortableCall(int)> portable_;
};

template <class R>
using map_value_t = std::conditional_t<std::is_void_v<R>, void, std::vector<R>>;

}  // namespace detail

struct PoolOptions {
    std::optional<std::size_t> processes = {};       // empty: cpu_count()
    detail::Initializer initializer = {};            // run once in each worker
    std::optional<std::size_t> maxtasksperchild = {};  // empty: workers live as long as the pool
    std::optional<Context> context = {};
    std::optional<Timeout> task_timeout = {};        // kill and replace a worker whose task runs longer
};

namespace detail {
// multiprocessing.dummy's Pool options (Python's ThreadPool(processes, initializer,
// initargs)): the initializer is any callable, run in each worker thread; a lambda
// carries initargs as captures.
struct ThreadPoolOptions {
    std::optional<std::size_t> processes = {};         // empty: cpu_count()
    std::function<void()> initializer = {};
    std::optional<std::size_t> maxtasksperchild = {};  // empty: threads live as long as the pool
};
}  // namespace detail

template <class R>
struct ApplyOptions {
    detail::value_callback_t<R> callback = {};
    detail::error_callback_t error_callback = {};
};

struct MapOptions {
    std::optional<std::size_t> chunksize = {};
    bool progress = false;  // a progress bar on stderr, drawn by the parent as items finish
};

template <class R>
struct MapAsyncOptions {
    std::optional<std::size_t> chunksize = {};
    detail::value_callback_t<detail::map_value_t<R>> callback = {};
    detail::error_callback_t error_callback = {};
    bool progress = false;  // as MapOptions::progress; the bar ends before the callbacks run
};

// ---- results ---------------------------------------------------------------------------

template <class R>
class AsyncResult {
public:
    explicit AsyncResult(std::shared_ptr<detail::ResultSlot<R>> slot) : slot_(std::move(slot)) {}

    // The result; rethrows the task's exception. May be called again.
    R get() const {
        slot_->wait();
        return value();
    }
    R get(Timeout timeout) const {
        if (!slot_->wait_for(timeout))
            throw TimeoutError("AsyncResult.get: the result was not ready within " + std::to_string(timeout.count()) +
                               " s");
        return value();
    }
    void wait() const { slot_->wait(); }
    bool wait(Timeout timeout) const { return slot_->wait_for(timeout); }
    // The result moved out, for the one owner of a ready result (the blocking map).
    R take() && {
        slot_->wait();
        if (auto e = slot_->error()) std::rethrow_exception(e);
        if constexpr (!std::is_void_v<R>) return slot_->take_value();
    }
    bool ready() const { return slot_->ready(); }
    bool successful() const {
        if (!ready()) throw ValueError("AsyncResult.successful: the result is not ready yet; wait() for it first");
        return !slot_->error();
    }

protected:
    R value() const {
        if (auto e = slot_->error()) std::rethrow_exception(e);
        if constexpr (std::is_copy_constructible_v<R>)
            return slot_->value();
        else if constexpr (!std::is_void_v<R>)
            return slot_->take_value();  // a move-only result (a dummy pool's): the first get() takes it
    }
    std::shared_ptr<detail::ResultSlot<R>> slot_;
};

// The result of map_async / starmap_async: an AsyncResult of the whole list.
template <class R>
class MapResult : public AsyncResult<detail::map_value_t<R>> {
public:
    using AsyncResult<detail::map_value_t<R>>::AsyncResult;
};

namespace detail {

// ---- tasks -------------------------------------------------------------------------------

inline std::exception_ptr rebuild(ByteReader& body) {
    return ExceptionRegistry::instance().rebuild(get<ExceptionInfo>(body));
}
inline std::exception_ptr rebuild(ByteReader&& body) { return rebuild(body); }

// What f(args...) gives, decayed. Not invocable: void, so that the caller's static_assert
// (with its message) reports the mistake rather than a failed overload resolution.
template <class Fn, class... A>
struct apply_result {
    using type = void;
};
template <class Fn, class... A>
    requires std::is_invocable_v<Fn&, A&...>
struct apply_result<Fn, A...> {
    using type = std::conditional_t<std::is_void_v<std::invoke_result_t<Fn&, A&...>>, void,
                                    std::decay_t<std::invoke_result_t<Fn&, A&...>>>;
};
template <class Fn, class... A>
using apply_result_t = typename apply_result<Fn, A...>::type;

template <class Range>
using item_t = stored_arg_t<std::ranges::range_value_t<Range>>;

template <class T>
inline constexpr bool is_tuple_like = tuple_like<T>;


template <class Fn, class... A>
class ApplyTask final : public Task {
public:
    using R = std::decay_t<std::invoke_result_t<Fn&, A&...>>;
    using Result = std::conditional_t<std::is_void_v<std::invoke_result_t<Fn&, A&...>>, void, R>;

    ApplyTask(Fn fn, std::tuple<A...> args, std::shared_ptr<ResultSlot<Result>> slot)
        : fn_(std::move(fn)), args_(std::move(args)), slot_(std::move(slot)) {
        ByteWriter counter;
        write(counter);
        size = counter.written();
    }
    code_address invoker() const override { return address_of_code(&invoke_apply<Fn, A...>); }
    void write_body(std::byte* out) override {
        ByteWriter w(out);
        write(w);
    }
    void complete(const ResultHeader& h, ByteReader body) override {
        if (h.format == ResultFormat::error) return slot_->set_error(rebuild(body));
        if constexpr (std::is_void_v<Result>)
            slot_->set_value();
        else
            slot_->set_value(get<R>(body));
    }
    void fail(std::exception_ptr e) override { slot_->set_error(std::move(e)); }

private:
    void write(ByteWriter& w) {
        put_callable(w, fn_);
        std::apply([&](const auto&... a) { (put(w, a), ...); }, args_);
    }
    Fn fn_;
    std::tuple<A...> args_;
    std::shared_ptr<ResultSlot<Result>> slot_;
};

// Calls `item(i, value_or_error)` for each of the `count` items of a chunk's result.
template <class R, class OnItem>
void for_each_item(const ResultHeader& h, ByteReader& body, OnItem&& item) {
    constexpr bool is_void = std::is_void_v<R>;
    std::conditional_t<is_void, char, R>* const none = nullptr;
    if (h.format == ResultFormat::error) {
        // The chunk failed as a whole (its function could not even be decoded).
        auto e = rebuild(body);
        for (std::uint32_t i = 0; i < h.count; ++i) item(i, none, e);
        return;
    }
    for (std::uint32_t i = 0; i < h.count; ++i) {
        if constexpr (!is_void) {
            if (h.format == ResultFormat::chunk_values) {
                R v = get<R>(body);
                item(i, &v, nullptr);
                continue;
            }
        }
        const auto ok = get<std::uint8_t>(body);
        if (!ok) {
            item(i, none, rebuild(body));
        } else if constexpr (is_void) {
            item(i, none, nullptr);
        } else {
            R v = get<R>(body);
            item(i, &v, nullptr);
        }
    }
}

template <bool Star, class Fn, class T>
using chunk_result_t = item_result_t<Star, Fn, T>;

// The state of one map call: the whole result list, filled chunk by chunk.
template <class R>
struct MapJob {
    using Slot = ResultSlot<map_value_t<R>>;
    MapJob(std::size_t n, std::size_t chunks, std::shared_ptr<Slot> s) : remaining(chunks), slot(std::move(s)) {
        if constexpr (!std::is_void_v<R>) values.resize(n);
    }
    std::conditional_t<std::is_void_v<R>, char, std::vector<R>> values{};
    std::size_t remaining;
    std::shared_ptr<Slot> slot;
    std::unique_ptr<ProgressBar> progress;  // null unless the caller asked for one

    void chunk_done(std::size_t items) {
        if (progress) progress->advance(items);
        if (--remaining == 0 && !slot->done()) {
            // The last line goes out before get() returns, so it never lands amid the caller's output.
            if (progress) progress->finish();
            if constexpr (std::is_void_v<R>)
                slot->set_value();
            else
                slot->set_value(std::move(values));
        }
    }
    void fail(std::exception_ptr e) {
        if (progress) progress->finish();
        slot->set_error(std::move(e));
    }

    // A chunk of items [begin, begin + count) came back; `for_each` calls its argument
    // with (index in chunk, value or null, error or null) for each item.
    template <class ForEach>
    void complete_chunk(std::size_t begin, std::size_t count, ForEach&& for_each) {
        if (slot->done()) return;  // the map already failed
        std::exception_ptr first_error;
        for_each([&](std::uint32_t i, auto* value, std::exception_ptr e) {
            if (e && !first_error) first_error = e;
            if constexpr (!std::is_void_v<R>)
                if (value) values[begin + i] = std::move(*value);
        });
        if (first_error) return fail(first_error);
        chunk_done(count);
    }
};

// A chunk's body: the function, the item count, then the items (as one block of bytes
// when they are trivially copyable and stored contiguously).
template <class T, class Fn, class It>
void put_chunk(ByteWriter& w, const Fn& fn, It first, std::size_t count) {
    put_callable(w, fn);
    put(w, static_cast<std::uint32_t>(count));
    if constexpr (raw_bytes<T> && std::contiguous_iterator<It> && std::is_same_v<std::iter_value_t<It>, T>) {
        w.write(std::to_address(first), count * sizeof(T));
    } else {
        for (std::size_t i = 0; i < count; ++i, ++first) {
            if constexpr (std::is_same_v<std::remove_cvref_t<std::iter_reference_t<It>>, T>)
                put(w, *first);
            else
                put(w, T(*first));
        }
    }
}

// A chunk of a map over items [first, first + count). The items are read when the chunk
// is encoded into a worker's ring: from the caller's own range for a blocking map (which
// drops its unsent chunks before it returns), from a copy the map owns otherwise.
template <bool Star, class Fn, class T, class It>
class MapChunkTask final : public Task {
public:
    using R = chunk_result_t<Star, Fn, T>;

    MapChunkTask(const Fn& fn, It first, std::size_t begin, std::size_t count, std::shared_ptr<const void> input,
                 std::shared_ptr<MapJob<R>> job)
        : fn_(fn), first_(first), begin_(begin), count_(count), input_(std::move(input)), job_(std::move(job)) {
        ByteWriter counter;
        put_chunk<T>(counter, fn_, first_, count_);
        size = counter.written();
    }
    code_address invoker() const override { return address_of_code(&invoke_chunk<Star, Fn, T>); }
    void write_body(std::byte* out) override {
        ByteWriter w(out);
        put_chunk<T>(w, fn_, first_, count_);
    }
    void complete(const ResultHeader& h, ByteReader body) override {
        if (job_->slot->done()) return;  // the map already failed
        if constexpr (!std::is_void_v<R> && raw_bytes<R> && !std::is_same_v<R, bool>) {
            if (h.format == ResultFormat::chunk_values) {
                std::memcpy(job_->values.data() + begin_, body.take(count_ * sizeof(R)), count_ * sizeof(R));
                return job_->chunk_done(count_);
            }
        }
        job_->complete_chunk(begin_, count_, [&](auto&& item) { for_each_item<R>(h, body, item); });
    }
    void fail(std::exception_ptr e) override { job_->fail(std::move(e)); }
    const void* job() const noexcept override { return job_.get(); }
    std::optional<std::uint64_t> first_input_item() const noexcept override { return begin_; }

private:
    Fn fn_;
    It first_;
    std::size_t begin_, count_;
    std::shared_ptr<const void> input_;  // keeps an owned copy of the input alive
    std::shared_ptr<MapJob<R>> job_;
};

// ---- imap ---------------------------------------------------------------------------------

template <class R>
struct ItemOutcome {
    std::optional<std::conditional_t<std::is_void_v<R>, char, R>> value;
    std::exception_ptr error;
    bool filled() const noexcept { return value.has_value() || error; }
};

// The state of one imap / imap_unordered: pulls input lazily into chunk tasks, with at
// most `window` items pulled but not yet handed to the consumer.
template <class R>
class IMapJob final : public TaskSource, public std::enable_shared_from_this<IMapJob<R>> {
public:
    // Makes the next chunk from the input, starting at item `first`; null at the end.
    using Puller = std::function<std::unique_ptr<Task>(IMapJob&, std::uint64_t first)>;

    IMapJob(std::shared_ptr<PoolExecutor> core, bool ordered, std::size_t window) : core_(std::move(core)), ordered_(ordered), window_(window) {}

    void set_puller(Puller p) { pull_ = std::move(p); }
    // Set before the job is shared. Items are counted as their chunk comes back (result
    // thread, once per chunk), and the bar ends where the consumer's iteration ends.
    void show_progress(std::string label, std::optional<std::uint64_t> total) {
        progress_ = std::make_unique<ProgressBar>(std::move(label), total);
    }
    // Before the items are delivered: the consumer that then sees the last one and ends
    // the bar finds them counted.
    void count_done(std::size_t items) noexcept {
        if (progress_) progress_->advance(items);
    }

    void refill(bool unbounded) override {
        // Pull under our lock, submit under the pool's: one pool lock for the batch, and
        // the result thread is not kept from delivering while tasks are encoded.
        std::vector<std::unique_ptr<Task>> batch;
        std::uint64_t first = 0;
        {
            std::lock_guard lock(mutex_);
            first = pulled_;
            while (!exhausted_ && (unbounded || pulled_ - consumed_ < window_)) {
                std::unique_ptr<Task> task;
                try {
                    task = pull_(*this, pulled_);
                } catch (...) {
                    // The input itself threw: that ends the iteration with its error.
                    source_error_ = std::current_exception();
                    exhausted_ = true;
                    break;
                }
                if (!task) {
                    exhausted_ = true;
                    break;
                }
                const std::size_t n = static_cast<const Chunk&>(*task).count();
                if (ordered_) window_items_.resize(window_items_.size() + n);
                pulled_ += n;
                batch.push_back(std::move(task));
            }
        }
        if (!batch.empty()) {
            try {
                core_->submit(batch, /*internal=*/true);
            } catch (...) {
                // The pool refused the whole batch (it was terminated): none was taken.
                std::lock_guard lock(mutex_);
                for (auto& t : batch) {
                    const std::size_t n = static_cast<const Chunk&>(*t).count();
                    fail_range(first, n, std::current_exception());
                    first += n;
                }
            }
        }
        cv_.notify_all();
    }

    bool exhausted() const override {
        std::lock_guard lock(mutex_);
        return exhausted_;
    }

    void terminate(std::exception_ptr error) override {
        {
            std::lock_guard lock(mutex_);
            terminated_ = error;
            exhausted_ = true;
        }
        cv_.notify_all();
    }

    // A chunk's items arrived (result thread).
    void deliver(std::uint64_t first, std::uint32_t i, ItemOutcome<R> outcome) {
        std::lock_guard lock(mutex_);
        if (cancelled_) return;
        if (ordered_) {
            window_items_[first + i - consumed_] = std::move(outcome);
        } else {
            ready_.push_back(std::move(outcome));
        }
        arrivals_.fetch_add(1, std::memory_order_release);
    }
    void delivered() { cv_.notify_all(); }

    // A chunk of `count` items from item `first` came back (result thread); `for_each`
    // as MapJob::complete_chunk's.
    template <class ForEach>
    void complete_chunk(std::uint64_t first, std::size_t count, ForEach&& for_each) {
        count_done(count);
        for_each([&](std::uint32_t i, auto* value, std::exception_ptr e) {
            ItemOutcome<R> o;
            o.error = e;
            if constexpr (!std::is_void_v<R>) {
                if (value) o.value.emplace(std::move(*value));
            } else {
                if (!e) o.value.emplace();
            }
            deliver(first, i, std::move(o));
        });
        delivered();
    }
    void fail_chunk(std::uint64_t first, std::size_t count, std::exception_ptr e) {
        count_done(count);
        for (std::uint32_t i = 0; i < count; ++i) {
            ItemOutcome<R> o;
            o.error = e;
            deliver(first, i, std::move(o));
        }
        delivered();
    }

    // The next outcome, waiting at most until `deadline`.
    ItemOutcome<R> next(std::optional<std::chrono::steady_clock::time_point> deadline) {
        std::unique_lock lock(mutex_);
        bool polled = false;
        for (;;) {
            if (next_available()) break;
            if (exhausted_ && consumed_ == pulled_) {
                if (progress_) progress_->finish();
                if (terminated_) std::rethrow_exception(terminated_);
                if (source_error_) std::rethrow_exception(std::exchange(source_error_, nullptr));
                throw StopIteration();
            }
            if (terminated_) std::rethrow_exception(terminated_);
            if (!polled) {
                // Poll briefly first, without the lock: results usually come within
                // microseconds, and a sleep/wake pair costs more than that.
                polled = true;
                const auto seen = arrivals_.load(std::memory_order_acquire);
                lock.unlock();
                spin_until([&] { return arrivals_.load(std::memory_order_acquire) != seen; },
                           SpinPolicy{200, std::chrono::microseconds(20)});
                lock.lock();
                continue;
            }
            if (!deadline) {
                cv_.wait(lock);
            } else if (cv_.wait_until(lock, *deadline) == std::cv_status::timeout) {
                if (next_available()) break;
                throw TimeoutError("IMapIterator.next: no result within the timeout");
            }
        }
        ItemOutcome<R> out;
        if (ordered_) {
            out = std::move(window_items_.front());
            window_items_.pop_front();
        } else {
            out = std::move(ready_.front());
            ready_.pop_front();
        }
        ++consumed_;
        // Refill in batches, once half the window has been consumed.
        const bool more = !exhausted_ && pulled_ - consumed_ <= window_ / 2;
        lock.unlock();
        if (more) refill(false);
        return out;
    }

    void cancel() {
        {
            std::lock_guard lock(mutex_);
            cancelled_ = true;
            exhausted_ = true;
        }
        if (progress_) progress_->finish();
        core_->cancel_pending(this);
    }

    // What IMapJob needs of a chunk task.
    class Chunk : public Task {
    public:
        virtual std::size_t count() const noexcept = 0;
    };

private:
    bool next_available() const {
        return ordered_ ? (!window_items_.empty() && window_items_.front().filled()) : !ready_.empty();
    }

    void fail_range(std::uint64_t first, std::size_t n, std::exception_ptr e) {
        for (std::size_t i = 0; i < n; ++i) {
            ItemOutcome<R> o;
            o.error = e;
            if (ordered_)
                window_items_[first + i - consumed_] = std::move(o);
            else
                ready_.push_back(std::move(o));
        }
        arrivals_.fetch_add(1, std::memory_order_release);
    }

    std::shared_ptr<PoolExecutor> core_;
    const bool ordered_;
    const std::size_t window_;
    Puller pull_;
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<ItemOutcome<R>> window_items_;  // ordered: items consumed_ .. pulled_-1
    std::deque<ItemOutcome<R>> ready_;         // unordered: arrived, not yet consumed
    std::uint64_t pulled_ = 0, consumed_ = 0;
    bool exhausted_ = false, cancelled_ = false;
    std::exception_ptr terminated_, source_error_;
    std::atomic<std::uint64_t> arrivals_{0};  // a change tells a polling consumer to look
    std::unique_ptr<ProgressBar> progress_;    // null unless the caller asked for one
};

template <bool Star, class Fn, class T>
class IMapChunkTask final : public IMapJob<chunk_result_t<Star, Fn, T>>::Chunk {
public:
    using R = chunk_result_t<Star, Fn, T>;

    IMapChunkTask(const Fn& fn, std::vector<T> items, std::uint64_t first, std::shared_ptr<IMapJob<R>> job)
        : fn_(fn), items_(std::move(items)), count_(static_cast<std::uint32_t>(items_.size())), first_(first),
          job_(std::move(job)) {
        ByteWriter counter;
        write(counter);
        this->size = counter.written();
    }
    std::size_t count() const noexcept override { return count_; }
    code_address invoker() const override { return address_of_code(&invoke_chunk<Star, Fn, T>); }
    void write_body(std::byte* out) override {
        ByteWriter w(out);
        write(w);
        items_ = {};  // encoded: the copy in shared memory is the one that counts now
    }
    void complete(const ResultHeader& h, ByteReader body) override {
        job_->complete_chunk(first_, count_, [&](auto&& item) { for_each_item<R>(h, body, item); });
    }
    void fail(std::exception_ptr e) override { job_->fail_chunk(first_, count_, std::move(e)); }
    const void* job() const noexcept override { return job_.get(); }
    std::optional<std::uint64_t> first_input_item() const noexcept override { return first_; }

private:
    void write(ByteWriter& w) { put_chunk<T>(w, fn_, items_.begin(), items_.size()); }
    Fn fn_;
    std::vector<T> items_;
    std::uint32_t count_ = 0;
    std::uint64_t first_;
    std::shared_ptr<IMapJob<R>> job_;
};

// ---- tasks for a pool of threads ---------------------------------------------------------
//
// multiprocessing.dummy's pool runs on the same PoolCore, rings and result thread; only
// the transport differs. Its workers share this process's memory, so a task's ring
// record carries just the task's address: the worker runs the task in place, which
// keeps its outcome in itself, and commits an empty result; the result thread then
// completes it as any other. So any callable, argument and result type works, with no
// encoding. (The task object outlives the run: the pool drops it only after its result
// record, or after joining the worker threads.)

// `Base`: Task, or a Task with more to say (an imap chunk).
template <class Base = Task>
class LocalTask : public Base {
public:
    LocalTask() { this->size = sizeof(LocalTask*); }
    code_address invoker() const override { return address_of_code(&invoke); }
    void write_body(std::byte* out) override {
        const LocalTask* self = this;
        std::memcpy(out, &self, sizeof self);
    }
    // In a worker thread: runs the task, keeping its outcome; never throws.
    virtual void run() noexcept = 0;

private:
    static void invoke(ByteReader& in, std::uint64_t seq, ResultChannel& out) {
        LocalTask* task = nullptr;
        in.read(&task, sizeof task);
        task->run();
        out.reserve(seq, ResultFormat::value, 0, 0);
        out.commit();
    }
};

// One item's outcome, computed in a worker thread.
template <class R>
using LocalOutcome = ItemOutcome<R>;

template <bool Star, class Fn, class T, class R = chunk_result_t<Star, Fn, T>>
LocalOutcome<R> run_item(Fn& fn, T item) noexcept {
    LocalOutcome<R> o;
    try {
        if constexpr (std::is_void_v<R>) {
            call_item<Star>(fn, item);
            o.value.emplace();
        } else {
            o.value.emplace(call_item<Star>(fn, item));
        }
    } catch (...) {
        o.error = std::current_exception();
    }
    return o;
}

// Feeds kept outcomes to a job's complete_chunk.
template <class R>
auto each_outcome(std::vector<LocalOutcome<R>>& outcomes) {
    return [&outcomes](auto&& item) {
        for (std::uint32_t i = 0; i < outcomes.size(); ++i) {
            auto& o = outcomes[i];
            if constexpr (std::is_void_v<R>)
                item(i, static_cast<char*>(nullptr), o.error);
            else
                item(i, o.value ? &*o.value : nullptr, o.error);
        }
    };
}

template <class Fn, class... A>
class LocalApplyTask final : public LocalTask<> {
public:
    using Result = apply_result_t<Fn, A...>;

    LocalApplyTask(Fn fn, std::tuple<A...> args, std::shared_ptr<ResultSlot<Result>> slot)
        : fn_(std::move(fn)), args_(std::move(args)), slot_(std::move(slot)) {}
    void run() noexcept override {
        try {
            if constexpr (std::is_void_v<Result>)
                std::apply(fn_, args_);
            else
                value_.emplace(std::apply(fn_, args_));
        } catch (...) {
            error_ = std::current_exception();
        }
    }
    void complete(const ResultHeader&, ByteReader) override {
        if (error_) return slot_->set_error(std::move(error_));
        if constexpr (std::is_void_v<Result>)
            slot_->set_value();
        else
            slot_->set_value(std::move(*value_));
    }
    void fail(std::exception_ptr e) override { slot_->set_error(std::move(e)); }

private:
    Fn fn_;
    std::tuple<A...> args_;
    std::shared_ptr<ResultSlot<Result>> slot_;
    std::optional<std::conditional_t<std::is_void_v<Result>, char, Result>> value_;
    std::exception_ptr error_;
};

template <bool Star, class Fn, class T, class It>
class LocalMapChunkTask final : public LocalTask<> {
public:
    using R = chunk_result_t<Star, Fn, T>;

    LocalMapChunkTask(const Fn& fn, It first, std::size_t begin, std::size_t count,
                      std::shared_ptr<const void> input, std::shared_ptr<MapJob<R>> job)
        : fn_(fn), first_(first), begin_(begin), count_(count), input_(std::move(input)), job_(std::move(job)) {}
    void run() noexcept override {
        outcomes_.reserve(count_);
        auto it = first_;
        for (std::size_t i = 0; i < count_; ++i, ++it) outcomes_.push_back(run_item<Star, Fn, T>(fn_, T(*it)));
    }
    void complete(const ResultHeader&, ByteReader) override {
        job_->complete_chunk(begin_, count_, each_outcome<R>(outcomes_));
    }
    void fail(std::exception_ptr e) override { job_->fail(std::move(e)); }
    const void* job() const noexcept override { return job_.get(); }

private:
    Fn fn_;
    It first_;
    std::size_t begin_, count_;
    std::shared_ptr<const void> input_;
    std::shared_ptr<MapJob<R>> job_;
    std::vector<LocalOutcome<R>> outcomes_;
};

template <bool Star, class Fn, class T>
class LocalIMapChunkTask final : public LocalTask<typename IMapJob<chunk_result_t<Star, Fn, T>>::Chunk> {
public:
    using R = chunk_result_t<Star, Fn, T>;

    LocalIMapChunkTask(const Fn& fn, std::vector<T> items, std::uint64_t first, std::shared_ptr<IMapJob<R>> job)
        : fn_(fn), items_(std::move(items)), first_(first), job_(std::move(job)) {}
    std::size_t count() const noexcept override { return items_.size(); }
    void run() noexcept override {
        outcomes_.reserve(items_.size());
        for (auto& item : items_) outcomes_.push_back(run_item<Star, Fn, T>(fn_, std::move(item)));
    }
    void complete(const ResultHeader&, ByteReader) override {
        job_->complete_chunk(first_, items_.size(), each_outcome<R>(outcomes_));
    }
    void fail(std::exception_ptr e) override { job_->fail_chunk(first_, items_.size(), std::move(e)); }
    const void* job() const noexcept override { return job_.get(); }

private:
    Fn fn_;
    std::vector<T> items_;
    std::uint64_t first_;
    std::shared_ptr<IMapJob<R>> job_;
    std::vector<LocalOutcome<R>> outcomes_;
};

// ---- the two transports ----------------------------------------------------------------------

// Worker processes: tasks, arguments and results are encoded, so each must be able to
// cross a process boundary (checked at compile time).
struct ProcessTransport {
    static constexpr bool threads = false;
    using Options = PoolOptions;

    static std::shared_ptr<PoolExecutor> make_executor(PoolOptions options) {
        return std::make_shared<PoolCore>(core_options(std::move(options)));
    }
    static CoreOptions core_options(PoolOptions options) {
        require_takeover("Pool");
        CoreOptions core;
        core.start_method =
            parse_start_method(options.context ? options.context->get_start_method() : get_start_method());
        core.processes = options.processes.value_or(cpu_count());
        core.maxtasksperchild = options.maxtasksperchild.value_or(0);
        core.initializer = options.initializer.function();
        // A spawned worker is given the pool's segment first (spawned_worker_main).
        if (core.start_method != StartMethod::fork) core.portable_initializer = options.initializer.portable(1);
        // One too large for the clock (as Deadline counts it, beyond ~30 years) is none.
        if (options.task_timeout && options.task_timeout->count() <= 1e9)
            core.task_timeout = std::chrono::duration_cast<std::chrono::nanoseconds>(*options.task_timeout);
        return core;
    }

    template <class Fn, class... A>
    using Apply = ApplyTask<Fn, A...>;
    template <bool Star, class Fn, class T, class It>
    using MapChunk = MapChunkTask<Star, Fn, T, It>;
    template <bool Star, class Fn, class T>
    using IMapChunk = IMapChunkTask<Star, Fn, T>;

    template <class Fn, class... A>
    static constexpr void check_apply() {
        require_transferable_callable<Fn>();
        (require_transferable<A>(), ...);
        if constexpr (!std::is_void_v<apply_result_t<Fn, A...>>) require_transferable<apply_result_t<Fn, A...>>();
    }
    template <bool Star, class Fn, class T>
    static constexpr void check_map() {
        require_transferable_callable<Fn>();
        require_transferable<T>();
        using R = chunk_result_t<Star, Fn, T>;
        if constexpr (!std::is_void_v<R>) {
            require_transferable<R>();
            static_assert(std::is_default_constructible_v<R> || raw_bytes<R>,
                          "Pool.map: the function's result type must be default constructible (the result list is "
                          "allocated up front)");
        }
    }
};

// Threads of this process (multiprocessing.dummy): anything callable goes, as is.
struct ThreadTransport {
    static constexpr bool threads = true;
    using Options = ThreadPoolOptions;

    static std::shared_ptr<PoolExecutor> make_executor(ThreadPoolOptions options) {
        return std::make_shared<PoolCore>(core_options(std::move(options)));
    }
    static CoreOptions core_options(ThreadPoolOptions options) {
        CoreOptions core;
        core.threads = true;
        core.processes = options.processes.value_or(cpu_count());
        core.maxtasksperchild = options.maxtasksperchild.value_or(0);
        core.initializer = std::move(options.initializer);
        // A record is a task's address: small rings do.
        core.task_ring_bytes = core.result_ring_bytes = 1u << 20;
        return core;
    }

    template <class Fn, class... A>
    using Apply = LocalApplyTask<Fn, A...>;
    template <bool Star, class Fn, class T, class It>
    using MapChunk = LocalMapChunkTask<Star, Fn, T, It>;
    template <bool Star, class Fn, class T>
    using IMapChunk = LocalIMapChunkTask<Star, Fn, T>;

    template <class Fn, class... A>
    static constexpr void check_apply() {}
    template <bool Star, class Fn, class T>
    static constexpr void check_map() {
        using R = chunk_result_t<Star, Fn, T>;
        if constexpr (!std::is_void_v<R>)
            static_assert(std::is_default_constructible_v<R>,
                          "dummy::Pool.map: the function's result type must be default constructible (the result "
                          "list is allocated up front)");
    }
};

}  // namespace detail

// An input range over the results of imap / imap_unordered, with Python's next().
template <class R>
class IMapIterator {
    using Value = std::conditional_t<std::is_void_v<R>, std::monostate, R>;

public:
    explicit IMapIterator(std::shared_ptr<detail::IMapJob<R>> job) : job_(std::move(job)) {}
    IMapIterator(IMapIterator&&) noexcept = default;
    IMapIterator& operator=(IMapIterator&&) noexcept = default;
    IMapIterator(const IMapIterator&) = delete;
    IMapIterator& operator=(const IMapIterator&) = delete;
    // Cancels what has not been sent yet.
    ~IMapIterator() {
        if (job_) job_->cancel();
    }

    // The next result; rethrows that item's exception; StopIteration at the end.
    R next() { return unwrap(job_->next(std::nullopt)); }
    // TimeoutError if no result within `timeout`.
    R next(Timeout timeout) {
        return unwrap(job_->next(detail::Deadline(timeout).at()));
    }

    class iterator {
    public:
        using value_type = Value;
        using difference_type = std::ptrdiff_t;
        iterator() = default;
        explicit iterator(IMapIterator* owner) : owner_(owner) { advance(); }
        const Value& operator*() const { return *current_; }
        const Value* operator->() const { return &*current_; }
        iterator& operator++() {
            advance();
            return *this;
        }
        void operator++(int) { advance(); }
        friend bool operator==(const iterator& it, std::default_sentinel_t) { return !it.current_; }

    private:
        void advance() {
            current_.reset();
            try {
                if constexpr (std::is_void_v<R>) {
                    owner_->next();
                    current_.emplace();
                } else {
                    current_.emplace(owner_->next());
                }
            } catch (const StopIteration&) {
            }
        }
        IMapIterator* owner_ = nullptr;
        std::optional<Value> current_;
    };

    iterator begin() { return iterator(this); }
    std::default_sentinel_t end() const noexcept { return {}; }

private:
    R unwrap(detail::ItemOutcome<R> o) {
        if (o.error) std::rethrow_exception(o.error);
        if constexpr (!std::is_void_v<R>) return std::move(*o.value);
    }
    std::shared_ptr<detail::IMapJob<R>> job_;
};

// ---- Pool --------------------------------------------------------------------------------

// The pool logic, over a transport: worker processes (mp::Pool) or threads of this
// process (mp::dummy::Pool). Everything but the transport and the executor is shared.
template <class Transport>
class BasicPool {
public:
    using Options = typename Transport::Options;

    BasicPool() : BasicPool(Options{}) {}
    explicit BasicPool(std::size_t processes) : BasicPool(Options{.processes = processes}) {}
    explicit BasicPool(Options options) {
        if (options.processes && *options.processes == 0)
            throw ValueError("Pool: the number of processes must be at least 1");
        if constexpr (requires { options.maxtasksperchild; })
            if (options.maxtasksperchild && *options.maxtasksperchild == 0)
                throw ValueError("Pool: maxtasksperchild must be a positive number or empty");
        core_ = Transport::make_executor(std::move(options));
        core_->start();
    }

    BasicPool(BasicPool&&) noexcept = default;
    BasicPool& operator=(BasicPool&&) noexcept = default;
    BasicPool(const BasicPool&) = delete;
    BasicPool& operator=(const BasicPool&) = delete;

    // As Python's `with Pool() as pool:`: terminates; unfinished results then throw.
    ~BasicPool() {
        if (core_) {
            core_->terminate();
            core_->join();
        }
    }

    // ---- apply ----

    template <class F, class... Args>
    auto apply(F&& f, Args&&... args) {
        return apply_async(std::forward<F>(f), std::forward<Args>(args)...).take();
    }

    template <class F, class... Args>
    auto apply_async(F&& f, Args&&... args) {
        using Fn = detail::stored_callable_t<F>;
        using Tuple = std::tuple<detail::stored_arg_t<Args>...>;
        return submit_apply(Fn(std::forward<F>(f)), Tuple(std::forward<Args>(args)...));
    }

    // The form that takes callbacks: the arguments come as one tuple.
    template <class F, class... Args>
    auto apply_async(F&& f, std::tuple<Args...> args,
                     ApplyOptions<detail::apply_result_t<detail::stored_callable_t<F>, detail::stored_arg_t<Args>...>> options) {
        using Fn = detail::stored_callable_t<F>;
        using Tuple = std::tuple<detail::stored_arg_t<Args>...>;
        return submit_apply(Fn(std::forward<F>(f)), Tuple(std::move(args)), std::move(options));
    }

    // ---- map / starmap ----

    template <class F, std::ranges::input_range Range>
    auto map(F&& f, Range&& range, MapOptions options = {}) {
        return run_map<false>(std::forward<F>(f), std::forward<Range>(range), options.chunksize, options.progress);
    }

    template <class F, std::ranges::input_range Range>
    auto map_async(F&& f, Range&& range,
                   MapAsyncOptions<detail::chunk_result_t<false, detail::stored_callable_t<F>, detail::item_t<Range>>>
                       options = {}) {
        return submit_map<false>(std::forward<F>(f), std::forward<Range>(range), options.chunksize, options.progress,
                                 std::move(options.callback), std::move(options.error_callback));
    }

    template <class F, std::ranges::input_range Range>
    auto starmap(F&& f, Range&& range, MapOptions options = {}) {
        return run_map<true>(std::forward<F>(f), std::forward<Range>(range), options.chunksize, options.progress);
    }

    template <class F, std::ranges::input_range Range>
    auto starmap_async(F&& f, Range&& range,
                       MapAsyncOptions<detail::chunk_result_t<true, detail::stored_callable_t<F>, detail::item_t<Range>>>
                           options = {}) {
        return submit_map<true>(std::forward<F>(f), std::forward<Range>(range), options.chunksize, options.progress,
                                std::move(options.callback), std::move(options.error_callback));
    }

    // ---- imap ----

    template <class F, std::ranges::input_range Range>
    auto imap(F&& f, Range&& range, MapOptions options = {}) {
        return run_imap<false>(std::forward<F>(f), std::forward<Range>(range), options.chunksize, true,
                               options.progress);
    }
    template <class F, std::ranges::input_range Range>
    auto imap_unordered(F&& f, Range&& range, MapOptions options = {}) {
        return run_imap<false>(std::forward<F>(f), std::forward<Range>(range), options.chunksize, false,
                               options.progress);
    }

    // ---- lifetime ----

    void close() { core_->close(); }
    void terminate() { core_->terminate(); }
    void join() { core_->join(); }
    // Not in Python: every blocking call here has a timed form. True once the workers
    // have exited; false if `timeout` ran out first (call again, or terminate()).
    bool join(Timeout timeout) {
        return core_->join(detail::Deadline(timeout));
    }

    // The pids of the current workers (not in Python's API; handy for tests and tools).
    std::vector<pid_t> worker_pids() const { return core_->worker_pids(); }

private:
    void check_running(const char* what) const {
        if (!core_->accepting())
            throw ValueError(std::string("Pool.") + what + ": Pool not running (it was closed or terminated)");
    }

    template <class Fn, class... A>
    auto submit_apply(Fn fn, std::tuple<A...> args, ApplyOptions<detail::apply_result_t<Fn, A...>> options = {}) {
        if constexpr (!std::is_invocable_v<Fn&, A&...>) {
            static_assert(detail::dependent_false<Fn>, "Pool.apply: the function cannot be called with these arguments");
            return AsyncResult<void>(nullptr);  // never runs: nothing more is instantiated after the message
        } else {
            return submit_callable_apply(std::move(fn), std::move(args), std::move(options));
        }
    }

    template <class Fn, class... A>
    auto submit_callable_apply(Fn fn, std::tuple<A...> args, ApplyOptions<detail::apply_result_t<Fn, A...>> options) {
        Transport::template check_apply<Fn, A...>();
        using Task = typename Transport::template Apply<Fn, A...>;
        using Result = typename Task::Result;
        check_running("apply_async");
        auto slot = std::make_shared<detail::ResultSlot<Result>>(std::move(options.callback),
                                                                 std::move(options.error_callback));
        core_->submit(std::make_unique<Task>(std::move(fn), std::move(args), slot));
        return AsyncResult<Result>(std::move(slot));
    }

    template <bool Star, class F, class Range>
    auto run_map(F&& f, Range&& range, std::optional<std::size_t> chunksize, bool progress) {
        using R = detail::chunk_result_t<Star, detail::stored_callable_t<F>, detail::item_t<Range>>;
        // The chunks read the caller's range in place (it outlives this call); whatever
        // happens, none may still be waiting to be encoded when we return.
        const void* job = nullptr;
        auto result = submit_map<Star>(std::forward<F>(f), std::forward<Range>(range), chunksize, progress,
                                       detail::value_callback_t<detail::map_value_t<R>>{}, detail::error_callback_t{},
                                       &job);
        result.wait();
        core_->cancel_pending(job);
        return std::move(result).take();
    }

    template <class T, class Range>
    static std::shared_ptr<const std::vector<T>> materialize(Range&& range) {
        if constexpr (std::is_same_v<std::remove_cvref_t<Range>, std::vector<T>> && !std::is_lvalue_reference_v<Range>) {
            return std::make_shared<const std::vector<T>>(std::move(range));
        } else if constexpr (std::ranges::contiguous_range<Range> && std::ranges::sized_range<Range> &&
                             std::is_same_v<std::ranges::range_value_t<Range>, T>) {
            const auto* data = std::ranges::data(range);
            return std::make_shared<const std::vector<T>>(data, data + std::ranges::size(range));
        } else {
            // Element by element: std::vector's iterator-pair constructor wants a C++17
            // iterator, which views such as iota<long long> (an integer-class difference
            // type), take_while (no common end) and istream_view are not.
            auto v = std::make_shared<std::vector<T>>();
            if constexpr (std::ranges::sized_range<Range>) v->reserve(static_cast<std::size_t>(std::ranges::size(range)));
            for (auto&& x : range) v->emplace_back(std::forward<decltype(x)>(x));
            return v;
        }
    }

    std::size_t checked_chunksize(std::optional<std::size_t> chunksize, std::size_t n) const {
        if (chunksize) {
            if (*chunksize == 0) throw ValueError("Pool.map: chunksize must be 1 or more");
            return *chunksize;
        }
        // Python's default: ceil(len / (4 * processes)).
        const std::size_t d = 4 * core_->processes();
        return std::max<std::size_t>(1, (n + d - 1) / d);
    }

    // With `borrowed_job`, a sized forward range is read in place and the job's identity
    // is stored there (the caller then waits, and drops the unsent chunks); otherwise the
    // map owns a copy of the input, as Python's map_async owns its list.
    template <bool Star, class F, class Range, class CB>
    auto submit_map(F&& f, Range&& range, std::optional<std::size_t> chunksize, bool progress, CB callback,
                    detail::error_callback_t error_callback, const void** borrowed_job = nullptr) {
        using Fn = detail::stored_callable_t<F>;
        using T = detail::item_t<Range>;
        if constexpr (!map_types_valid<Star, Fn, T>())
            return MapResult<void>(nullptr);  // never runs: nothing more is instantiated after the message
        else
            return submit_callable_map<Star>(std::forward<F>(f), std::forward<Range>(range), chunksize, progress,
                                             std::move(callback), std::move(error_callback), borrowed_job);
    }

    template <bool Star, class F, class Range, class CB>
    auto submit_callable_map(F&& f, Range&& range, std::optional<std::size_t> chunksize, bool progress, CB callback,
                             detail::error_callback_t error_callback, const void** borrowed_job) {
        using Fn = detail::stored_callable_t<F>;
        using T = detail::item_t<Range>;
        using R = detail::chunk_result_t<Star, Fn, T>;
        check_running(Star ? "starmap" : "map");
        const Fn fn(std::forward<F>(f));
        auto slot = std::make_shared<typename detail::MapJob<R>::Slot>(std::move(callback), std::move(error_callback));
        auto submit_chunks = [&](auto first, std::size_t n, std::shared_ptr<const void> keep_alive) {
            const std::size_t size = checked_chunksize(chunksize, n);
            auto job = std::make_shared<detail::MapJob<R>>(n, (n + size - 1) / size, slot);
            if (borrowed_job) *borrowed_job = job.get();
            if (progress) job->progress = std::make_unique<detail::ProgressBar>(Star ? "starmap" : "map", n);
            if (n == 0) {  // Python's map of an empty list is []
                if (job->progress) job->progress->finish();
                slot->set_value();
            }
            try {
                for (std::size_t begin = 0; begin < n; begin += size) {
                    const std::size_t count = std::min(size, n - begin);
                    core_->submit(std::make_unique<typename Transport::template MapChunk<Star, Fn, T, decltype(first)>>(
                        fn, first, begin, count, keep_alive, job));
                    std::ranges::advance(first, static_cast<std::iter_difference_t<decltype(first)>>(count));
                }
            } catch (...) {
                // A chunk was refused (too large, pool closed meanwhile): none of this map's
                // chunks may still read the caller's range after we return.
                core_->cancel_pending(job.get());
                if (job->progress) job->progress->finish();  // chunks still running must not redraw later
                throw;
            }
        };
        // Only a process pool reads a borrowed range in place: it encodes each chunk under
        // the executor's lock, so once the blocking map has dropped its unsent chunks none
        // reads the range again. A thread worker reads its chunk's items while it runs, and
        // a map that fails early returns while other chunks may still run: it owns a copy.
        if constexpr (!Transport::threads && std::ranges::forward_range<Range> && std::ranges::sized_range<Range>) {
            if (borrowed_job) {
                submit_chunks(std::ranges::begin(range), static_cast<std::size_t>(std::ranges::size(range)), nullptr);
                return MapResult<R>(std::move(slot));
            }
        }
        auto input = materialize<T>(std::forward<Range>(range));
        submit_chunks(input->begin(), input->size(), input);
        return MapResult<R>(std::move(slot));
    }

    template <bool Star, class F, class Range>
    auto run_imap(F&& f, Range&& range, std::optional<std::size_t> chunksize, bool ordered, bool progress) {
        using Fn = detail::stored_callable_t<F>;
        using T = detail::item_t<Range>;
        if constexpr (!map_types_valid<Star, Fn, T>())
            return IMapIterator<void>(nullptr);  // never runs: nothing more is instantiated after the message
        else
            return run_callable_imap<Star>(std::forward<F>(f), std::forward<Range>(range), chunksize, ordered, progress);
    }

    template <bool Star, class F, class Range>
    auto run_callable_imap(F&& f, Range&& range, std::optional<std::size_t> chunksize, bool ordered, bool progress) {
        using Fn = detail::stored_callable_t<F>;
        using T = detail::item_t<Range>;
        using R = detail::chunk_result_t<Star, Fn, T>;
        check_running(ordered ? "imap" : "imap_unordered");
        const std::size_t size = chunksize.value_or(1);
        if (size == 0) throw ValueError("Pool.imap: chunksize must be 1 or more");
        // Enough chunks in flight to keep every worker's queue full, and then some.
        const std::size_t window = 4 * detail::PoolExecutor::prefetch * core_->processes() * size;
        auto job = std::make_shared<detail::IMapJob<R>>(core_, ordered, window);
        if (progress) {
            std::optional<std::uint64_t> total;  // a lazy input's length is not known: count only
            if constexpr (std::ranges::sized_range<Range>) total = static_cast<std::uint64_t>(std::ranges::size(range));
            job->show_progress(ordered ? "imap" : "imap_unordered", total);
        }
        // The input range: owned when given as an rvalue, referred to when an lvalue
        // (which must then outlive the iteration, as with any view).
        auto view = std::views::all(std::forward<Range>(range));
        using View = decltype(view);
        struct Cursor {
            View view;
            std::optional<std::ranges::iterator_t<View>> it;  // not all are default constructible
        };
        auto cursor = std::make_shared<Cursor>(Cursor{std::move(view), std::nullopt});
        job->set_puller([cursor, fn = Fn(std::forward<F>(f)), size](detail::IMapJob<R>& j,
                                                                    std::uint64_t first) -> std::unique_ptr<detail::Task> {
            if (!cursor->it) cursor->it.emplace(std::ranges::begin(cursor->view));
            auto& it = *cursor->it;
            std::vector<T> items;
            items.reserve(size);
            for (; items.size() < size && it != std::ranges::end(cursor->view); ++it) items.emplace_back(*it);
            if (items.empty()) return nullptr;
            return std::make_unique<typename Transport::template IMapChunk<Star, Fn, T>>(fn, std::move(items), first,
                                                                        j.shared_from_this());
        });
        core_->add_source(job);
        job->refill(false);
        return IMapIterator<R>(std::move(job));
    }

    // One message per mistake: false after a failed check, and the callers then
    // instantiate nothing more. Called in `if constexpr`, so its checks fire at the
    // call, before anything the caller's code does with the result.
    template <bool Star, class Fn, class T>
    static constexpr bool map_types_valid() {
        if constexpr (Star && !detail::is_tuple_like<T>) {
            static_assert(detail::dependent_false<T>, "Pool.starmap: each item must be a std::tuple (or pair) of arguments");
            return false;
        } else if constexpr (Star && !detail::callable_on_item<Star, Fn, T>) {
            static_assert(detail::dependent_false<T>,
                          "Pool.starmap: the function cannot be called with the elements of an item as its arguments");
            return false;
        } else if constexpr (!detail::callable_on_item<Star, Fn, T>) {
            static_assert(detail::dependent_false<T>, "Pool.map: the function cannot be called with an item of the range");
            return false;
        } else {
            Transport::template check_map<Star, Fn, T>();
            return true;
        }
    }

    std::shared_ptr<detail::PoolExecutor> core_;
};

// Python's multiprocessing.Pool: worker processes, started by the context's method.
using Pool = BasicPool<detail::ProcessTransport>;

// ---- Context's factories (declared in context.hpp) ---------------------------------------

template <class... A>
auto Context::Pool(A&&... args) const {
    if constexpr (sizeof...(A) == 1 && (std::is_convertible_v<A, PoolOptions> && ...)) {
        PoolOptions options(std::forward<A>(args)...);
        options.context = *this;
        return multiprocessing::Pool(std::move(options));
    } else if constexpr (sizeof...(A) == 0) {
        return multiprocessing::Pool(PoolOptions{.context = *this});
    } else {
        static_assert(sizeof...(A) == 1, "Context.Pool takes a process count or PoolOptions");
        PoolOptions options;
        options.processes = static_cast<std::size_t>((args, ...));
        options.context = *this;
        return multiprocessing::Pool(std::move(options));
    }
}

}  // namespace multiprocessing
