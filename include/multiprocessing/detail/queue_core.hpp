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
// Growth: every lane's ring is 1 GiB of the segment (a memfd, sparse), but a process maps
// a lane only when it first puts to it or gets from it (a producer maps its own lane, a
// consumer the lanes it reads), so a process under a 4 GiB RLIMIT_AS can still make and
// use a queue. Pages are only backed once written, and a producer keeps cycling through
// the first 4 MiB while the consumer keeps up (ring.hpp's early wrap). A burst that runs a lane past those 4 MiB
// is given back to the kernel as it is drained: a consumer punches out the pages of each
// record of 64 KiB or more past the warm part before releasing it (ring.hpp,
// discard_cold), so after 256 items of 1 MiB put and drained the resident size falls
// back to the warm part. A burst of small items keeps its pages (a system call per
// small item would cost more than the memory).
//
// Robustness of the rings: a process killed inside put() dies before its single
// publishing store or after it, so the lane holds the whole record or nothing; the
// lane's producer lock is taken over by the next producer after the owner-check
// interval. A process killed inside get() has not released the record it was reading,
// so the next consumer takes over the consumer lock and gets that item.
//
// Slots of a bounded queue: crash-safe by construction. One 64-bit word, `slots`, holds
// the count of slots taken (low 32 bits) and, per lane, a "put pending" bit and a "get
// pending" bit. Every change of the count moves a pending bit in the same atomic step:
//   put (holding lane i's producer lock, after reserving ring room at position h and
//        noting h and the lane's put count in the lane):
//        CAS  count+1, set put bit i     -- only while count < maxsize
//        encode, publish (the ring's head store), puts = base+1
//        fetch_sub(put bit i)            -- settled
//        (encode throws: fetch_sub(put bit i + 1): slot and bit go back together)
//   get  (holding lane i's consumer lock, after peek and decode, noting the ring's tail t
//        and the lane's get count in the lane):
//        fetch_or(get bit i)
//        release the record (the ring's tail store), gets = base+1
//        fetch_sub(get bit i + 1)        -- slot freed and settled in one step
// A live process clears its bit before it lets go of the lane lock, so a bit found set by
// whoever holds the lane's lock belongs to a process that died holding it (the lock was
// taken over from it). That holder settles it from the ring itself, in one CAS: a put
// whose record was published (head != h) keeps its slot (the record holds it) and only
// the bit is cleared; one not published gives the slot back with the bit. A get whose
// record was released (tail != t) frees the slot with the bit; one not released only
// clears the bit (the record, still in the ring, keeps the slot and goes to the next
// consumer). The lane counters are set, not incremented (puts = base+1), so settling
// again is harmless. A settler killed at any instruction has either done the CAS or not;
// if not, the bit is still set and the next holder settles it the same way. So the count
// always equals the records in the rings plus the puts and gets in flight, whatever was
// killed where; it never exceeds maxsize (only a CAS that checks it raises it), and a
// killed put or get costs at most its own item, never a slot.
// A producer kept waiting by a full queue settles the other lanes' pending bits (taking
// each lane's lock, which also takes over a dead holder's), so a slot a dead process held
// comes back even when nobody else uses its lane. A producer waiting for a slot holds
// nothing but its lane's lock (its bit is set only by the CAS that takes the slot), so
// killing it there costs nothing. No process is identified by pid anywhere in this: a
// dead holder is recognised by the lane lock's own takeover.
// JoinableQueue's count of unfinished items is not covered: a put killed between
// counting its item and publishing it leaves join() one task_done() short.
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

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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

// The slot word (see "Slots of a bounded queue" above).
inline constexpr std::uint64_t slot_count_mask = 0xFFFFFFFFull;
constexpr std::uint64_t put_pending_bit(std::uint32_t lane) noexcept { return std::uint64_t{1} << (32 + lane); }
constexpr std::uint64_t get_pending_bit(std::uint32_t lane) noexcept { return std::uint64_t{1} << (48 + lane); }
static_assert(queue_lane_count <= 16, "a pending bit per lane and side must fit the slot word");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free,
              "the slot word is shared between processes: it must be a lock-free atomic");

struct QueueLane {
    // The producers' line.
    alignas(cache_line) OwnerLock producer_lock;
    std::atomic<std::uint32_t> home_of{0};  // pid of the process that claimed this lane
    std::atomic<std::uint64_t> puts{0};     // records committed (written under producer_lock)
    // The put in flight (bounded queues): where its record starts and puts before it.
    std::atomic<std::uint32_t> put_head{0};
    std::atomic<std::uint64_t> put_base{0};
    // The consumers' line.
    alignas(cache_line) OwnerLock consumer_lock;
    std::atomic<std::uint64_t> gets{0};     // records taken (written under consumer_lock)
    // The get in flight (bounded queues): the tail before its record and gets before it.
    std::atomic<std::uint32_t> get_tail{0};
    std::atomic<std::uint64_t> get_base{0};
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

    // Bounded queues: slots taken and pending operations (see above); producers kept
    // waiting by a full queue sleep on slot_seq, which a freed slot bumps.
    alignas(cache_line) std::atomic<std::uint64_t> slots{0};
    std::atomic<std::uint32_t> slot_seq{0};
    std::atomic<std::uint32_t> sleeping_producers{0};

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
        // The fd stays open (one per queue): forked children inherit the mappings, but a
        // spawned one is given the fd (reduction.hpp); lanes are mapped from it on demand.
        // Only the header and lane controls are mapped here; the file is sized for all
        // the lanes (sparse: it costs nothing until written).
        segment_ = SharedSegment::create(data_offset, "mp-queue");
        if (::ftruncate(segment_.fd(), static_cast<off_t>(segment_bytes)) != 0) throw_errno("ftruncate(queue segment)");
        header_ = ::new (segment_.data()) QueueHeader(maxsize, joinable);
        lanes_ = reinterpret_cast<QueueLane*>(segment_.data() + sizeof(QueueHeader));
        for (std::uint32_t i = 0; i < queue_lane_count; ++i) ::new (&lanes_[i]) QueueLane;
    }
    // In a spawned process: the queue another process made, from the fd it was given
    // (which this now owns).
    explicit QueueCore(int segment_fd) : segment_(adopt_header(segment_fd)) {
        header_ = std::launder(reinterpret_cast<QueueHeader*>(segment_.data()));
        lanes_ = std::launder(reinterpret_cast<QueueLane*>(segment_.data() + sizeof(QueueHeader)));
    }
    int segment_fd() const noexcept { return segment_.fd(); }
    ~QueueCore() {
        for (auto& data : lane_data_)
            // relaxed: no other thread uses a queue being destroyed.
            if (std::byte* p = data.load(std::memory_order_relaxed)) ::munmap(p, queue_lane_capacity);
    }
    QueueCore(const QueueCore&) = delete;
    QueueCore& operator=(const QueueCore&) = delete;

    std::uint32_t maxsize() const noexcept { return header_->maxsize; }
    std::size_t max_item_bytes() const noexcept { return lane_ring(0).max_payload() - sizeof(Ticket); }

    // ---- producing ------------------------------------------------------------------------

    // Puts one record of `size` bytes, written by encode(std::byte*). Returns timed_out if
    // the queue stayed full (bounded) or the lane stayed full until the deadline. If
    // encode throws, nothing has changed (strong guarantee): the lane's lock, the slot
    // and the count of unfinished items are all given back, and the exception goes on.
    template <class Encode>
    QueueWait put(std::size_t size, Encode&& encode, const Deadline& deadline) {
        if (size > max_item_bytes())
            throw ValueError("Queue.put: an item of " + std::to_string(size) + " bytes is larger than a queue holds (" +
                             std::to_string(max_item_bytes()) + " bytes); send it in parts or through a Pipe");
        const std::uint32_t i = home_lane();
        if (!map_lane(i))
            throw_errno("Queue.put: mapping a queue lane (1 GiB of address space; is RLIMIT_AS too low?)");
        QueueLane& lane = lanes_[i];
        if (!lane.producer_lock.acquire(deadline)) return QueueWait::timed_out;
        LaneLock held(lane.producer_lock);
        const bool bounded = header_->maxsize != 0;
        if (bounded) settle_put(i);
        Ring ring = lane_ring(i);
        const std::size_t record_size = sizeof(Ticket) + size;
        std::byte* at = ring.try_reserve(record_size);
        // A full lane may be full only of a filler: the producer wraps early once past the
        // warm part (ring.hpp), and that filler holds the rest of the lane until a consumer
        // passes it. With no consumer running (one thread that puts a burst, then gets it)
        // the lane would be full at ~4 MiB for ever; so pass it on the consumer's behalf,
        // under the consumer's lock (a lane with a live consumer passes it anyway).
        const auto pass_fillers = [&] {
            if (!lane.consumer_lock.try_acquire()) return;
            (void)lane_ring(i).peek();  // skips fillers at the tail; a record stays
            lane.consumer_lock.release();
        };
        if (!at) {
            pass_fillers();
            at = ring.try_reserve(record_size);
        }
        if (!at)
            at = ring.reserve(record_size, [&] {
                pass_fillers();
                return deadline.expired();
            });
        if (!at) return QueueWait::timed_out;
        if (bounded) {
            // relaxed: single writer (the lock holder); take_slot's release CAS publishes
            // them to whoever settles this put.
            lane.put_head.store(ring.head_position(), std::memory_order_relaxed);
            lane.put_base.store(lane.puts.load(std::memory_order_relaxed), std::memory_order_relaxed);
            if (!take_slot(i, deadline)) return QueueWait::timed_out;
        }
        if (header_->joinable)
            // relaxed: task_done() only needs the count to cover this item before a
            // consumer can see it, which the commit's release store provides.
            header_->unfinished.fetch_add(1, std::memory_order_relaxed);
        try {
            // relaxed: taken under the lane lock, so a lane's tickets rise in ring order; a
            // put that happens before another (say, in a joined child) takes a smaller one.
            const Ticket ticket = header_->next_ticket.fetch_add(1, std::memory_order_relaxed);
            std::memcpy(at, &ticket, sizeof ticket);
            encode(at + sizeof(Ticket));
        } catch (...) {
            // Nothing is published: take back the count and the slot (with its pending
            // bit, in one step), then let the lock go.
            if (header_->joinable) header_->unfinished.fetch_sub(1, std::memory_order_relaxed);
            if (bounded) {
                // seq_cst: Dekker with take_slot's sleepers, as in free_slots().
                header_->slots.fetch_sub(put_pending_bit(i) + 1, std::memory_order_seq_cst);
                wake_producers();
            }
            throw;
        }
        // Consumers sleep on the queue's doorbell, not the lane's: wake_consumers() below.
        ring.publish(0);
        // relaxed: single writer (the lock holder); readers want a snapshot.
        lane.puts.store(lane.puts.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        // release: the settled put's counters are visible with the cleared bit.
        if (bounded) header_->slots.fetch_sub(put_pending_bit(i), std::memory_order_release);
        held.unlock();
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
                if (lane.consumer_lock.acquire(lock_deadline)) {
                    settle_get(*busy_lane);
                    lane.consumer_lock.release();
                }
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
        // A get killed between releasing its record and counting it leaves its lane one
        // short until the next consumer settles it; a bounded queue never holds more
        // than maxsize, so a snapshot over it is known to be stale.
        if (header_->maxsize && n > header_->maxsize) n = header_->maxsize;
        return static_cast<std::size_t>(n);
    }
    bool empty() const noexcept { return !any_data(); }
    // Bounded queues: slots taken now (items in the queue plus puts and gets in flight).
    std::uint32_t slots_taken() const noexcept {
        // relaxed: a snapshot for tests and diagnostics.
        return static_cast<std::uint32_t>(header_->slots.load(std::memory_order_relaxed) & slot_count_mask);
    }

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
    // Releases a lane lock on every way out of put().
    class LaneLock {
    public:
        explicit LaneLock(OwnerLock& lock) noexcept : lock_(&lock) {}
        LaneLock(const LaneLock&) = delete;
        LaneLock& operator=(const LaneLock&) = delete;
        ~LaneLock() { unlock(); }
        void unlock() noexcept {
            if (lock_) lock_->release();
            lock_ = nullptr;
        }

    private:
        OwnerLock* lock_;
    };

    // Lane i's ring. Its data is null until map_lane(i): positions and emptiness need
    // only the control block, in the header mapping.
    Ring lane_ring(std::uint32_t i) const noexcept {
        // acquire: pairs with map_lane's release CAS (the pointer is to a live mapping).
        return Ring(&lanes_[i].ring, lane_data_[i].load(std::memory_order_acquire), queue_lane_capacity,
                    /*discard_cold=*/true);
    }
    // Maps lane i's data in this process if not yet; false if the mapping failed (errno).
    bool map_lane(std::uint32_t i) noexcept {
        // acquire: as in lane_ring().
        if (lane_data_[i].load(std::memory_order_acquire)) return true;
        void* p = ::mmap(nullptr, queue_lane_capacity, PROT_READ | PROT_WRITE, MAP_SHARED, segment_.fd(),
                         static_cast<off_t>(data_offset + std::size_t{i} * queue_lane_capacity));
        if (p == MAP_FAILED) return false;
        std::byte* expected = nullptr;
        // release: the mapping is complete before another thread uses the pointer.
        if (!lane_data_[i].compare_exchange_strong(expected, static_cast<std::byte*>(p), std::memory_order_release,
                                                   std::memory_order_acquire))
            ::munmap(p, queue_lane_capacity);  // another thread of ours mapped it first
        return true;
    }
    static SharedSegment adopt_header(int fd) {
        struct stat st;
        if (::fstat(fd, &st) != 0 || static_cast<std::size_t>(st.st_size) != segment_bytes) {
            ::close(fd);
            throw ProcessError("multiprocessing: a spawned process was given a queue segment of the wrong size");
        }
        return SharedSegment::adopt_prefix(fd, data_offset);
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

    // ---- slots of a bounded queue (see "Slots of a bounded queue" at the top) ---------------

    // Takes a slot for lane i's put, with its pending bit, in one CAS. Holds lane i's
    // producer lock. While the queue is full it sleeps, and settles the other lanes'
    // operations whose process died.
    bool take_slot(std::uint32_t i, const Deadline& deadline) {
        auto& slots = header_->slots;
        auto last_settle = Clock::now();
        for (;;) {
            std::uint64_t s = slots.load(std::memory_order_relaxed);
            while ((s & slot_count_mask) < header_->maxsize)
                // release: this lane's put_head/put_base, stored before, are visible to a
                // settler that sees the bit (it loads the word with acquire).
                if (slots.compare_exchange_weak(s, (s + 1) | put_pending_bit(i), std::memory_order_release,
                                                std::memory_order_relaxed))
                    return true;
            if (deadline.expired()) return false;
            // seq_cst: Dekker with free_slots(): either it sees us counted as sleeping
            // and bumps slot_seq, or we see its freed slot in the re-read below.
            header_->sleeping_producers.fetch_add(1, std::memory_order_seq_cst);
            const std::uint32_t seq = header_->slot_seq.load(std::memory_order_seq_cst);
            if ((slots.load(std::memory_order_seq_cst) & slot_count_mask) >= header_->maxsize)
                futex_wait(header_->slot_seq, seq, deadline.sleep_for(owner_check_interval));
            header_->sleeping_producers.fetch_sub(1, std::memory_order_relaxed);
            // Still full after a check interval of waiting in all (not necessarily in one
            // sleep: under steady traffic we are woken often): settle what dead
            // processes left pending.
            if ((slots.load(std::memory_order_relaxed) & slot_count_mask) >= header_->maxsize &&
                Clock::now() - last_settle >= owner_check_interval) {
                settle_other_lanes(i, deadline);
                last_settle = Clock::now();
            }
        }
    }

    // Wakes producers waiting for a slot (after a slot was freed by a seq_cst RMW).
    void wake_producers() noexcept {
        if (header_->sleeping_producers.load(std::memory_order_seq_cst)) {
            // release: pairs with take_slot's load (futex_wait compares it again).
            header_->slot_seq.fetch_add(1, std::memory_order_release);
            futex_wake(header_->slot_seq);
        }
    }

    // With lane i's producer lock held: settles a put its previous holder died inside.
    void settle_put(std::uint32_t i) noexcept {
        auto& slots = header_->slots;
        // acquire: pairs with take_slot's release CAS, so put_head/put_base are its.
        std::uint64_t s = slots.load(std::memory_order_acquire);
        if (!(s & put_pending_bit(i))) return;
        QueueLane& lane = lanes_[i];
        const bool published = lane_ring(i).head_position() != lane.put_head.load(std::memory_order_relaxed);
        // Idempotent: a settler killed here leaves the same for the next one.
        if (published)
            lane.puts.store(lane.put_base.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        clear_pending(s, put_pending_bit(i), published ? 0 : 1);
    }

    // A settled operation's pending bit goes, and `give_back` slots (0 or 1) with it, in
    // one step; `s` is the slot word as last read.
    void clear_pending(std::uint64_t s, std::uint64_t pending_bit, std::uint64_t give_back) noexcept {
        // seq_cst: the freed slot takes part in the Dekker with take_slot's sleepers.
        while (!header_->slots.compare_exchange_weak(s, (s & ~pending_bit) - give_back, std::memory_order_seq_cst,
                                                     std::memory_order_relaxed)) {
        }
        if (give_back) wake_producers();
    }

    // With lane i's consumer lock held: settles a get its previous holder died inside.
    void settle_get(std::uint32_t i) noexcept {
        if (!header_->maxsize) return;
        auto& slots = header_->slots;
        // acquire: pairs with finish_take's release fetch_or, so get_tail/get_base are its.
        std::uint64_t s = slots.load(std::memory_order_acquire);
        if (!(s & get_pending_bit(i))) return;
        QueueLane& lane = lanes_[i];
        const bool released = lane_ring(i).tail_position() != lane.get_tail.load(std::memory_order_relaxed);
        if (released)
            lane.gets.store(lane.get_base.load(std::memory_order_relaxed) + 1, std::memory_order_release);
        clear_pending(s, get_pending_bit(i), released ? 1 : 0);
    }

    // From a producer kept waiting by a full queue (holding its own lane's producer lock,
    // lane `mine`): settles every other pending operation, taking each lane's lock. A
    // lock held by a live process is released soon (a pending bit spans no waiting); one
    // held by a dead process is taken over by acquire() after its check interval.
    void settle_other_lanes(std::uint32_t mine, const Deadline& deadline) {
        // acquire: as in settle_put().
        const std::uint64_t s = header_->slots.load(std::memory_order_acquire);
        for (std::uint32_t j = 0; j < queue_lane_count; ++j) {
            if (deadline.expired()) return;
            const Deadline lock_deadline(deadline.sleep_for(2 * owner_check_interval));
            if (j != mine && (s & put_pending_bit(j)) && lanes_[j].producer_lock.acquire(lock_deadline)) {
                settle_put(j);
                lanes_[j].producer_lock.release();
            }
            if ((s & get_pending_bit(j)) && lanes_[j].consumer_lock.acquire(lock_deadline)) {
                settle_get(j);
                lanes_[j].consumer_lock.release();
            }
        }
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
    // consumer holds is reported in busy_lane. Holds at most two consumer locks at a time
    // (the best lane so far and the one being looked at), so one consumer preempted here
    // does not block the others out of every lane.
    //
    // Order under stalls: the first pass finds the lane whose head has the smallest
    // ticket; then passes repeat, each with a fresh count of lanes, until one changes
    // nothing. A record put before ours in happens-before order (say, by a child joined
    // before the sentinel we hold was put) is visible to a pass that starts after we saw
    // ours (our acquire of that lane's head), so a consumer that stalled in the first
    // pass, while a new lane was claimed or an emptied one filled, still finds it.
    template <class Decode>
    bool try_get(Decode& decode, std::optional<std::uint32_t>& busy_lane) {
        // relaxed: which lane to look at first is a process-local hint.
        const std::uint32_t start = next_lane_.load(std::memory_order_relaxed);
        std::uint32_t best = queue_lane_count;
        Ticket best_ticket = 0;
        bool unmappable = false;
        for (int pass = 0; pass < 8; ++pass) {
            bool changed = false;
            const std::uint32_t used = lanes_used();
            for (std::uint32_t k = 0; k < used; ++k) {
                const std::uint32_t i = (start + k) % used;
                if (i == best || lane_ring(i).empty()) continue;
                if (!map_lane(i)) {
                    unmappable = true;
                    continue;
                }
                if (!lanes_[i].consumer_lock.try_acquire()) {
                    busy_lane = i;
                    continue;
                }
                settle_get(i);
                auto record = lane_ring(i).peek();
                Ticket t = 0;
                if (record) std::memcpy(&t, record->payload.data(), sizeof(Ticket));
                if (record && (best == queue_lane_count || t < best_ticket)) {
                    if (best != queue_lane_count) lanes_[best].consumer_lock.release();
                    best = i;
                    best_ticket = t;
                    changed = true;
                } else {
                    lanes_[i].consumer_lock.release();
                }
            }
            if (best == queue_lane_count) {
                if (unmappable)
                    throw ProcessError("Queue.get: could not map a queue lane (1 GiB of address space each); is "
                                       "RLIMIT_AS too low for the number of producers?");
                return false;
            }
            if (!changed) break;
        }
        return take_from(lanes_[best], best, decode);
    }

    // With the lane's consumer lock held (and settled): takes its oldest record, if any,
    // and unlocks.
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
        const bool bounded = header_->maxsize != 0;
        const std::uint64_t base = lane.gets.load(std::memory_order_relaxed);
        if (bounded) {
            // relaxed: single writer (the lock holder); the release fetch_or publishes them.
            lane.get_tail.store(ring.tail_position(), std::memory_order_relaxed);
            lane.get_base.store(base, std::memory_order_relaxed);
            // release: pairs with settle_get's acquire load.
            header_->slots.fetch_or(get_pending_bit(i), std::memory_order_release);
        }
        ring.release();
        // release: qsize()'s acquire snapshot.
        lane.gets.store(base + 1, std::memory_order_release);
        // The record held a slot (the count covers every record in the rings), so the
        // count is at least 1 here: one subtraction clears the bit and frees the slot.
        // seq_cst: Dekker with take_slot's sleepers (wake_producers reads them).
        if (bounded) header_->slots.fetch_sub(get_pending_bit(i) + 1, std::memory_order_seq_cst);
        lane.consumer_lock.release();
        next_lane_.store(i + 1, std::memory_order_relaxed);
        if (bounded) wake_producers();
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
    // This process's mappings of the lanes' data (null: not mapped yet).
    std::atomic<std::byte*> lane_data_[queue_lane_count] = {};
};

}  // namespace multiprocessing::detail
