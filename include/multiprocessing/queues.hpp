// Python's multiprocessing.queues: Queue, JoinableQueue, SimpleQueue.
//
// Items are copied into shared memory by put() itself (no feeder thread), so a process
// may exit right after put() and nothing it put is lost, and there is no Python-style
// deadlock from joining a process whose queue buffer was not flushed. How items are
// laid out and handed over is in detail/queue_core.hpp.
#pragma once

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "context.hpp"
#include "detail/codec.hpp"
#include "detail/queue_core.hpp"
#include "detail/reduction.hpp"
#include "detail/sync.hpp"
#include "errors.hpp"

namespace multiprocessing {

template <class T>
class Queue {
public:
    static constexpr bool is_process_shared_handle = true;

    // Unbounded (maxsize <= 0, as in Python) or holding at most `maxsize` items.
    explicit Queue(long maxsize = 0) : Queue(maxsize, false) {}

    // Blocks while a bounded queue is full; put(x, timeout) throws Full if it stays full.
    void put(const T& item) { put_until(item, detail::Deadline{}); }
    void put(const T& item, Timeout timeout) { put_until(item, detail::Deadline(timeout)); }
    void put(const T& item, bool block) { put_until(item, block ? detail::Deadline{} : detail::Deadline::now()); }
    // Python's put(obj, block, timeout): the timeout only counts when blocking.
    void put(const T& item, bool block, Timeout timeout) {
        put_until(item, block ? detail::Deadline(timeout) : detail::Deadline::now());
    }
    void put_nowait(const T& item) { put(item, false); }

    // Blocks until an item comes; get(timeout) throws Empty if none comes in time.
    T get() { return get_until(detail::Deadline{}); }
    T get(Timeout timeout) { return get_until(detail::Deadline(timeout)); }
    T get(bool block) { return get_until(block ? detail::Deadline{} : detail::Deadline::now()); }
    T get(bool block, Timeout timeout) {
        return get_until(block ? detail::Deadline(timeout) : detail::Deadline::now());
    }
    T get_nowait() { return get(false); }

    // Exact while no put() or get() is in flight.
    std::size_t qsize() const { return core().qsize(); }
    // After close(), as Python's (whose empty() polls the closed reader): ValueError.
    bool empty() const {
        check_open("empty");
        return core().empty();
    }
    bool full() const { return core().maxsize() != 0 && qsize() >= core().maxsize(); }

    // This process will put and get no more through this queue (every copy of the handle
    // here); other processes still drain what is in it.
    void close() noexcept { state_->closed = true; }
    // Python waits here for its feeder thread to flush; put() has already written
    // everything to shared memory, so there is nothing to wait for.
    void join_thread() const {
        if (!state_->closed) throw ValueError("Queue.join_thread: call close() first");
    }
    void cancel_join_thread() noexcept {}

    // As a Process argument under spawn or forkserver (detail/reduction.hpp): the
    // segment's fd travels, and the child maps the same queue.
    struct reduced_type {
        std::int32_t segment_fd;
    };
    reduced_type reduce(detail::PassedFds& fds) const { return {fds.add(core().segment_fd())}; }
    static Queue rebuild(const reduced_type& r) { return Queue(r); }

protected:
    Queue(long maxsize, bool joinable) : state_(std::make_shared<State>(maxsize, joinable)) {
        detail::require_transferable<T>();
    }
    explicit Queue(const reduced_type& r) : state_(std::make_shared<State>(r.segment_fd)) {}
    detail::QueueCore& core() const { return state_->core; }

private:
    // What the handles in one process share: the mapping and this process's view of it.
    struct State {
        State(long maxsize, bool joinable)
            : core(maxsize > 0 ? static_cast<std::uint32_t>(std::min<long>(maxsize, INT32_MAX)) : 0, joinable) {}
        explicit State(int segment_fd) : core(segment_fd) {}
        detail::QueueCore core;
        bool closed = false;
    };

    void check_open(const char* what) const {
        if (state_->closed) throw ValueError(std::string("Queue.") + what + ": the queue is closed in this process");
    }
    void put_until(const T& item, const detail::Deadline& deadline) {
        check_open("put");
        const std::size_t size = detail::encoded_size(item);
        const auto r = core().put(
            size,
            [&](std::byte* at) {
                // Bounded by what was measured and reserved: an encoding that grew since
                // throws (and put() undoes everything) instead of writing past the record.
                detail::ByteWriter w(at, size);
                detail::put(w, item);
                if (w.written() != size)
                    throw ValueError("Queue.put: the item's encoding shrank between measuring it (" +
                                     std::to_string(size) + " bytes) and writing it (" +
                                     std::to_string(w.written()) + " bytes); is its serializer deterministic?");
            },
            deadline);
        if (r == detail::QueueWait::timed_out) throw Full("Queue.put: the queue is full");
    }
    T get_until(const detail::Deadline& deadline) {
        check_open("get");
        std::optional<T> out;
        const auto r = core().get(
            [&](std::span<const std::byte> bytes) {
                detail::ByteReader r(bytes);
                out.emplace(detail::get<T>(r));
            },
            deadline);
        if (r == detail::QueueWait::timed_out) throw Empty("Queue.get: the queue is empty");
        return std::move(*out);
    }

    std::shared_ptr<State> state_;
};

// A Queue that counts unfinished items: each get() item is marked done with task_done(),
// and join() waits until every item put has been marked done.
template <class T>
class JoinableQueue : public Queue<T> {
public:
    explicit JoinableQueue(long maxsize = 0) : Queue<T>(maxsize, true) {}
    static JoinableQueue rebuild(const typename Queue<T>::reduced_type& r) { return JoinableQueue(r); }

    void task_done() {
        if (!this->core().task_done()) throw ValueError("JoinableQueue.task_done: called more times than items were put");
    }
    void join() { this->core().join(detail::Deadline{}); }
    // False if items were still unfinished when the timeout ran out.
    bool join(Timeout timeout) { return this->core().join(detail::Deadline(timeout)); }

private:
    explicit JoinableQueue(const typename Queue<T>::reduced_type& r) : Queue<T>(r) {}
};

// Python's SimpleQueue: put, get, empty, close; unbounded.
template <class T>
class SimpleQueue {
public:
    static constexpr bool is_process_shared_handle = true;

    void put(const T& item) { q_.put(item); }
    T get() { return q_.get(); }
    T get(Timeout timeout) { return q_.get(timeout); }
    bool empty() const { return q_.empty(); }
    void close() noexcept { q_.close(); }

    using reduced_type = typename Queue<T>::reduced_type;
    reduced_type reduce(detail::PassedFds& fds) const { return q_.reduce(fds); }
    static SimpleQueue rebuild(const reduced_type& r) {
        SimpleQueue q(Queue<T>::rebuild(r));
        return q;
    }

    SimpleQueue() = default;

private:
    explicit SimpleQueue(Queue<T> q) : q_(std::move(q)) {}
    Queue<T> q_;
};

// Context's factories (declared in context.hpp).
template <class T, class... A>
auto Context::Queue(A&&... args) const {
    return multiprocessing::Queue<T>(std::forward<A>(args)...);
}
template <class T, class... A>
auto Context::JoinableQueue(A&&... args) const {
    return multiprocessing::JoinableQueue<T>(std::forward<A>(args)...);
}
template <class T, class... A>
auto Context::SimpleQueue(A&&... args) const {
    return multiprocessing::SimpleQueue<T>(std::forward<A>(args)...);
}

}  // namespace multiprocessing
