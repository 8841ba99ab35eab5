// A single-producer single-consumer ring of variable-size records, in shared memory.
//
// The ring is its own arena: a producer reserves room for a record, encodes the payload
// straight into the ring, and commits; the consumer reads the payload in place and
// releases it. So each payload is written once and read once, with no allocation and
// no lock. Positions are 32-bit byte counters that wrap modulo 2^32 (the capacity is a
// power of two far below 2^31), which lets both sides sleep on them with a futex.
//
// Record layout: an 8-byte header {u32 size, u32 kind} and the payload, padded to 8.
// A record that would not fit before the end of the buffer is preceded by a filler
// record up to the end, and starts again at offset 0.
#pragma once

#include <algorithm>
#include <atomic>
#include <cassert>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>

#include <sys/mman.h>

#include "futex.hpp"

namespace multiprocessing::detail {

inline constexpr std::size_t cache_line = 64;
// How much of a ring a producer keeps cycling through before it wraps early (see
// Ring::try_reserve); larger records still use the whole capacity.
inline constexpr std::uint32_t warm_bytes = 4u << 20;
// A ring made with discard_cold gives back to the kernel the pages of each record (or
// filler) of at least this size that lies past the warm part, before releasing it: a
// burst that ran the ring past the warm part does not stay resident once drained.
// Smaller records are not worth a system call each (a burst of them keeps its pages).
inline constexpr std::uint32_t discard_min_bytes = 64u << 10;
inline constexpr std::size_t ring_page = 4096;

// The part of a ring that lives in shared memory, before its data bytes.
struct RingControl {
    // Producer's line. `head` is the end of the last committed record.
    alignas(cache_line) std::atomic<std::uint32_t> head{0};
    std::uint32_t cached_tail = 0;  // producer-only: last tail seen, saves a shared read

    // Consumer's line. `tail` is the end of the last released record.
    alignas(cache_line) std::atomic<std::uint32_t> tail{0};
    std::uint32_t cached_head = 0;  // consumer-only: last head seen

    // Set only by a side about to sleep, read by the other side at every commit or
    // release: on a line of their own, so those reads do not pull in the line the other
    // side writes at every record (the flags used to share the head and tail lines, which
    // cost a cache-line transfer per record between cores).
    alignas(cache_line) std::atomic<std::uint32_t> producer_waiting{0};
    std::atomic<std::uint32_t> consumer_waiting{0};

    // Only when neither side can be running (the other process is dead or not yet born).
    void reset() noexcept {
        head.store(0, std::memory_order_relaxed);
        tail.store(0, std::memory_order_relaxed);
        producer_waiting.store(0, std::memory_order_relaxed);
        consumer_waiting.store(0, std::memory_order_relaxed);
        cached_tail = cached_head = 0;
    }
};

struct RecordHeader {
    std::uint32_t size;  // payload bytes
    std::uint32_t kind;  // the user's tag; padding_kind marks filler
};
inline constexpr std::uint32_t padding_kind = 0xFFFFFFFFu;
inline constexpr std::size_t record_align = 8;

constexpr std::uint32_t padded(std::size_t n) noexcept {
    return static_cast<std::uint32_t>((n + record_align - 1) & ~(record_align - 1));
}

struct Record {
    std::uint32_t kind;
    std::span<std::byte> payload;
};

class Ring {
public:
    Ring() = default;
    // `discard_cold`: the data lies in a MAP_SHARED memfd mapping, page aligned, whose
    // pages may be punched out (see discard_min_bytes).
    Ring(RingControl* control, std::byte* data, std::uint32_t capacity, bool discard_cold = false) noexcept
        : c_(control), data_(data), capacity_(capacity), discard_cold_(discard_cold) {
        assert((capacity & (capacity - 1)) == 0 && capacity < (1u << 31));
    }

    std::uint32_t capacity() const noexcept { return capacity_; }
    // The producer's position: the end of the last committed record. relaxed: read by
    // the producer (the only writer) or by a recoverer holding the producer's lock.
    std::uint32_t head_position() const noexcept { return c_->head.load(std::memory_order_relaxed); }
    // The consumer's position: the end of the last released record. relaxed: as above,
    // for the consumer side.
    std::uint32_t tail_position() const noexcept { return c_->tail.load(std::memory_order_relaxed); }
    // True once the consumer has released everything before `position`.
    bool consumed_up_to(std::uint32_t position) const noexcept {
        // acquire: as in has_room(); the consumer is done with those bytes.
        return static_cast<std::int32_t>(c_->tail.load(std::memory_order_acquire) - position) >= 0;
    }
    // The largest payload a record can ever carry.
    std::size_t max_payload() const noexcept { return capacity_ - sizeof(RecordHeader) - record_align; }
    RingControl& control() noexcept { return *c_; }

    // ---- producer side ----------------------------------------------------------------

    // Room for a payload of `size` bytes, or nullptr when the ring is too full now.
    // Until commit() nothing is visible to the consumer, so a producer that dies here
    // leaves the ring as it was.
    std::byte* try_reserve(std::size_t size) noexcept {
        const std::uint32_t need = sizeof(RecordHeader) + padded(size);
        // relaxed: head is only ever written by this (the producing) side.
        std::uint32_t head = c_->head.load(std::memory_order_relaxed);
        const std::uint32_t offset = head & (capacity_ - 1);
        const std::uint32_t to_end = capacity_ - offset;
        // Wrap early, once past the warm part, when the start of the buffer is free: the
        // pages already touched are reused instead of faulting in new ones.
        const bool wrap_early = offset != 0 && offset + need > warm_bytes && has_room(head, to_end + need);
        if (need > to_end || wrap_early) {
            // Publish a filler up to the end on its own, so that a record of up to the
            // whole capacity fits at offset 0 once the consumer has passed the filler.
            if (!has_room(head, to_end)) return nullptr;
            write_header(head & (capacity_ - 1),
                         {to_end - static_cast<std::uint32_t>(sizeof(RecordHeader)), padding_kind});
            head += to_end;
            // release: the filler's header is visible before the head that covers it.
            c_->head.store(head, std::memory_order_release);
        }
        if (!has_room(head, need)) return nullptr;
        reserved_total_ = need;
        reserved_at_ = head & (capacity_ - 1);
        reserved_size_ = static_cast<std::uint32_t>(size);
        return data_ + reserved_at_ + sizeof(RecordHeader);
    }

    // Publishes the reserved record. Returns true when the consumer was asleep and has
    // been woken (a system call); false on the fast path.
    bool commit(std::uint32_t kind) noexcept {
        publish(kind);
        // seq_cst fence: orders the head store before the read of consumer_waiting, the
        // other half of the consumer's "set waiting, fence, re-read head" (Dekker): one of
        // the two sides must see the other, so a wake-up is never lost.
        std::atomic_thread_fence(std::memory_order_seq_cst);
        // relaxed: the fence above provides the ordering.
        if (c_->consumer_waiting.load(std::memory_order_relaxed)) {
            futex_wake(c_->head);
            return true;
        }
        return false;
    }

    // Publishes the reserved record for a consumer that never sleeps on this ring's own
    // flag (it has a doorbell of its own): no fence, no check.
    void publish(std::uint32_t kind) noexcept {
        write_header(reserved_at_, {reserved_size_, kind});
        const std::uint32_t head = c_->head.load(std::memory_order_relaxed);
        // release: the payload and header written above become visible to a consumer
        // that reads the new head with acquire.
        c_->head.store(head + reserved_total_, std::memory_order_release);
    }

    // Blocks until a payload of `size` bytes can be reserved, or until `give_up()` says
    // to stop (checked at each wake-up). Returns nullptr if it gave up.
    template <class GiveUp>
    std::byte* reserve(std::size_t size, GiveUp&& give_up) {
        for (;;) {
            if (auto* p = try_reserve(size)) return p;
            if (spin_until([&] { return room_for(size); })) continue;
            // acquire/relaxed as in wait_for_data, mirrored: we wait on tail.
            c_->producer_waiting.store(1, std::memory_order_relaxed);
            std::atomic_thread_fence(std::memory_order_seq_cst);
            const std::uint32_t tail = c_->tail.load(std::memory_order_relaxed);
            if (!room_for(size)) futex_wait(c_->tail, tail, std::chrono::milliseconds(50));
            c_->producer_waiting.store(0, std::memory_order_relaxed);
            if (give_up()) return nullptr;
        }
    }

    bool room_for(std::size_t size) noexcept {
        const std::uint32_t need = sizeof(RecordHeader) + padded(size);
        const std::uint32_t head = c_->head.load(std::memory_order_relaxed);
        const std::uint32_t to_end = capacity_ - (head & (capacity_ - 1));
        return has_room(head, need <= to_end ? need : to_end);
    }

    // ---- consumer side ----------------------------------------------------------------

    // The oldest committed record, or nothing when the ring is empty. The payload stays
    // valid until release().
    std::optional<Record> peek() noexcept {
        for (;;) {
            // relaxed: tail is only ever written by this (the consuming) side.
            const std::uint32_t tail = c_->tail.load(std::memory_order_relaxed);
            if (tail == c_->cached_head) {
                // acquire: pairs with the producer's release store of head, so the
                // record bytes it covers are visible.
                c_->cached_head = c_->head.load(std::memory_order_acquire);
                if (tail == c_->cached_head) return std::nullopt;
            }
            const std::uint32_t offset = tail & (capacity_ - 1);
            RecordHeader h;
            std::memcpy(&h, data_ + offset, sizeof h);
            if (h.kind == padding_kind) {
                // The filler's bytes are ours until the tail passes them.
                discard(offset, sizeof(RecordHeader) + h.size);
                // release: as in release(); the filler is consumed like a record.
                c_->tail.store(tail + sizeof(RecordHeader) + h.size, std::memory_order_release);
                // A producer may be asleep waiting for exactly this room (a record over
                // half the ring goes at offset 0, after the filler): wake it as release()
                // does, or it sleeps until its poll. seq_cst fence: the Dekker half
                // matching the producer's wait in reserve().
                std::atomic_thread_fence(std::memory_order_seq_cst);
                if (c_->producer_waiting.load(std::memory_order_relaxed)) futex_wake(c_->tail);
                continue;
            }
            peeked_at_ = offset;
            peeked_total_ = static_cast<std::uint32_t>(sizeof(RecordHeader)) + padded(h.size);
            return Record{h.kind, {data_ + offset + sizeof(RecordHeader), h.size}};
        }
    }

    bool empty() noexcept {
        // acquire: as in peek(); a caller that sees a record will read it.
        return c_->tail.load(std::memory_order_relaxed) == c_->head.load(std::memory_order_acquire);
    }

    // Frees the record last returned by peek().
    void release() noexcept {
        // Before the tail store: after it the producer may write into those pages.
        discard(peeked_at_, peeked_total_);
        const std::uint32_t tail = c_->tail.load(std::memory_order_relaxed);
        // release: our reads of the record happen before the producer, reading tail with
        // acquire, may overwrite those bytes.
        c_->tail.store(tail + peeked_total_, std::memory_order_release);
        // seq_cst fence: the Dekker half matching the producer's wait in reserve().
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (c_->producer_waiting.load(std::memory_order_relaxed)) futex_wake(c_->tail);
    }

    // Sleeps until the ring is non-empty or `timeout` passes (after brief polling).
    // Returns true if there is data.
    bool wait_for_data(std::chrono::nanoseconds timeout, const SpinPolicy& policy = {}) {
        if (spin_until([&] { return !empty(); }, policy)) return true;
        c_->consumer_waiting.store(1, std::memory_order_relaxed);
        // seq_cst fence: the Dekker half matching commit(): after it, either we see the
        // new head or the producer sees consumer_waiting and wakes us.
        std::atomic_thread_fence(std::memory_order_seq_cst);
        const std::uint32_t head = c_->head.load(std::memory_order_relaxed);
        if (head == c_->tail.load(std::memory_order_relaxed)) futex_wait(c_->head, head, timeout);
        c_->consumer_waiting.store(0, std::memory_order_relaxed);
        return !empty();
    }

private:
    bool has_room(std::uint32_t head, std::uint32_t total) noexcept {
        if (capacity_ - (head - c_->cached_tail) >= total) return true;
        // acquire: pairs with the consumer's release store of tail: it has finished
        // reading the bytes we are about to overwrite.
        c_->cached_tail = c_->tail.load(std::memory_order_acquire);
        return capacity_ - (head - c_->cached_tail) >= total;
    }
    // Punches out the whole pages of [offset, offset+len) past the warm part (they read
    // as zero afterwards), for a ring made with discard_cold.
    void discard(std::uint32_t offset, std::uint32_t len) noexcept {
        if (!discard_cold_ || len < discard_min_bytes) return;
        std::size_t from = std::max<std::size_t>(offset, warm_bytes);
        const std::size_t to = (std::size_t{offset} + len) & ~(ring_page - 1);
        from = (from + ring_page - 1) & ~(ring_page - 1);
        if (to > from) ::madvise(data_ + from, to - from, MADV_REMOVE);
    }
    void write_header(std::uint32_t offset, RecordHeader h) noexcept {
        std::memcpy(data_ + offset, &h, sizeof h);
    }

    RingControl* c_ = nullptr;
    std::byte* data_ = nullptr;
    std::uint32_t capacity_ = 0;
    // Producer-local: the record between try_reserve() and commit().
    std::uint32_t reserved_total_ = 0, reserved_at_ = 0, reserved_size_ = 0;
    // Consumer-local: the record between peek() and release().
    std::uint32_t peeked_at_ = 0, peeked_total_ = 0;
    bool discard_cold_ = false;
};

}  // namespace multiprocessing::detail
