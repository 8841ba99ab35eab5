// The untyped core of Queue, JoinableQueue and SimpleQueue: a multi-producer,
// multi-consumer queue of variable-size byte records in one anonymous shared segment.
//
// Lanes. The segment holds `lane_count` SPSC rings (ring.hpp). Each producer process
// claims a lane of its own at its first put and keeps it; each lane has a producer
// lock and a consumer lock (OwnerLock, robust). With one producer per lane and one
// consumer, every lock is uncontended and stays in its owner's cache, and the hand-off
// itself is the ring's lock-free head/tail protocol: a put encodes straight into the
// ring and publishes with one release store; a get decodes in place and frees with
// another. Several threads of a process, or more producer processes than lanes, share
// lanes through the producer lock; several consumers take turns through the consumer
// locks, trying the next lane when one is busy.
//
// Order: every record carries a ticket from one shared counter, taken under the lane's
// producer lock, and a consumer takes the lane whose oldest record has the smallest
// ticket. So items come out in the order they were put, also across processes: what a
// joined child put comes out before what its parent puts next (the "join the producers,
// then put the sentinel" idiom works as with Python's single pipe). With one producer
// the counter stays in its cache; with several, consumers compare lane heads.
//
// Growth: every lane's ring reserves 1 GiB of address space in the segment, but pages
// are only backed once written, and a producer keeps cycling through the first 4 MiB
// while the consumer keeps up (ring.hpp's early wrap). So an unbounded queue takes a
// million puts with no consumer (tens of MB) and costs little when drained.
//
// Robustness: a process killed inside put() dies before its single publishing store or
// after it, so the lane holds the whole record or nothing; the lane's producer lock is
// taken over by the next producer after the owner-check interval. A process killed
// inside get() has not freed the record it was reading, so the next consumer takes over
// the consumer lock and gets that item: nothing is lost, nothing wedges. A bounded
// queue's slot count is protected the same way: each process records the put or get it
// is between taking and settling a slot, and a producer kept waiting by a full queue
// gives back the slots of such operations whose process died. (If the process died
// right after finishing, that lets the queue hold one item over maxsize; the slot
// count saturates at zero so it never wraps. qsize() and JoinableQueue's count of
// unfinished items may be off by that one item.)
#pragma once

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>

#include "../errors.hpp"
#include "futex.hpp"
#include "ring.hpp"
#include "shared_object.hpp"
#include "shm.hpp"
#include "sync.hpp"

namespace multiprocessing::detail {

inline constexpr std::uint32_t queue_lane_count = 8;
// Each record starts with its ticket (see "Order" above).
using Ticket = std::uint64_t;
inline constexpr std::uint32_t queue_lane_capacity = 1u << 30;

struct QueueLane {
    // The producers' line.
    alignas(cache_line) OwnerLock producer_lock;
    std::atomic<std::uint32_t> home_of{0};  // pid of the process that claimed this lane
    std::atomic<std::uint64_t> puts{0};     // records committed (written under producer_lock)
    // The consumers' line.
    alignas(cache_line) OwnerLock consumer_lock;
    std::atomic<std::uint64_t> gets{0};     // records taken (written under consumer_lock)
    RingControl ring;
};

struct QueueHeader {
    const std::uint32_t maxsize;  // 0: unbounded
    const bool joinable;
    explicit QueueHeader(std::uint32_t max, bool join) : maxsize(max), joinable(join) {}

    // How many lanes have ever been claimed; consumers scan only those.
    alignas(cache_line) std::atomic<std::uint32_t> lanes_in_use{0};

    // Consumers asleep in get() sleep on data_seq; a producer that sees sleepers bumps it.
    alignas(cache_line) std::atomic<std::uint32_t> data_seq{0};
    std::atomic<std::uint32_t> sleeping_consumers{0};

    // The next record's ticket (see "Order" above).
    alignas(cache_line) std::atomic<std::uint64_t> next_ticket{0};

    // Bounded queues: items in the queue (the futex producers sleep on when full), and
    // which processes are between taking or freeing a slot and settling it.
    alignas(cache_line) std::atomic<std::uint32_t> items{0};
    std::atomic<std::uint32_t> sleeping_producers{0};
    HolderTable slot_operations;

    // JoinableQueue: items put and not yet task_done() (join() sleeps on it).
    alignas(cache_line) std::atomic<std::uint32_t> unfinished{0};
};

// Why get() or put() came back without doing its job.
enum class QueueWait { done, timed_out };

// The process-local view of one queue. Handle copies in a process share it; a fork
// child gets a copy of it, and notices by pid that it must claim its own lane.
class QueueCore {
public:
    QueueCore(std::uint32_t maxsize, bool joinable) {
        // The fd stays open (one per queue): forked children inherit the mapping, but a
        // spawned one is given the fd (reduction.hpp).
        segment_ = SharedSegment::create(segment_bytes, "mp-queue");
        header_ = ::new (segment_.data()) QueueHeader(maxsize, joinable);
        lanes_ = reinterpret_cast<QueueLane*>(segment_.data() + sizeof(QueueHeader));
        for (std::uint32_t i = 0; i < queue_lane_count; ++i) ::new (&lanes_[i]) QueueLane;
    }
    // In a spawned process: the queue another process made, from the fd it was given
    // (which this now owns).
    explicit QueueCore(int segment_fd) : segment_(SharedSegment::adopt(segment_fd)) {
        if (segment_.size() != segment_bytes)
            throw ProcessError("multiprocessing: a spawned process was given a queue segment of the wrong size");
        header_ = std::launder(reinterpret_cast<QueueHeader*>(segment_.data()));
        lanes_ = std::launder(reinterpret_cast<QueueLane*>(segment_.data() + sizeof(QueueHeader)));
    }
    int segment_fd() const noexcept { return segment_.fd(); }
    QueueCore(const QueueCore&) = delete;
    QueueCore& operator=(const QueueCore&) = delete;

    std::uint32_t maxsize() const noexcept { return header_->maxsize; }
    std::size_t max_item_bytes() const noexcept { return lane_ring(0).max_payload() - sizeof(Ticket); }

    // ---- producing ------------------------------------------------------------------------

    // Puts one record of `size` bytes, written by encode(std::byte*). Returns timed_out if
    // the queue stayed full (bounded) or the lane stayed full until the deadline.
    template <class Encode>
    QueueWait put(std::size_t size, Encode&& encode, const Deadline& deadline) {
        if (size > max_item_bytes())
            throw ValueError("Queue.put: an item of " + std::to_string(size) + " bytes is larger than a queue holds (" +
                             std::to_string(max_item_bytes()) + " bytes); send it in parts or through a Pipe");
        if (header_->maxsize && !take_slot(deadline)) return QueueWait::timed_out;
        if (header_->joinable)
            // relaxed: task_done() only needs the count to cover this item before a
            // consumer can see it, which the commit's release store provides.
            header_->unfinished.fetch_add(1, std::memory_order_relaxed);

        QueueLane& lane = lanes_[home_lane()];
        if (!lane.producer_lock.acquire(deadline)) return undo_put();
        Ring ring = lane_ring(static_cast<std::uint32_t>(&lane - lanes_));
        const std::size_t record_size = sizeof(Ticket) + size;
        std::byte* at = ring.try_reserve(record_size);
        if (!at) at = ring.reserve(record_size, [&] { return deadline.expired(); });
        if (!at) {
            lane.producer_lock.release();
            return undo_put();
        }
        // relaxed: taken under the lane lock, so a lane's tickets rise in ring order; a
        // put that happens before another (say, in a joined child) takes a smaller one.
        const Ticket ticket = header_->next_ticket.fetch_add(1, std::memory_order_relaxed);
        std::memcpy(at, &ticket, sizeof ticket);
        encode(at + sizeof(Ticket));
        // Consumers sleep on the queue's doorbell, not the lane's: wake_consumers() below.
        ring.publish(0);
        // relaxed: single writer (the lock holder); readers want a snapshot.
        lane.puts.store(lane.puts.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        lane.producer_lock.release();
        if (header_->maxsize) header_->slot_operations.remove_own(current_pid());
        wake_consumers();
        return QueueWait::done;
    }

    // ---- consuming ------------------------------------------------------------------------

    // Takes the next record and hands its bytes to decode(std::span<const std::byte>),
    // which runs while the record is still in the ring. Returns timed_out if none came.
    template <class Decode>
    QueueWait get(Decode&& decode, const Deadline& deadline) {
        for (;;) {
            std::optional<std::uint32_t> busy_lane;
            if (try_get(decode, busy_lane)) return QueueWait::done;
            if (busy_lane) {
                // Data waits in a lane another consumer holds: wait for that lock (this is
                // also how a consumer that died holding it is taken over).
                QueueLane& lane = lanes_[*busy_lane];
                const Deadline lock_deadline(deadline.sleep_for(2 * owner_check_interval));
                // Then choose again among all lanes, so the oldest record still goes first.
                if (lane.consumer_lock.acquire(lock_deadline)) lane.consumer_lock.release();
                if (deadline.expired()) return QueueWait::timed_out;
                continue;
            }
            // get_nowait() and an expired timeout answer at once, without polling.
            if (deadline.expired()) return QueueWait::timed_out;
            // Caught up with the producers: look again only every 32 pauses (about half a
            // microsecond here). Each look pulls the lanes' head lines over from the
            // producers' cores, and each pull costs the producer a cache-line transfer at
            // its next record; looking less often lets several records go per transfer
            // (one producer -> one consumer of ints: 3.5 M/s looking at every pause, 6-7
            // M/s so).
            if (spin_until([&] {
                    for (int i = 0; i < 32; ++i) cpu_relax();
                    return any_data();
                }))
                continue;
            if (deadline.expired()) return QueueWait::timed_out;
            // seq_cst: Dekker with wake_consumers(): either a producer sees us counted
            // as sleeping, or we see its record in any_data() below.
            header_->sleeping_consumers.fetch_add(1, std::memory_order_seq_cst);
            // acquire: pairs with the producer's release increment (a plain snapshot
            // would do; futex_wait compares it again).
            const std::uint32_t seq = header_->data_seq.load(std::memory_order_acquire);
            std::atomic_thread_fence(std::memory_order_seq_cst);
            if (!any_data()) futex_wait(header_->data_seq, seq, deadline.sleep_for(owner_check_interval));
            header_->sleeping_consumers.fetch_sub(1, std::memory_order_relaxed);
        }
    }

    // ---- state ----------------------------------------------------------------------------

    std::size_t qsize() const noexcept {
        std::uint64_t n = 0;
        const std::uint32_t used = lanes_used();
        for (std::uint32_t i = 0; i < used; ++i) {
            // acquire/relaxed: a snapshot; gets never pass puts for a finished get.
            const std::uint64_t gets = lanes_[i].gets.load(std::memory_order_acquire);
            const std::uint64_t puts = lanes_[i].puts.load(std::memory_order_acquire);
            n += puts > gets ? puts - gets : 0;
        }
        return static_cast<std::size_t>(n);
    }
    bool empty() const noexcept { return !any_data(); }

    // ---- JoinableQueue ----------------------------------------------------------------------

    // False when called more often than items were put.
    bool task_done() noexcept {
        std::uint32_t n = header_->unfinished.load(std::memory_order_relaxed);
        do {
            if (n == 0) return false;
            // release: the consumer's work on the item happens before join() returns.
        } while (!header_->unfinished.compare_exchange_weak(n, n - 1, std::memory_order_release,
                                                            std::memory_order_relaxed));
        if (n == 1) futex_wake(header_->unfinished);
        return true;
    }
    bool join(const Deadline& deadline) {
        for (;;) {
            // acquire: pairs with task_done()'s release.
            const std::uint32_t n = header_->unfinished.load(std::memory_order_acquire);
            if (n == 0) return true;
            if (deadline.expired()) return false;
            futex_wait(header_->unfinished, n, deadline.sleep_for(std::chrono::hours(1)));
        }
    }

private:
    Ring lane_ring(std::uint32_t i) const noexcept {
        return Ring(&lanes_[i].ring, segment_.data() + data_offset + std::size_t{i} * queue_lane_capacity,
                    queue_lane_capacity);
    }
    std::uint32_t lanes_used() const noexcept {
        // acquire: a lane counted here has its claim (and any records) visible.
        return std::min(header_->lanes_in_use.load(std::memory_order_acquire), queue_lane_count);
    }

    // This process's lane: claimed at its first put (a free lane, or one whose owner
    // died), shared with another process's only when every lane is claimed.
    std::uint32_t home_lane() {
        const pid_t me = current_pid();
        // relaxed: a process-local cache; a stale value only makes us claim again.
        if (home_pid_.load(std::memory_order_relaxed) == me) return home_.load(std::memory_order_relaxed);
        std::uint32_t chosen = static_cast<std::uint32_t>(me) % queue_lane_count;
        for (std::uint32_t i = 0; i < queue_lane_count; ++i) {
            std::uint32_t owner = lanes_[i].home_of.load(std::memory_order_relaxed);
            if (owner == static_cast<std::uint32_t>(me)) {
                chosen = i;
                break;
            }
            if ((owner == 0 || !task_alive(static_cast<pid_t>(owner))) &&
                // relaxed: ownership is a preference; the producer lock guards the ring.
                lanes_[i].home_of.compare_exchange_strong(owner, static_cast<std::uint32_t>(me),
                                                          std::memory_order_relaxed)) {
                chosen = i;
                break;
            }
        }
        std::uint32_t used = header_->lanes_in_use.load(std::memory_order_relaxed);
        // release: pairs with lanes_used()'s acquire.
        while (used < chosen + 1 &&
               !header_->lanes_in_use.compare_exchange_weak(used, chosen + 1, std::memory_order_release,
                                                           std::memory_order_relaxed)) {
        }
        home_.store(chosen, std::memory_order_relaxed);
        home_pid_.store(me, std::memory_order_relaxed);
        return chosen;
    }

    // Takes a slot of a bounded queue, recorded as this process's until the put settles.
    bool take_slot(const Deadline& deadline) {
        auto& items = header_->items;
        header_->slot_operations.add(current_pid());
        for (;;) {
            std::uint32_t n = items.load(std::memory_order_relaxed);
            while (n < header_->maxsize)
                // relaxed: the slot count orders nothing; the ring carries the data.
                if (items.compare_exchange_weak(n, n + 1, std::memory_order_relaxed)) return true;
            if (deadline.expired()) {
                header_->slot_operations.remove_own(current_pid());
                return false;
            }
            // seq_cst: Dekker with free_slot().
            header_->sleeping_producers.fetch_add(1, std::memory_order_seq_cst);
            const auto slept_from = Clock::now();
            futex_wait(items, n, deadline.sleep_for(owner_check_interval));
            header_->sleeping_producers.fetch_sub(1, std::memory_order_relaxed);
            // Full for a whole check interval: give back the slots of dead processes'
            // unfinished operations (ours is recorded too, but we are alive).
            if (Clock::now() - slept_from >= owner_check_interval)
                for (auto lost = header_->slot_operations.reclaim_dead(); lost > 0; --lost) free_slot();
        }
    }
    void free_slot() noexcept {
        // Never below zero. A process that died between settling its operation and
        // unrecording it (or between recording a put and taking its slot) has its record
        // reclaimed for a slot it does not hold, so the count can run one short of the
        // items; drained, a plain decrement would wrap it to 2^32 and the queue would look
        // full for ever (seen as a wedged bounded queue in test_queues, about 1 run in 20).
        auto& items = header_->items;
        std::uint32_t n = items.load(std::memory_order_relaxed);
        // seq_cst on success: Dekker with take_slot(), as the decrement always was.
        while (n > 0 && !items.compare_exchange_weak(n, n - 1, std::memory_order_seq_cst, std::memory_order_relaxed)) {
        }
        if (header_->sleeping_producers.load(std::memory_order_seq_cst)) futex_wake(header_->items, 1);
    }
    QueueWait undo_put() noexcept {
        if (header_->joinable) header_->unfinished.fetch_sub(1, std::memory_order_relaxed);
        if (header_->maxsize) {
            free_slot();
            header_->slot_operations.remove_own(current_pid());
        }
        return QueueWait::timed_out;
    }

    void wake_consumers() noexcept {
        // seq_cst fence: the other half of get()'s "count myself sleeping, re-check".
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (header_->sleeping_consumers.load(std::memory_order_relaxed)) {
            // release: as documented at data_seq.
            header_->data_seq.fetch_add(1, std::memory_order_release);
            futex_wake(header_->data_seq);
        }
    }

    bool any_data() const noexcept {
        const std::uint32_t used = lanes_used();
        for (std::uint32_t i = 0; i < used; ++i)
            if (!lane_ring(i).empty()) return true;
        return false;
    }

    // Takes the oldest record among the lanes this consumer can lock now. A lane another
    // consumer holds is reported in busy_lane.
    template <class Decode>
    bool try_get(Decode& decode, std::optional<std::uint32_t>& busy_lane) {
        const std::uint32_t used = lanes_used();
        // relaxed: which lane to look at first is a process-local hint.
        const std::uint32_t start = next_lane_.load(std::memory_order_relaxed);
        std::uint32_t held[queue_lane_count];
        Ticket held_ticket[queue_lane_count];
        std::uint32_t n_held = 0;
        for (std::uint32_t k = 0; k < used; ++k) {
            const std::uint32_t i = (start + k) % used;
            if (lane_ring(i).empty()) continue;
            if (!lanes_[i].consumer_lock.try_acquire()) {
                busy_lane = i;
                continue;
            }
            auto record = lane_ring(i).peek();
            if (!record) {
                lanes_[i].consumer_lock.release();
                continue;
            }
            std::memcpy(&held_ticket[n_held], record->payload.data(), sizeof(Ticket));
            held[n_held++] = i;
        }
        if (n_held == 0) return false;
        std::uint32_t oldest = 0;
        for (std::uint32_t h = 1; h < n_held; ++h)
            if (held_ticket[h] < held_ticket[oldest]) oldest = h;
        for (std::uint32_t h = 0; h < n_held; ++h)
            if (h != oldest) lanes_[held[h]].consumer_lock.release();
        return take_from(lanes_[held[oldest]], held[oldest], decode);
    }

    // With the lane's consumer lock held: takes its oldest record, if any, and unlocks.
    template <class Decode>
    bool take_from(QueueLane& lane, std::uint32_t i, Decode& decode) {
        Ring ring = lane_ring(i);
        auto record = ring.peek();
        if (!record) {
            lane.consumer_lock.release();
            return false;
        }
        try {
            decode(std::span<const std::byte>(record->payload).subspan(sizeof(Ticket)));
        } catch (...) {
            // An item this process cannot decode is dropped, not left to block the lane.
            finish_take(lane, ring, i);
            throw;
        }
        finish_take(lane, ring, i);
        return true;
    }
    void finish_take(QueueLane& lane, Ring& ring, std::uint32_t i) noexcept {
        // A bounded queue's slot is freed after the record: recorded meanwhile, so a death
        // in between does not lose the slot.
        if (header_->maxsize) header_->slot_operations.add(current_pid());
        ring.release();
        lane.gets.store(lane.gets.load(std::memory_order_relaxed) + 1, std::memory_order_release);
        lane.consumer_lock.release();
        next_lane_.store(i + 1, std::memory_order_relaxed);
        if (header_->maxsize) {
            free_slot();
            header_->slot_operations.remove_own(current_pid());
        }
    }

    // The header and lanes, then each lane's ring from the next page on.
    static constexpr std::size_t data_offset =
        (sizeof(QueueHeader) + queue_lane_count * sizeof(QueueLane) + 4095) & ~std::size_t{4095};
    static constexpr std::size_t segment_bytes = data_offset + std::size_t{queue_lane_count} * queue_lane_capacity;

    SharedSegment segment_;
    QueueHeader* header_ = nullptr;
    QueueLane* lanes_ = nullptr;
    std::atomic<pid_t> home_pid_{0};
    std::atomic<std::uint32_t> home_{0};
    std::atomic<std::uint32_t> next_lane_{0};
};

}  // namespace multiprocessing::detail
