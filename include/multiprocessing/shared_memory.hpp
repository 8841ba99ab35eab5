// Python's multiprocessing.shared_memory: SharedMemory and ShareableList.
//
// A SharedMemory is a named POSIX segment (/dev/shm/<name>) that any process can attach
// to by name, including processes that are not our children. Unlike the anonymous
// segments behind Value, Array and the locks (which vanish with their last mapping), a
// name persists until someone unlinks it, so a creator that dies would leak it. As in
// Python, a resource tracker (detail/resource_tracker.hpp) unlinks what a process tree
// created with track=true and never unlinked, once every process of the tree is gone,
// also after a SIGKILL. With track=false the segment persists until someone unlinks it.
//
//     mp::shared_memory::SharedMemory shm(std::nullopt, /*create=*/true, 1 << 20);
//     std::span<std::byte> bytes = shm.buf();
//     mp::shared_memory::SharedMemory other(shm.name());   // attach, here or anywhere
//     shm.close(); shm.unlink();
//
//     mp::shared_memory::ShareableList<int> sl{1, 2, 3};
//     sl[0] = 7; int x = sl[1]; sl.at(-1); sl.count(7); sl.index(3);
//     mp::shared_memory::ShareableList<int> same(sl.shm().name());   // attach
//
// Both are handles: copies share one mapping, and they reach a child by inheritance or
// as a Process argument. Reads and writes are not synchronized, as in Python: guard
// concurrent writers with a Lock.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "detail/reduction.hpp"
#include "detail/resource_tracker.hpp"
#include "errors.hpp"

namespace multiprocessing::shared_memory {

namespace detail {

// Python's _make_filename: "psm_" and 8 random hex digits, short enough for the
// 14-character limit some BSDs have.
inline std::string make_filename() {
    std::uint32_t r = 0;
    if (::getrandom(&r, sizeof r, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof r)) {
        // Only a collision check depends on it: O_EXCL makes a clash a retry, never harm.
        static std::atomic<std::uint32_t> counter{0};
        r = static_cast<std::uint32_t>(::getpid()) * 2654435761u ^
            static_cast<std::uint32_t>(::time(nullptr)) ^ counter.fetch_add(0x9e3779b9u, std::memory_order_relaxed);
    }
    static constexpr char hex[] = "0123456789abcdef";
    std::string name = "psm_";
    for (int shift = 28; shift >= 0; shift -= 4) name += hex[(r >> shift) & 0xf];
    return name;
}

// One mapping of a segment, shared by every copy of a handle in this process.
struct Mapping {
    std::string name;  // without the leading '/', as Python reports it
    std::byte* data = nullptr;
    std::size_t size = 0;

    Mapping() = default;
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping() { unmap(); }

    void unmap() noexcept {
        if (data) ::munmap(data, size);
        data = nullptr;
    }
};

// `error` is taken first, as an argument: building the message may allocate, and
// nothing may touch errno before it is read.
[[noreturn]] inline void throw_segment_error(int error, const char* what, const std::string& name) {
    throw std::system_error(error, std::generic_category(),
                            std::string("SharedMemory: ") + what + " shared memory segment '" + name + "'");
}

inline std::byte* map_segment(int fd, std::size_t size, const std::string& name) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) throw_segment_error(errno, "cannot map", name);
    return static_cast<std::byte*>(p);
}

}  // namespace detail

class SharedMemory {
public:
    // Shared objects are handles (API.md): a Process argument reaches the child as the
    // same segment.
    static constexpr bool is_process_shared_handle = true;

    // Python 3.13's SharedMemory(name=None, create=False, size=0, track=True).
    //   create: a new segment of `size` bytes (zero-filled), named `name` or, without a
    //           name, a fresh "psm_..." one; std::system_error(EEXIST) if the name is taken.
    //   attach: the existing segment `name`, at its own size (`size` is ignored);
    //           std::system_error(ENOENT) if there is none.
    //   track:  a created segment is registered with the resource tracker, which unlinks
    //           it once every process of this tree is gone if nobody unlink()ed it.
    //           false: it persists until someone unlinks it.
    explicit SharedMemory(std::optional<std::string> name = std::nullopt, bool create = false,
                          std::size_t size = 0, bool track = true)
        : mapping_(std::make_shared<detail::Mapping>()) {
        if (name && name->find('\0') != std::string::npos)
            throw ValueError("SharedMemory: the name must not contain a NUL character");
        if (create)
            create_segment(name, size, track);
        else if (!name)
            throw ValueError("SharedMemory: 'name' can only be std::nullopt if create=true");
        else
            attach_segment(std::move(*name));
    }

    // Copies (and moves, which copy) share the mapping: a moved-from handle stays usable.
    SharedMemory(const SharedMemory&) = default;
    SharedMemory& operator=(const SharedMemory&) = default;

    // The name to attach with, without a leading '/'.
    const std::string& name() const noexcept { return mapping_->name; }
    // In bytes: the size it was created with (Linux does not round it up).
    std::size_t size() const noexcept { return mapping_->size; }

    // The segment's bytes. ValueError after close().
    std::span<std::byte> buf() const {
        if (!mapping_->data)
            throw ValueError("SharedMemory: the segment '" + mapping_->name + "' is closed in this process");
        return {mapping_->data, mapping_->size};
    }

    // Unmaps the segment in this process, for every copy of this handle here; the
    // segment itself lives on (other processes, unlink()). Closing twice is harmless.
    void close() noexcept { mapping_->unmap(); }

    // Removes the name, as Python's unlink(): existing mappings stay valid, new attaches
    // fail. Once, across all processes: a second unlink throws std::system_error(ENOENT).
    void unlink() {
        const std::string path = "/" + mapping_->name;
        if (::shm_unlink(path.c_str()) != 0) detail::throw_segment_error(errno, "cannot unlink", mapping_->name);
        // Also for an untracked handle: the segment may have been created tracked, and a
        // tracker that does not know the name ignores it. The unlink itself succeeded, so a
        // failure to tell the tracker is not this call's error: the tracker would only
        // find the name already gone at the end.
        try {
            multiprocessing::detail::resource_tracker().unregister(mapping_->name);
        } catch (...) {
        }
    }

    // Under spawn and forkserver the name travels and the child attaches, as Python's
    // SharedMemory pickles (so the segment must not be unlinked before the child starts).
    using reduced_type = std::string;
    reduced_type reduce(multiprocessing::detail::PassedFds&) const { return name(); }
    static SharedMemory rebuild(const reduced_type& name) { return SharedMemory(name); }

private:
    void create_segment(const std::optional<std::string>& name, std::size_t size, bool track) {
        if (size == 0)
            throw ValueError("SharedMemory: 'size' must be a positive number different from zero");
        if (size > static_cast<std::size_t>(std::numeric_limits<off_t>::max()))
            throw ValueError("SharedMemory: 'size' is too large");
        auto& tracker = multiprocessing::detail::resource_tracker();
        // Started before the segment exists, so that registering right after shm_open is
        // one send: the window in which a SIGKILL would leak the segment stays tiny.
        if (track) tracker.ensure_running();

        const bool random_name = !name;
        int fd = -1;
        std::string chosen, path;
        for (;;) {
            chosen = random_name ? detail::make_filename() : *name;
            path = "/" + chosen;
            fd = ::shm_open(path.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
            if (fd >= 0) break;
            if (errno == EEXIST && random_name) continue;
            detail::throw_segment_error(errno, "cannot create", chosen);
        }
        multiprocessing::detail::UniqueFd owned(fd);
        bool registered = false;
        try {
            if (track) {
                tracker.register_(chosen);
                registered = true;
            }
            if (::ftruncate(fd, static_cast<off_t>(size)) != 0) detail::throw_segment_error(errno, "cannot size", chosen);
            mapping_->data = detail::map_segment(fd, size, chosen);
        } catch (...) {
            // The name is ours alone until this constructor returns: nobody else can
            // need it, so it goes, and the tracker forgets it.
            ::shm_unlink(path.c_str());
            if (registered) {
                try {
                    tracker.unregister(chosen);
                } catch (...) {
                }
            }
            throw;
        }
        mapping_->name = std::move(chosen);
        mapping_->size = size;
    }

    void attach_segment(std::string name) {
        const std::string path = "/" + name;
        const int fd = ::shm_open(path.c_str(), O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0) detail::throw_segment_error(errno, "cannot attach to", name);
        multiprocessing::detail::UniqueFd owned(fd);
        struct stat st {};
        if (::fstat(fd, &st) != 0) detail::throw_segment_error(errno, "cannot read the size of", name);
        if (st.st_size <= 0)
            throw ValueError("SharedMemory: cannot attach to shared memory segment '" + name +
                             "': it is empty (its creator has not sized it yet)");
        const auto size = static_cast<std::size_t>(st.st_size);
        mapping_->data = detail::map_segment(fd, size, name);
        mapping_->name = std::move(name);
        mapping_->size = size;
    }

    std::shared_ptr<detail::Mapping> mapping_;
};

// ---- ShareableList ----------------------------------------------------------------------

namespace detail {

// What a segment holding a ShareableList starts with. The items follow: for a trivially
// copyable T, count of them, aligned for T; for std::string, count+1 offsets into the
// data area (item i owns [offsets[i], offsets[i+1]): its capacity, fixed at creation),
// then count current lengths, then the data area.
struct ListHeader {
    std::uint64_t magic;      // written last, so a half-built list is never taken for one
    std::uint64_t count;
    std::uint64_t item_size;  // sizeof(T); 0 for std::string
    std::uint64_t type_hash;  // of the type's mangled name: a wrong T on attach is caught
};
inline constexpr std::uint64_t list_magic = 0x3174'73696c'6d70ull;  // "pmlist1" read little-endian
inline constexpr std::size_t string_alignment = 8;

template <class T>
std::uint64_t type_hash() noexcept {
    // FNV-1a over the Itanium-ABI mangled name, which every process built for this ABI
    // agrees on, unlike the address of typeid(T).
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (const char* p = typeid(T).name(); *p; ++p) h = (h ^ static_cast<unsigned char>(*p)) * 0x100000001b3ull;
    return h;
}

constexpr std::size_t round_up(std::size_t n, std::size_t to) noexcept { return (n + to - 1) / to * to; }

}  // namespace detail

template <class T>
class ShareableList {
    static_assert(!std::is_pointer_v<T> && !std::is_member_pointer_v<T>,
                  "multiprocessing::shared_memory::ShareableList<T>: T must not be a pointer: the items "
                  "live in shared memory, where an address means something in one process only.");
    static_assert(std::is_trivially_copyable_v<T> || std::is_same_v<T, std::string>,
                  "multiprocessing::shared_memory::ShareableList<T>: T must be trivially copyable (an "
                  "int, a double, a plain struct of those) or std::string: the items are stored as raw "
                  "bytes in shared memory, where anything owning heap memory would point into one "
                  "process only. For other types, use a Queue, a Pipe or a manager list.");
    static_assert(!std::is_const_v<T> && !std::is_volatile_v<T>,
                  "multiprocessing::shared_memory::ShareableList<T>: T must not be const or volatile");

    static constexpr bool is_string = std::is_same_v<T, std::string>;

public:
    static constexpr bool is_process_shared_handle = true;

    // What sl[i] gives: reads as T, and assigning a T writes into shared memory.
    class Reference {
    public:
        operator T() const { return list_->load(index_); }
        T get() const { return list_->load(index_); }
        Reference& operator=(const T& value) {
            list_->store(index_, value);
            return *this;
        }
        // Assigns the value, not the reference (sl[0] = sl[1] copies an item).
        Reference& operator=(const Reference& other) { return *this = other.get(); }
        Reference(const Reference&) = default;

        friend bool operator==(const Reference& a, const T& b) { return a.get() == b; }

    private:
        friend class ShareableList;
        Reference(const ShareableList* list, std::size_t index) noexcept : list_(list), index_(index) {}
        const ShareableList* list_;
        std::size_t index_;
    };

    // Iterates over the values, as iterating a Python ShareableList does.
    class iterator {
    public:
        using value_type = T;
        using reference = T;
        using pointer = void;
        using difference_type = std::ptrdiff_t;
        using iterator_concept = std::random_access_iterator_tag;
        // For pre-C++20 algorithms: *it is a value, not a reference.
        using iterator_category = std::input_iterator_tag;

        iterator() = default;
        T operator*() const { return list_->load(index_); }
        T operator[](difference_type n) const { return list_->load(static_cast<std::size_t>(index_ + n)); }
        iterator& operator++() noexcept { return ++index_, *this; }
        iterator operator++(int) noexcept { return iterator(list_, index_++); }
        iterator& operator--() noexcept { return --index_, *this; }
        iterator operator--(int) noexcept { return iterator(list_, index_--); }
        iterator& operator+=(difference_type n) noexcept { return index_ += n, *this; }
        iterator& operator-=(difference_type n) noexcept { return index_ -= n, *this; }
        friend iterator operator+(iterator it, difference_type n) noexcept { return it += n; }
        friend iterator operator+(difference_type n, iterator it) noexcept { return it += n; }
        friend iterator operator-(iterator it, difference_type n) noexcept { return it -= n; }
        friend difference_type operator-(const iterator& a, const iterator& b) noexcept { return a.index_ - b.index_; }
        friend bool operator==(const iterator& a, const iterator& b) noexcept { return a.index_ == b.index_; }
        friend auto operator<=>(const iterator& a, const iterator& b) noexcept { return a.index_ <=> b.index_; }

    private:
        friend class ShareableList;
        iterator(const ShareableList* list, difference_type index) noexcept : list_(list), index_(index) {}
        const ShareableList* list_ = nullptr;
        difference_type index_ = 0;
    };
    using const_iterator = iterator;
    using value_type = T;
    using size_type = std::size_t;

    // ShareableList(): an empty list in a new segment, as Python's.
    ShareableList() : ShareableList(std::initializer_list<T>{}) {}

    // ShareableList(sequence, name=None): a new segment holding the items. Strings get a
    // fixed capacity, their length rounded up past the next multiple of 8 (as Python).
    ShareableList(std::initializer_list<T> items, std::optional<std::string> name = std::nullopt)
        : ShareableList(std::vector<T>(items), name, Create{}) {}

    template <std::ranges::input_range R>
        requires(std::convertible_to<std::ranges::range_reference_t<R>, T> &&
                 !std::is_convertible_v<R, std::string_view> &&
                 !std::is_same_v<std::remove_cvref_t<R>, ShareableList>)
    explicit ShareableList(R&& items, std::optional<std::string> name = std::nullopt)
        : ShareableList(collect(std::forward<R>(items)), name, Create{}) {}

    // ShareableList(name=...): attaches to an existing list. Use parentheses:
    // ShareableList<std::string>{"x"} would create a list holding "x".
    // ValueError if the segment is not a ShareableList of this T.
    explicit ShareableList(std::string name) : shm_(std::move(name)) { validate(); }

    ShareableList(const ShareableList&) = default;
    ShareableList& operator=(const ShareableList&) = default;

    // The count read (and checked against the segment's size) when this handle was made:
    // a list's length never changes, and reading it again from shared memory would let
    // another process that writes there make every index check meaningless.
    // (ValueError once the segment is closed here, as every other access.)
    std::size_t size() const {
        (void)shm_.buf();
        return count_;
    }
    bool empty() const { return size() == 0; }

    // Unchecked, as std::vector's; at() checks.
    Reference operator[](std::size_t i) const { return Reference(this, i); }

    // Checked, with Python's negative indices (at(-1) is the last item); IndexError.
    Reference at(std::ptrdiff_t i) const {
        const auto n = static_cast<std::ptrdiff_t>(size());
        const std::ptrdiff_t j = i < 0 ? i + n : i;
        if (j < 0 || j >= n)
            throw IndexError("ShareableList: index " + std::to_string(i) + " out of range for a list of " +
                             std::to_string(n) + " items");
        return Reference(this, static_cast<std::size_t>(j));
    }

    iterator begin() const { return iterator(this, 0); }
    iterator end() const { return iterator(this, static_cast<std::ptrdiff_t>(size())); }

    std::size_t count(const T& value) const {
        std::size_t n = 0;
        for (std::size_t i = 0, e = size(); i < e; ++i) n += load(i) == value;
        return n;
    }

    // The first position of `value`; ValueError if it is not there.
    std::size_t index(const T& value) const {
        for (std::size_t i = 0, e = size(); i < e; ++i)
            if (load(i) == value) return i;
        throw ValueError("ShareableList.index: the value is not in this list");
    }

    // The segment the list lives in (Python's .shm): shm().name() to attach elsewhere,
    // shm().close(), shm().unlink(). A handle copy, so that the list's own cannot be
    // reassigned; it shares the list's mapping, so shm().close() closes the list here.
    SharedMemory shm() const { return shm_; }

    // Under spawn and forkserver, as its SharedMemory: by name.
    using reduced_type = std::string;
    reduced_type reduce(multiprocessing::detail::PassedFds&) const { return shm_.name(); }
    static ShareableList rebuild(const reduced_type& name) { return ShareableList(name); }

private:
    struct Create {};

    template <class R>
    static std::vector<T> collect(R&& items) {
        std::vector<T> v;
        if constexpr (std::ranges::sized_range<R>) v.reserve(std::ranges::size(items));
        for (auto&& item : items) v.push_back(static_cast<T>(item));
        return v;
    }

    static std::size_t items_offset() noexcept {
        if constexpr (is_string)
            return sizeof(detail::ListHeader);
        else
            return detail::round_up(sizeof(detail::ListHeader), alignof(T));
    }

    static std::size_t string_capacity(std::size_t length) noexcept {
        return detail::string_alignment * (length / detail::string_alignment + 1);
    }

    ShareableList(const std::vector<T>& items, const std::optional<std::string>& name, Create)
        : shm_(name, /*create=*/true, bytes_needed(items)) {
        std::byte* base = shm_.buf().data();
        const std::size_t n = items.size();
        if constexpr (is_string) {
            auto* offsets = reinterpret_cast<std::uint64_t*>(base + items_offset());
            auto* lengths = offsets + n + 1;
            auto* data = reinterpret_cast<std::byte*>(lengths + n);
            std::uint64_t offset = 0;
            for (std::size_t i = 0; i < n; ++i) {
                offsets[i] = offset;
                lengths[i] = items[i].size();
                std::memcpy(data + offset, items[i].data(), items[i].size());
                offset += string_capacity(items[i].size());
            }
            offsets[n] = offset;
        } else if (n) {
            std::memcpy(base + items_offset(), items.data(), n * sizeof(T));
        }
        auto* h = reinterpret_cast<detail::ListHeader*>(base);
        h->count = n;
        h->item_size = is_string ? 0 : sizeof(T);
        h->type_hash = detail::type_hash<T>();
        h->magic = detail::list_magic;
        count_ = n;
    }

    static std::size_t bytes_needed(const std::vector<T>& items) {
        std::size_t bytes = items_offset();
        if constexpr (is_string) {
            bytes += (2 * items.size() + 1) * sizeof(std::uint64_t);
            for (const auto& s : items) bytes += string_capacity(s.size());
        } else {
            bytes += items.size() * sizeof(T);
        }
        return bytes;
    }

    const detail::ListHeader& header() const {
        return *reinterpret_cast<const detail::ListHeader*>(shm_.buf().data());
    }

    // The string layout's tables. Where they are follows from the count this handle
    // checked; what they hold is read from shared memory on every access (a pointer
    // cached here would outlive a close()).
    struct StringTables {
        std::uint64_t* offsets;
        std::uint64_t* lengths;
        std::byte* data;
        std::size_t data_size;  // bytes of the data area that lie inside the segment
    };
    StringTables string_tables() const {
        std::byte* base = shm_.buf().data();
        const std::size_t n = count_;
        auto* offsets = reinterpret_cast<std::uint64_t*>(base + items_offset());
        const std::size_t tables = (2 * n + 1) * sizeof(std::uint64_t);
        return {offsets, offsets + n + 1, reinterpret_cast<std::byte*>(offsets + 2 * n + 1),
                shm_.size() - items_offset() - tables};
    }

    // A table entry, read once: any process that maps the segment may be writing it (a
    // buggy or hostile one included), so each value is loaded a single time and the copy
    // is what gets checked and used; checking one read and using another would let a
    // concurrent writer slip a bad offset past the check. Relaxed: the entry is checked
    // before use, and nothing else is ordered by it.
    static std::uint64_t read_entry(std::uint64_t* entry) noexcept {
        return std::atomic_ref<std::uint64_t>(*entry).load(std::memory_order_relaxed);
    }

    // Item i's place in the data area and its current length, every value checked:
    // ValueError (as Python's struct errors) if another process wrote a layout that
    // points outside the segment, never a read or write out of bounds.
    struct StringSlot {
        std::size_t begin;
        std::size_t capacity;
        std::size_t length;
    };
    StringSlot string_slot(const StringTables& t, std::size_t i) const {
        const std::uint64_t begin = read_entry(t.offsets + i);
        const std::uint64_t end = read_entry(t.offsets + i + 1);
        const std::uint64_t length = read_entry(t.lengths + i);
        if (begin > end || end > t.data_size || length > end - begin)
            throw ValueError("ShareableList: the segment '" + shm_.name() + "' is corrupt: item " +
                             std::to_string(i) + " claims bytes [" + std::to_string(begin) + ", " +
                             std::to_string(end) + ") of a " + std::to_string(t.data_size) +
                             "-byte data area with length " + std::to_string(length) +
                             " (another process wrote over the list's layout)");
        return {static_cast<std::size_t>(begin), static_cast<std::size_t>(end - begin),
                static_cast<std::size_t>(length)};
    }

    void validate() {
        const std::string& name = shm_.name();
        const std::size_t bytes = shm_.size();
        if (bytes < sizeof(detail::ListHeader) || header().magic != detail::list_magic)
            throw ValueError("ShareableList: the shared memory segment '" + name + "' does not hold a ShareableList");
        const detail::ListHeader& h = header();
        if (h.item_size != (is_string ? 0 : sizeof(T)) || h.type_hash != detail::type_hash<T>())
            throw ValueError("ShareableList: the segment '" + name + "' holds a ShareableList of another item type (" +
                             (h.item_size ? std::to_string(h.item_size) + "-byte items" : std::string("strings")) +
                             "); attach with the type it was created with");
        // The count once, into count_: everything after this uses that copy.
        const std::uint64_t count = read_entry(const_cast<std::uint64_t*>(&h.count));
        const std::size_t room = bytes < items_offset() ? 0 : bytes - items_offset();
        bool fits;
        if constexpr (is_string) {
            // count + 1 offsets and count lengths.
            fits = room >= sizeof(std::uint64_t) &&
                   count <= (room - sizeof(std::uint64_t)) / (2 * sizeof(std::uint64_t));
        } else {
            fits = count <= room / sizeof(T);
        }
        if (!fits)
            throw ValueError("ShareableList: the segment '" + name + "' is corrupt: its items do not fit in it");
        count_ = static_cast<std::size_t>(count);
        if constexpr (is_string) {
            // Every item once now, so that a corrupt list is refused at attach as before;
            // load() and store() check their item again each time.
            const StringTables t = string_tables();
            for (std::size_t i = 0; i < count_; ++i) (void)string_slot(t, i);
        }
    }

    T load(std::size_t i) const {
        if constexpr (is_string) {
            const StringTables t = string_tables();
            const StringSlot slot = string_slot(t, i);
            return std::string(reinterpret_cast<const char*>(t.data + slot.begin), slot.length);
        } else {
            // Copied out as bytes: no T object was ever constructed there in this process
            // (another one wrote it), and T need not be default constructible.
            std::array<std::byte, sizeof(T)> raw;
            std::memcpy(raw.data(), shm_.buf().data() + items_offset() + i * sizeof(T), sizeof(T));
            return std::bit_cast<T>(raw);
        }
    }

    void store(std::size_t i, const T& value) const {
        if constexpr (is_string) {
            const StringTables t = string_tables();
            const StringSlot slot = string_slot(t, i);
            if (value.size() > slot.capacity)
                throw ValueError("ShareableList: a string of " + std::to_string(value.size()) +
                                 " bytes exceeds available storage for item " + std::to_string(i) + " (" +
                                 std::to_string(slot.capacity) + " bytes, fixed when the list was created)");
            std::memcpy(t.data + slot.begin, value.data(), value.size());
            std::atomic_ref<std::uint64_t>(t.lengths[i]).store(value.size(), std::memory_order_relaxed);
        } else {
            std::memcpy(shm_.buf().data() + items_offset() + i * sizeof(T), &value, sizeof(T));
        }
    }

    SharedMemory shm_;
    std::size_t count_ = 0;
};

}  // namespace multiprocessing::shared_memory
