// Python's multiprocessing.managers: a server process that holds objects, and proxies
// through which any process (a child, or a program on another machine) calls their
// methods. Manager() starts a SyncManager serving lists, dicts, namespaces, queues,
// locks and the rest; a BaseManager serves what its program registers, over TCP.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "connection.hpp"
#include "detail/callable.hpp"
#include "detail/deadline.hpp"
#include "detail/forkserver.hpp"
#include "detail/manager_client.hpp"
#include "detail/manager_protocol.hpp"
#include "detail/manager_server.hpp"
#include "detail/popen_fork.hpp"
#include "detail/process_state.hpp"
#include "errors.hpp"
#include "pool.hpp"
#include "queues.hpp"
#include "sharedctypes.hpp"
#include "synchronize.hpp"

namespace multiprocessing::managers {

using connection::Address;
using namespace std::chrono_literals;

// ---- what a server can serve, and the proxy a client gets for it ----------------------

// served<S> says how a manager serves an S: `proxy`, the client's proxy type;
// `methods()`, what the proxy may call; `thread_safe`, whether calls from several
// connections may run at once (else the server runs them one at a time, as Python's
// GIL does). Specialized below for the built-in types; a user type gets its methods
// from exposed(...) when it is registered.
template <class S>
struct served;

template <class S>
concept has_builtin_proxy = requires { typename served<S>::proxy; };

template <class S>
class Proxy;

template <class S, bool = has_builtin_proxy<S>>
struct proxy_of {
    using type = Proxy<S>;
};
template <class S>
struct proxy_of<S, true> {
    using type = typename served<S>::proxy;
};
// The proxy type for a served S.
template <class S>
using proxy_t = typename proxy_of<S>::type;

namespace detail {
using namespace multiprocessing::detail;
using namespace multiprocessing::detail::manager;

inline std::int64_t normalize_index(std::int64_t i, std::size_t size, const char* what) {
    const auto n = static_cast<std::int64_t>(size);
    const std::int64_t at = i < 0 ? i + n : i;
    if (at < 0 || at >= n)
        throw IndexError(std::string(what) + " index " + std::to_string(i) + " out of range (size " +
                         std::to_string(size) + ")");
    return at;
}

// An argument as it is sent: text as a std::string, anything else as it is.
template <class A>
decltype(auto) as_sent(const A& a) {
    if constexpr (std::is_same_v<stored_arg_t<A>, std::string> && !std::is_same_v<A, std::string>) {
        return std::string(a);
    } else {
        return (a);
    }
}

inline std::optional<Timeout> to_timeout(std::optional<double> seconds) {
    if (!seconds) return std::nullopt;
    return Timeout(*seconds);
}

// A dict that keeps insertion order, as Python's does.
template <class K, class V>
class InsertionOrderedMap {
public:
    using value_type = std::pair<K, V>;
    InsertionOrderedMap() = default;
    explicit InsertionOrderedMap(std::vector<value_type> initial) {
        for (auto& [k, v] : initial) set(k, std::move(v));
    }
    InsertionOrderedMap(const InsertionOrderedMap&) = delete;  // the index points into items_
    InsertionOrderedMap& operator=(const InsertionOrderedMap&) = delete;
    V* find(const K& k) {
        auto it = index_.find(k);
        return it == index_.end() ? nullptr : &it->second->second;
    }
    V& set(const K& k, V v) {
        if (V* existing = find(k)) return *existing = std::move(v);
        items_.emplace_back(k, std::move(v));
        index_.emplace(k, std::prev(items_.end()));
        return items_.back().second;
    }
    bool erase(const K& k) {
        auto it = index_.find(k);
        if (it == index_.end()) return false;
        items_.erase(it->second);
        index_.erase(it);
        return true;
    }
    void clear() {
        items_.clear();
        index_.clear();
    }
    std::size_t size() const noexcept { return items_.size(); }
    const std::list<value_type>& items() const noexcept { return items_; }

private:
    std::list<value_type> items_;
    std::map<K, typename std::list<value_type>::iterator> index_;
};

// Namespace(): attributes by name, each holding an encoded value and its type.
struct NamespaceState {
    struct Attribute {
        std::uint64_t type = 0;
        std::string type_name;
        std::vector<std::byte> bytes;
    };
    std::map<std::string, Attribute> attributes;
};

// Manager.Value(typecode, value): a plain value with get/set (no lock, as Python's).
template <class T>
struct ValueBox {
    T value{};
};

// Manager.Array(typecode, sequence): fixed size.
template <class T>
struct FixedArray {
    std::vector<T> items;
};

template <class S>
using method_list = std::vector<Method<S>>;

template <class S, class F>
void add_method(method_list<S>& methods, std::string name, F fn) {
    methods.push_back(method_of<S>(std::move(name), fn));
}

// The methods shared by the lock-like types. A blocking acquire waits in slices so a
// caller that died stops waiting, and what it got is released if the answer cannot reach it.
template <class S>
void add_acquirer_methods(method_list<S>& m) {
    add_method<S>(m, "acquire", [](S& s, bool block, std::optional<double> timeout) {
        const bool got = block ? wait_in_slices(timeout, [&](Timeout slice) { return s.acquire(slice); })
                               : s.acquire(false);
        if (got) current_caller().undo = [&s] { s.release(); };
        return got;
    });
    add_method<S>(m, "release", [](S& s) { s.release(); });
}

}  // namespace detail

// ---- proxies --------------------------------------------------------------------------

// What every proxy is: a handle to one object on one server. Copies share it; copies
// in a child (inherited, or passed as a Process argument) call the same object, and so
// does a copy sent in a message (a task argument or result, a queue item, a value stored
// in a managed list or dict): it travels as its server's address and the object's id,
// and the receiver takes a reference of its own (Python pickles a proxy the same way).
// Keep the sent proxy until the receiver has it: an object whose last proxy is gone is
// freed, even while a message naming it is on its way.
class BaseProxy {
public:
    // The object's id on its server (Python's proxy._id).
    std::uint64_t id() const { return state().id(); }
    // Where the server is.
    const Address& address() const { return state().client().address(); }

    // Two proxies are equal when they name the same object on the same server.
    friend bool operator==(const BaseProxy& a, const BaseProxy& b) {
        return a.state_ == b.state_ || (a.state_ && b.state_ && a.id() == b.id() && a.address() == b.address());
    }

    // In a message (cereal's customization point; detail/manager_client.hpp says how the
    // receiver finds the server's key).
    template <class Archive>
    void save(Archive& archive) const {
        archive(detail::manager::message_reference_to(state()));
    }
    template <class Archive>
    void load(Archive& archive) {
        detail::manager::ProxyInMessage reference;
        archive(reference);
        state_ = detail::manager::rebuild_from_message(reference);
    }

    // Under spawn and forkserver: the server's address, the key and the object's id
    // travel, and the child's copy holds a reference of its own (as Python's proxies).
    using reduced_type = detail::manager::ProxyReference;
    reduced_type reduce(detail::PassedFds&) const { return detail::manager::reference_to(state()); }
    // What every proxy type is constructed from.
    static std::shared_ptr<detail::ProxyState> rebuild(const reduced_type& r) {
        return detail::manager::rebuild_proxy_state(r);
    }

protected:
    BaseProxy() = default;
    explicit BaseProxy(std::shared_ptr<detail::ProxyState> state) : state_(std::move(state)) {}

    template <class R = void, class... A>
    R call_method(std::string_view method, const A&... arguments) const {
        return state().template call<R>(method, arguments...);
    }

    detail::ProxyState& state() const {
        if (!state_) throw ValueError("manager proxy: this proxy was moved from or never connected to an object");
        return *state_;
    }

private:
    template <class S>
    friend class Proxy;
    friend class BaseManager;
    std::shared_ptr<detail::ProxyState> state_;
};

// The proxy for a user type registered with exposed(...): call<R>("method", args...).
// The arguments must have exactly the types of the method's parameters.
template <class S>
class Proxy : public BaseProxy {
public:
    Proxy() = default;
    explicit Proxy(std::shared_ptr<detail::ProxyState> state) : BaseProxy(std::move(state)) {}

    template <class R = void, class... A>
    R call(std::string_view method, A&&... arguments) const {
        return call_method<R>(method, detail::as_sent(arguments)...);
    }
};

// Python's ListProxy.
template <class T>
class ListProxy : public BaseProxy {
public:
    using value_type = T;
    ListProxy() = default;
    explicit ListProxy(std::shared_ptr<detail::ProxyState> state) : BaseProxy(std::move(state)) {}

    void append(const T& v) const { call_method("append", v); }
    void extend(const std::vector<T>& items) const { call_method("extend", items); }
    void insert(std::int64_t index, const T& v) const { call_method("insert", index, v); }
    T pop() const { return call_method<T>("pop", std::int64_t(-1)); }
    T pop(std::int64_t index) const { return call_method<T>("pop", index); }
    // ValueError when no element equals v.
    void remove(const T& v) const { call_method("remove", v); }
    // A copy of element i (negative counts from the end); IndexError when out of range.
    T operator[](std::int64_t i) const { return call_method<T>("getitem", i); }
    void set(std::int64_t i, const T& v) const { call_method("setitem", i, v); }
    void erase(std::int64_t i) const { call_method("delitem", i); }
    std::size_t size() const { return call_method<std::uint64_t>("len"); }
    bool empty() const { return size() == 0; }
    std::vector<T> get() const { return call_method<std::vector<T>>("copy"); }
    void clear() const { call_method("clear"); }
    std::int64_t index(const T& v) const { return call_method<std::int64_t>("index", v); }
    std::int64_t count(const T& v) const { return call_method<std::int64_t>("count", v); }
    bool contains(const T& v) const { return call_method<bool>("contains", v); }
    void reverse() const { call_method("reverse"); }
    void sort() const { call_method("sort"); }

    // Iteration asks the server for item 0, 1, 2, ... until one is out of range, as
    // Python iterates a ListProxy (it exposes no __iter__, so iter() falls back to
    // __getitem__): each item is read when the walk reaches it, so a change made to the
    // list meanwhile is seen (CPython's test_list_iter). One round trip per item; get()
    // copies the whole list in one. The proxy must outlive the walk, as in a range-for.
    class iterator {
    public:
        using value_type = T;
        using difference_type = std::ptrdiff_t;
        iterator() = default;
        const T& operator*() const { return *fetched(); }
        const T* operator->() const { return &*fetched(); }
        iterator& operator++() {
            ++i_;
            item_.reset();
            fetched_ = false;
            return *this;
        }
        void operator++(int) { ++*this; }
        bool operator==(std::default_sentinel_t) const { return !list_ || !fetched(); }

    private:
        friend class ListProxy;
        explicit iterator(const ListProxy* list) : list_(list) {}
        // Item i_, read from the server once; empty past the end.
        const std::optional<T>& fetched() const {
            if (!fetched_) {
                try {
                    item_.emplace((*list_)[i_]);
                } catch (const IndexError&) {
                    item_.reset();
                }
                fetched_ = true;
            }
            return item_;
        }
        const ListProxy* list_ = nullptr;
        std::int64_t i_ = 0;
        mutable std::optional<T> item_;
        mutable bool fetched_ = false;
    };
    iterator begin() const { return iterator(this); }
    std::default_sentinel_t end() const { return {}; }
};

// Python's DictProxy.
template <class K, class V>
class DictProxy : public BaseProxy {
public:
    DictProxy() = default;
    explicit DictProxy(std::shared_ptr<detail::ProxyState> state) : BaseProxy(std::move(state)) {}

    void set(const K& k, const V& v) const { call_method("setitem", k, v); }
    // Python's d.get(k): empty when k is missing.
    std::optional<V> get(const K& k) const { return call_method<std::optional<V>>("get", k); }
    // Python's d[k]: KeyError when k is missing.
    V operator[](const K& k) const { return call_method<V>("getitem", k); }
    bool contains(const K& k) const { return call_method<bool>("contains", k); }
    // Python's del d[k]: KeyError when k is missing.
    void erase(const K& k) const { call_method("delitem", k); }
    V pop(const K& k) const { return call_method<V>("pop", k); }
    V setdefault(const K& k, const V& v) const { return call_method<V>("setdefault", k, v); }
    std::vector<K> keys() const { return call_method<std::vector<K>>("keys"); }
    std::vector<V> values() const { return call_method<std::vector<V>>("values"); }
    std::vector<std::pair<K, V>> items() const { return call_method<std::vector<std::pair<K, V>>>("items"); }
    std::size_t size() const { return call_method<std::uint64_t>("len"); }
    bool empty() const { return size() == 0; }
    void update(const std::vector<std::pair<K, V>>& items) const { call_method("update", items); }
    void update(const std::map<K, V>& items) const { update(std::vector<std::pair<K, V>>(items.begin(), items.end())); }
    void clear() const { call_method("clear"); }
    // A copy of the whole dict, in insertion order.
    std::vector<std::pair<K, V>> get() const { return items(); }
};

// Python's NamespaceProxy: attributes by name, each typed by what was stored.
class NamespaceProxy : public BaseProxy {
public:
    NamespaceProxy() = default;
    explicit NamespaceProxy(std::shared_ptr<detail::ProxyState> state) : BaseProxy(std::move(state)) {}

    template <class T>
    void set(const std::string& name, const T& value) const {
        using Stored = detail::stored_arg_t<T>;
        const Stored& v = value;
        std::vector<std::byte> bytes(detail::encoded_size(v));
        detail::ByteWriter w(bytes.data());
        detail::put(w, v);
        call_method("setattr", name, detail::fingerprint(detail::type_name<Stored>()),
                    std::string(detail::type_name<Stored>()), bytes);
    }
    // KeyError when there is no such attribute; ValueError when it holds another type.
    template <class T>
    T get(const std::string& name) const {
        auto bytes = call_method<std::vector<std::byte>>("getattr", name, detail::fingerprint(detail::type_name<T>()),
                                                         std::string(detail::type_name<T>()));
        detail::ByteReader r(bytes);
        return detail::get<T>(r);
    }
    bool contains(const std::string& name) const { return call_method<bool>("hasattr", name); }
    void erase(const std::string& name) const { call_method("delattr", name); }
    std::vector<std::string> names() const { return call_method<std::vector<std::string>>("names"); }
};

// Python's ValueProxy.
template <class T>
class ValueProxy : public BaseProxy {
public:
    ValueProxy() = default;
    explicit ValueProxy(std::shared_ptr<detail::ProxyState> state) : BaseProxy(std::move(state)) {}
    T get() const { return call_method<T>("get"); }
    void set(const T& v) const { call_method("set", v); }
    T value() const { return get(); }
};

// Python's ArrayProxy.
template <class T>
class ArrayProxy : public BaseProxy {
public:
    ArrayProxy() = default;
    explicit ArrayProxy(std::shared_ptr<detail::ProxyState> state) : BaseProxy(std::move(state)) {}
    T operator[](std::int64_t i) const { return call_method<T>("getitem", i); }
    void set(std::int64_t i, const T& v) const { call_method("setitem", i, v); }
    std::size_t size() const { return call_method<std::uint64_t>("len"); }
    std::vector<T> get() const { return call_method<std::vector<T>>("copy"); }
};

// Python's queue proxy (SyncManager.Queue is a queue.Queue: it has task_done and join).
template <class T>
class QueueProxy : public BaseProxy {
public:
    QueueProxy() = default;
    explicit QueueProxy(std::shared_ptr<detail::ProxyState> state) : BaseProxy(std::move(state)) {}

    void put(const T& item) const { put_impl(item, true, std::nullopt); }
    void put(const T& item, Timeout timeout) const { put_impl(item, true, timeout.count()); }
    void put(const T& item, bool block) const { put_impl(item, block, std::nullopt); }
    void put(const T& item, bool block, Timeout timeout) const { put_impl(item, block, timeout.count()); }
    void put_nowait(const T& item) const { put(item, false); }
    T get() const { return get_impl(true, std::nullopt); }
    T get(Timeout timeout) const { return get_impl(true, timeout.count()); }
    T get(bool block) const { return get_impl(block, std::nullopt); }
    T get(bool block, Timeout timeout) const { return get_impl(block, timeout.count()); }
    T get_nowait() const { return get(false); }
    std::size_t qsize() const { return call_method<std::uint64_t>("qsize"); }
    bool empty() const { return call_method<bool>("empty"); }
    bool full() const { return call_method<bool>("full"); }
    void task_done() const { call_method("task_done"); }
    void join() const { call_method<bool>("join", std::optional<double>()); }
    bool join(Timeout timeout) const { return call_method<bool>("join", std::optional<double>(timeout.count())); }

private:
    void put_impl(const T& item, bool block, std::optional<double> timeout) const {
        call_method("put", item, block, timeout);
    }
    T get_impl(bool block, std::optional<double> timeout) const { return call_method<T>("get", block, timeout); }
};

// Python's AcquirerProxy: Lock, RLock, Semaphore, BoundedSemaphore. Works with
// std::lock_guard and std::unique_lock through lock()/unlock()/try_lock().
class AcquirerProxy : public BaseProxy {
public:
    AcquirerProxy() = default;
    explicit AcquirerProxy(std::shared_ptr<detail::ProxyState> state) : BaseProxy(std::move(state)) {}

    bool acquire(bool block = true) const { return call_method<bool>("acquire", block, std::optional<double>()); }
    bool acquire(Timeout timeout) const {
        return call_method<bool>("acquire", true, std::optional<double>(timeout.count()));
    }
    bool acquire(bool block, Timeout timeout) const { return block ? acquire(timeout) : acquire(false); }
    void release() const { call_method("release"); }
    void lock() const { acquire(); }
    void unlock() const { release(); }
    bool try_lock() const { return acquire(false); }
};

// Python's ConditionProxy.
class ConditionProxy : public AcquirerProxy {
public:
    ConditionProxy() = default;
    explicit ConditionProxy(std::shared_ptr<detail::ProxyState> state) : AcquirerProxy(std::move(state)) {}

    bool wait() const { return call_method<bool>("wait", std::optional<double>()); }
    bool wait(Timeout timeout) const { return call_method<bool>("wait", std::optional<double>(timeout.count())); }
    // Python's wait_for: the predicate runs here, between waits on the server.
    template <class Predicate>
    bool wait_for(Predicate pred) const {
        while (!pred()) wait();
        return true;
    }
    template <class Predicate>
    bool wait_for(Predicate pred, Timeout timeout) const {
        const multiprocessing::detail::Deadline deadline(timeout);
        bool ok = pred();
        while (!ok) {
            const auto left = deadline.remaining();
            if (left && left->count() <= 0) break;
            wait(left ? Timeout(*left) : timeout);
            ok = pred();
        }
        return ok;
    }
    void notify(int n = 1) const { call_method("notify", n); }
    void notify_all() const { call_method("notify_all"); }
};

// Python's EventProxy.
class EventProxy : public BaseProxy {
public:
    EventProxy() = default;
    explicit EventProxy(std::shared_ptr<detail::ProxyState> state) : BaseProxy(std::move(state)) {}
    void set() const { call_method("set"); }
    void clear() const { call_method("clear"); }
    bool is_set() const { return call_method<bool>("is_set"); }
    bool wait() const { return call_method<bool>("wait", std::optional<double>()); }
    bool wait(Timeout timeout) const { return call_method<bool>("wait", std::optional<double>(timeout.count())); }
};

// Python's BarrierProxy.
class BarrierProxy : public BaseProxy {
public:
    BarrierProxy() = default;
    explicit BarrierProxy(std::shared_ptr<detail::ProxyState> state) : BaseProxy(std::move(state)) {}
    int wait() const { return call_method<int>("wait", std::optional<double>()); }
    int wait(Timeout timeout) const { return call_method<int>("wait", std::optional<double>(timeout.count())); }
    void reset() const { call_method("reset"); }
    void abort() const { call_method("abort"); }
    int parties() const { return call_method<int>("parties"); }
    int n_waiting() const { return call_method<int>("n_waiting"); }
    bool broken() const { return call_method<bool>("broken"); }
};

// ---- how the built-in types are served -------------------------------------------------

template <class T>
struct served<std::vector<T>> {
    using S = std::vector<T>;
    using proxy = ListProxy<T>;
    static constexpr bool thread_safe = false;
    static detail::method_list<S> methods() {
        using detail::add_method;
        detail::method_list<S> m;
        add_method<S>(m, "append", [](S& s, T v) { s.push_back(std::move(v)); });
        add_method<S>(m, "extend", [](S& s, std::vector<T> v) { s.insert(s.end(), std::make_move_iterator(v.begin()), std::make_move_iterator(v.end())); });
        add_method<S>(m, "insert", [](S& s, std::int64_t i, T v) {
            const auto n = static_cast<std::int64_t>(s.size());
            const std::int64_t at = std::clamp<std::int64_t>(i < 0 ? i + n : i, 0, n);  // as Python's insert
            s.insert(s.begin() + at, std::move(v));
        });
        add_method<S>(m, "pop", [](S& s, std::int64_t i) {
            if (s.empty()) throw IndexError("pop from empty list");
            const auto at = detail::normalize_index(i, s.size(), "pop");
            T v = std::move(s[at]);
            s.erase(s.begin() + at);
            return v;
        });
        add_method<S>(m, "getitem", [](S& s, std::int64_t i) { return s[detail::normalize_index(i, s.size(), "list")]; });
        add_method<S>(m, "setitem", [](S& s, std::int64_t i, T v) { s[detail::normalize_index(i, s.size(), "list assignment")] = std::move(v); });
        add_method<S>(m, "delitem", [](S& s, std::int64_t i) { s.erase(s.begin() + detail::normalize_index(i, s.size(), "list assignment")); });
        add_method<S>(m, "len", [](S& s) { return std::uint64_t(s.size()); });
        add_method<S>(m, "copy", [](S& s) { return s; });
        add_method<S>(m, "clear", [](S& s) { s.clear(); });
        add_method<S>(m, "reverse", [](S& s) { std::reverse(s.begin(), s.end()); });
        if constexpr (std::equality_comparable<T>) {
            add_method<S>(m, "remove", [](S& s, T v) {
                auto it = std::find(s.begin(), s.end(), v);
                if (it == s.end()) throw ValueError("list.remove(x): x not in list");
                s.erase(it);
            });
            add_method<S>(m, "index", [](S& s, T v) {
                auto it = std::find(s.begin(), s.end(), v);
                if (it == s.end()) throw ValueError("list.index(x): x not in list");
                return std::int64_t(it - s.begin());
            });
            add_method<S>(m, "count", [](S& s, T v) { return std::int64_t(std::count(s.begin(), s.end(), v)); });
            add_method<S>(m, "contains", [](S& s, T v) { return std::find(s.begin(), s.end(), v) != s.end(); });
        }
        if constexpr (std::totally_ordered<T>) add_method<S>(m, "sort", [](S& s) { std::stable_sort(s.begin(), s.end()); });
        return m;
    }
};

namespace detail {
// dict methods for any map type M with K, V (std::map, std::unordered_map, the ordered one).
template <class M, class K, class V>
method_list<M> dict_methods() {
    method_list<M> m;
    auto lookup = [](M& s, const K& k) -> V* {
        if constexpr (requires { s.set(k, std::declval<V>()); }) {
            return s.find(k);
        } else {
            auto it = s.find(k);
            return it == s.end() ? nullptr : &it->second;
        }
    };
    auto assign = [](M& s, const K& k, V v) -> V& {
        if constexpr (requires { s.set(k, std::move(v)); }) {
            return s.set(k, std::move(v));
        } else {
            return s.insert_or_assign(k, std::move(v)).first->second;
        }
    };
    auto missing = [](const K& k) -> KeyError {
        if constexpr (requires(std::ostream& o) { o << k; }) {
            std::ostringstream text;
            text << "'" << k << "'";
            return KeyError(text.str());
        } else {
            return KeyError("the key is not in the dict");
        }
    };
    auto each = [](M& s, auto&& f) {
        if constexpr (requires { s.items(); }) {
            for (auto& kv : s.items()) f(kv.first, kv.second);
        } else {
            for (auto& kv : s) f(kv.first, kv.second);
        }
    };
    add_method<M>(m, "setitem", [assign](M& s, K k, V v) { assign(s, k, std::move(v)); });
    add_method<M>(m, "get", [lookup](M& s, K k) {
        V* v = lookup(s, k);
        return v ? std::optional<V>(*v) : std::nullopt;
    });
    add_method<M>(m, "getitem", [lookup, missing](M& s, K k) {
        if (V* v = lookup(s, k)) return *v;
        throw missing(k);
    });
    add_method<M>(m, "contains", [lookup](M& s, K k) { return lookup(s, k) != nullptr; });
    add_method<M>(m, "delitem", [missing](M& s, K k) {
        if (!s.erase(k)) throw missing(k);
    });
    add_method<M>(m, "pop", [lookup, missing](M& s, K k) {
        V* v = lookup(s, k);
        if (!v) throw missing(k);
        V out = std::move(*v);
        s.erase(k);
        return out;
    });
    add_method<M>(m, "setdefault", [lookup, assign](M& s, K k, V v) {
        if (V* existing = lookup(s, k)) return *existing;
        return assign(s, k, std::move(v));
    });
    add_method<M>(m, "keys", [each](M& s) {
        std::vector<K> out;
        each(s, [&](const K& k, const V&) { out.push_back(k); });
        return out;
    });
    add_method<M>(m, "values", [each](M& s) {
        std::vector<V> out;
        each(s, [&](const K&, const V& v) { out.push_back(v); });
        return out;
    });
    add_method<M>(m, "items", [each](M& s) {
        std::vector<std::pair<K, V>> out;
        each(s, [&](const K& k, const V& v) { out.emplace_back(k, v); });
        return out;
    });
    add_method<M>(m, "len", [](M& s) { return std::uint64_t(s.size()); });
    add_method<M>(m, "update", [assign](M& s, std::vector<std::pair<K, V>> items) {
        for (auto& [k, v] : items) assign(s, k, std::move(v));
    });
    add_method<M>(m, "clear", [](M& s) { s.clear(); });
    return m;
}
}  // namespace detail

template <class K, class V>
struct served<detail::InsertionOrderedMap<K, V>> {
    using proxy = DictProxy<K, V>;
    static constexpr bool thread_safe = false;
    static auto methods() { return detail::dict_methods<detail::InsertionOrderedMap<K, V>, K, V>(); }
};
template <class K, class V, class... Rest>
struct served<std::map<K, V, Rest...>> {
    using proxy = DictProxy<K, V>;
    static constexpr bool thread_safe = false;
    static auto methods() { return detail::dict_methods<std::map<K, V, Rest...>, K, V>(); }
};
template <class K, class V, class... Rest>
struct served<std::unordered_map<K, V, Rest...>> {
    using proxy = DictProxy<K, V>;
    static constexpr bool thread_safe = false;
    static auto methods() { return detail::dict_methods<std::unordered_map<K, V, Rest...>, K, V>(); }
};

template <>
struct served<detail::NamespaceState> {
    using S = detail::NamespaceState;
    using proxy = NamespaceProxy;
    static constexpr bool thread_safe = false;
    static detail::method_list<S> methods() {
        using detail::add_method;
        detail::method_list<S> m;
        add_method<S>(m, "setattr", [](S& s, std::string name, std::uint64_t type, std::string type_name, std::vector<std::byte> bytes) {
            s.attributes[name] = {type, std::move(type_name), std::move(bytes)};
        });
        add_method<S>(m, "getattr", [](S& s, std::string name, std::uint64_t type, std::string type_name) {
            auto it = s.attributes.find(name);
            if (it == s.attributes.end()) throw KeyError("'Namespace' object has no attribute '" + name + "'");
            if (it->second.type != type)
                throw ValueError("Namespace attribute '" + name + "' holds a " + it->second.type_name +
                                 ", not a " + type_name + "; read it with get<" + it->second.type_name + ">");
            return it->second.bytes;
        });
        add_method<S>(m, "hasattr", [](S& s, std::string name) { return s.attributes.count(name) > 0; });
        add_method<S>(m, "delattr", [](S& s, std::string name) {
            if (!s.attributes.erase(name)) throw KeyError("'Namespace' object has no attribute '" + name + "'");
        });
        add_method<S>(m, "names", [](S& s) {
            std::vector<std::string> out;
            for (auto& [k, v] : s.attributes) out.push_back(k);
            return out;
        });
        return m;
    }
};

template <class T>
struct served<detail::ValueBox<T>> {
    using S = detail::ValueBox<T>;
    using proxy = ValueProxy<T>;
    static constexpr bool thread_safe = false;
    static detail::method_list<S> methods() {
        detail::method_list<S> m;
        detail::add_method<S>(m, "get", [](S& s) { return s.value; });
        detail::add_method<S>(m, "set", [](S& s, T v) { s.value = std::move(v); });
        return m;
    }
};

// A shared-memory Value served by a remote server (the seeds' `done = Value('i', 0)`).
template <class T, class L>
struct served<Value<T, L>> {
    using S = Value<T, L>;
    using proxy = ValueProxy<T>;
    static constexpr bool thread_safe = true;  // its own lock guards it
    static detail::method_list<S> methods() {
        detail::method_list<S> m;
        detail::add_method<S>(m, "get", [](S& s) {
            std::lock_guard g(s.get_lock());
            return s.value();
        });
        detail::add_method<S>(m, "set", [](S& s, T v) {
            std::lock_guard g(s.get_lock());
            s.value() = v;
        });
        return m;
    }
};

namespace detail {
template <class S, class T>
method_list<S> array_methods(auto items_of) {
    method_list<S> m;
    add_method<S>(m, "getitem", [items_of](S& s, std::int64_t i) {
        auto items = items_of(s);
        return items[normalize_index(i, items.size(), "array")];
    });
    add_method<S>(m, "setitem", [items_of](S& s, std::int64_t i, T v) {
        auto items = items_of(s);
        items[normalize_index(i, items.size(), "array assignment")] = std::move(v);
    });
    add_method<S>(m, "len", [items_of](S& s) { return std::uint64_t(items_of(s).size()); });
    add_method<S>(m, "copy", [items_of](S& s) {
        auto items = items_of(s);
        return std::vector<T>(items.begin(), items.end());
    });
    return m;
}
}  // namespace detail

template <class T>
struct served<detail::FixedArray<T>> {
    using S = detail::FixedArray<T>;
    using proxy = ArrayProxy<T>;
    static constexpr bool thread_safe = false;
    static auto methods() {
        return detail::array_methods<S, T>([](S& s) { return std::span<T>(s.items); });
    }
};

template <class T, class L>
struct served<Array<T, L>> {
    using S = Array<T, L>;
    using proxy = ArrayProxy<T>;
    static constexpr bool thread_safe = false;  // element copies are taken one call at a time
    static auto methods() {
        return detail::array_methods<S, T>([](S& s) { return s.span(); });
    }
};

namespace detail {
template <class Q, class T>
method_list<Q> queue_methods() {
    method_list<Q> m;
    // Blocking put/get wait in slices, so the server thread of a caller that died stops
    // waiting instead of putting or taking an item for nobody; an item taken for a caller
    // that vanished before the answer reached it goes back into the queue.
    add_method<Q>(m, "put", [](Q& q, T item, bool block, std::optional<double> timeout) {
        if (!block) return q.put(item, false);
        const bool done = wait_in_slices(timeout, [&](Timeout slice) {
            try {
                q.put(item, slice);
                return true;
            } catch (const Full&) {
                return false;
            }
        });
        if (!done) q.put(item, false);  // the deadline passed: Full, with Queue's own message
    });
    add_method<Q>(m, "get", [](Q& q, bool block, std::optional<double> timeout) {
        if (!block) return q.get(false);
        std::optional<T> item;
        const bool done = wait_in_slices(timeout, [&](Timeout slice) {
            try {
                item.emplace(q.get(slice));
                return true;
            } catch (const Empty&) {
                return false;
            }
        });
        if (!done) return q.get(false);  // the deadline passed: Empty, with Queue's own message
        current_caller().undo = [&q, copy = *item] { q.put(copy, false); };
        return std::move(*item);
    });
    add_method<Q>(m, "qsize", [](Q& q) { return std::uint64_t(q.qsize()); });
    add_method<Q>(m, "empty", [](Q& q) { return q.empty(); });
    add_method<Q>(m, "full", [](Q& q) { return q.full(); });
    if constexpr (requires(Q& q) { q.task_done(); }) {
        add_method<Q>(m, "task_done", [](Q& q) { q.task_done(); });
        add_method<Q>(m, "join", [](Q& q, std::optional<double> timeout) {
            if (!timeout) {
                q.join();
                return true;
            }
            return q.join(Timeout(*timeout));
        });
    }
    return m;
}
}  // namespace detail

template <class T>
struct served<Queue<T>> {
    using proxy = QueueProxy<T>;
    static constexpr bool thread_safe = true;
    static auto methods() { return detail::queue_methods<Queue<T>, T>(); }
};
template <class T>
struct served<JoinableQueue<T>> {
    using proxy = QueueProxy<T>;
    static constexpr bool thread_safe = true;
    static auto methods() { return detail::queue_methods<JoinableQueue<T>, T>(); }
};

namespace detail {
template <class S>
struct served_acquirer {
    using proxy = AcquirerProxy;
    static constexpr bool thread_safe = true;
    static method_list<S> methods() {
        method_list<S> m;
        add_acquirer_methods<S>(m);
        return m;
    }
};
}  // namespace detail

template <>
struct served<Lock> : detail::served_acquirer<Lock> {};
template <>
struct served<RLock> : detail::served_acquirer<RLock> {};
template <>
struct served<Semaphore> : detail::served_acquirer<Semaphore> {};
template <>
struct served<BoundedSemaphore> : detail::served_acquirer<BoundedSemaphore> {};

template <>
struct served<Condition> {
    using S = Condition;
    using proxy = ConditionProxy;
    static constexpr bool thread_safe = true;
    static detail::method_list<S> methods() {
        detail::method_list<S> m;
        detail::add_acquirer_methods<S>(m);
        // Waits in slices (the lock is held between them, so no notify is missed); a
        // wake-up that cannot reach a vanished caller is passed on to another waiter.
        detail::add_method<S>(m, "wait", [](S& c, std::optional<double> timeout) {
            const bool woken = detail::wait_in_slices(timeout, [&](Timeout slice) { return c.wait(slice); });
            if (woken) detail::current_caller().undo = [&c] { c.notify(1); };
            return woken;
        });
        detail::add_method<S>(m, "notify", [](S& c, int n) { c.notify(n); });
        detail::add_method<S>(m, "notify_all", [](S& c) { c.notify_all(); });
        return m;
    }
};

template <>
struct served<Event> {
    using S = Event;
    using proxy = EventProxy;
    static constexpr bool thread_safe = true;
    static detail::method_list<S> methods() {
        detail::method_list<S> m;
        detail::add_method<S>(m, "set", [](S& e) { e.set(); });
        detail::add_method<S>(m, "clear", [](S& e) { e.clear(); });
        detail::add_method<S>(m, "is_set", [](S& e) { return e.is_set(); });
        detail::add_method<S>(m, "wait", [](S& e, std::optional<double> timeout) {
            return detail::wait_in_slices(timeout, [&](Timeout slice) { return e.wait(slice); });
        });
        return m;
    }
};

template <>
struct served<Barrier> {
    using S = Barrier;
    using proxy = BarrierProxy;
    static constexpr bool thread_safe = true;
    // Python's Barrier(parties, action=None, timeout=None); an action cannot be sent.
    static std::shared_ptr<S> make(int parties, std::optional<double> timeout) {
        return std::make_shared<S>(parties, std::function<void()>{}, detail::to_timeout(timeout));
    }
    static detail::method_list<S> methods() {
        detail::method_list<S> m;
        detail::add_method<S>(m, "wait", [](S& b, std::optional<double> timeout) {
            return timeout ? b.wait(Timeout(*timeout)) : b.wait();
        });
        detail::add_method<S>(m, "reset", [](S& b) { b.reset(); });
        detail::add_method<S>(m, "abort", [](S& b) { b.abort(); });
        detail::add_method<S>(m, "parties", [](S& b) { return b.parties(); });
        detail::add_method<S>(m, "n_waiting", [](S& b) { return b.n_waiting(); });
        detail::add_method<S>(m, "broken", [](S& b) { return b.broken(); });
        return m;
    }
};


// ---- Pool(): a pool in the server process ---------------------------------------------

namespace detail {

// The pool a SyncManager serves, with the results of its async calls, kept until the
// client's AsyncResultProxy lets them go.
struct ServedPool {
    explicit ServedPool(std::uint64_t processes)
        : pool(processes == 0 ? PoolOptions{} : PoolOptions{.processes = static_cast<std::size_t>(processes)}) {}

    struct Pending {
        std::function<bool(std::optional<double>)> wait;  // true once ready
        std::function<std::vector<std::byte>()> value;    // encoded; rethrows the task's exception
        std::function<bool()> ready;
        std::function<bool()> successful;
    };

    template <class R>
    std::uint64_t keep(AsyncResult<R> result) {
        auto p = std::make_shared<Pending>();
        p->wait = [result](std::optional<double> t) { return t ? result.wait(Timeout(*t)) : (result.wait(), true); };
        p->value = [result] {
            if constexpr (std::is_void_v<R>) {
                result.get();
                return std::vector<std::byte>();
            } else {
                return encode_values(result.get());
            }
        };
        p->ready = [result] { return result.ready(); };
        p->successful = [result] { return result.successful(); };
        std::lock_guard lock(mutex);
        pending.emplace(next, std::move(p));
        return next++;
    }

    std::shared_ptr<Pending> find(std::uint64_t id) {
        std::lock_guard lock(mutex);
        auto it = pending.find(id);
        if (it == pending.end()) throw KeyError("manager Pool: no pending result " + std::to_string(id));
        return it->second;
    }

    multiprocessing::Pool pool;
    std::mutex mutex;
    std::map<std::uint64_t, std::shared_ptr<Pending>> pending;
    std::uint64_t next = 1;
};

// The server runs a pool call through a function of the client's program, named by its
// address, on a callable that is itself code addresses (detail/callable.hpp). Bytes from
// a socket must never become code to call, so the server takes them only from a
// connection that proved it is a process of the program that started it (AF_UNIX, our
// uid, and the server's code secret: ServerCore::set_code_secret); any other caller,
// whatever key it holds, gets AuthenticationError. This marker's address then checks
// that the image is the same (a connect()ed program that shares the secret only by
// being forked from the server's program is; anything else is refused, not run).
inline void same_image_marker() {}

using PoolRunner = std::vector<std::byte> (*)(ServedPool&, ByteReader&);

// The runners below decode a callable, which is code addresses (get_callable): they are
// reached only through "run", after its check that the caller is one of our own processes.
template <class Fn, class... A>
std::vector<std::byte> run_apply(ServedPool& served, ByteReader& in) {
    Fn fn = get_callable<Fn>(in);
    std::tuple<A...> args{get<A>(in)...};
    return std::apply(
        [&](A&... a) {
            using R = decltype(served.pool.apply(fn, a...));
            if constexpr (std::is_void_v<R>) {
                served.pool.apply(fn, a...);
                return std::vector<std::byte>();
            } else {
                return encode_values(served.pool.apply(fn, a...));
            }
        },
        args);
}

template <class Fn, class... A>
std::vector<std::byte> run_apply_async(ServedPool& served, ByteReader& in) {
    Fn fn = get_callable<Fn>(in);
    std::tuple<A...> args{get<A>(in)...};
    const std::uint64_t id =
        std::apply([&](A&... a) { return served.keep(served.pool.apply_async(fn, a...)); }, args);
    return encode_values(id);
}

template <bool Star, bool Async, class Fn, class T>
std::vector<std::byte> run_map(ServedPool& served, ByteReader& in) {
    Fn fn = get_callable<Fn>(in);
    auto items = get<std::vector<T>>(in);
    auto chunksize = get<std::optional<std::uint64_t>>(in);
    const MapOptions options{.chunksize = chunksize ? std::optional<std::size_t>(*chunksize) : std::nullopt};
    if constexpr (Async && Star) {
        return encode_values(served.keep(served.pool.starmap_async(fn, items, {.chunksize = options.chunksize})));
    } else if constexpr (Async) {
        return encode_values(served.keep(served.pool.map_async(fn, items, {.chunksize = options.chunksize})));
    } else if constexpr (Star) {
        return encode_values(served.pool.starmap(fn, items, options));
    } else {
        return encode_values(served.pool.map(fn, items, options));
    }
}

}  // namespace detail

class PoolProxy;

template <>
struct served<detail::ServedPool> {
    using S = detail::ServedPool;
    using proxy = PoolProxy;
    static constexpr bool thread_safe = true;  // the pool is; `pending` has its own mutex
    static detail::method_list<S> methods() {
        using detail::add_method;
        detail::method_list<S> m;
        add_method<S>(m, "run", [](S& s, std::uint64_t marker, std::uint64_t runner, std::vector<std::byte> payload) {
            if (!detail::current_caller().may_run_code)
                throw AuthenticationError(
                    "manager Pool: this connection may not send functions to run: only processes of the program "
                    "that started the manager (the owner, its children, or a process forked from the server's "
                    "program that connect()s over its unix socket) may; a key alone is not enough, as code "
                    "addresses from a socket would let any key holder run any code in the server");
            if (marker != detail::address_of_code(&detail::same_image_marker))
                throw ValueError("manager Pool: functions can be sent only to a manager this program started "
                                 "itself (Manager() or start()), which runs the same code");
            detail::ByteReader in(payload);
            return detail::code_at<std::vector<std::byte>(S&, detail::ByteReader&)>(runner)(s, in);
        });
        add_method<S>(m, "result", [](S& s, std::uint64_t id, std::optional<double> timeout) {
            auto p = s.find(id);
            if (!p->wait(timeout))
                throw TimeoutError("AsyncResult.get: the result was not ready within " + std::to_string(*timeout) + " s");
            return p->value();
        });
        add_method<S>(m, "wait", [](S& s, std::uint64_t id, std::optional<double> timeout) { return s.find(id)->wait(timeout); });
        add_method<S>(m, "ready", [](S& s, std::uint64_t id) { return s.find(id)->ready(); });
        add_method<S>(m, "successful", [](S& s, std::uint64_t id) { return s.find(id)->successful(); });
        add_method<S>(m, "forget", [](S& s, std::uint64_t id) {
            std::lock_guard lock(s.mutex);
            s.pending.erase(id);
        });
        add_method<S>(m, "close", [](S& s) { s.pool.close(); });
        add_method<S>(m, "terminate", [](S& s) { s.pool.terminate(); });
        add_method<S>(m, "join", [](S& s, std::optional<double> timeout) {
            if (!timeout) {
                s.pool.join();
                return true;
            }
            return s.pool.join(Timeout(*timeout));
        });
        return m;
    }
};

// The result of a manager Pool's apply_async/map_async: Python's AsyncResult proxy.
template <class R>
class AsyncResultProxy {
public:
    R get() const { return fetch(std::nullopt); }
    R get(Timeout timeout) const { return fetch(timeout.count()); }
    void wait() const { state_->pool.template call_method<bool>("wait", state_->id, std::optional<double>()); }
    bool wait(Timeout timeout) const {
        return state_->pool.template call_method<bool>("wait", state_->id, std::optional<double>(timeout.count()));
    }
    bool ready() const { return state_->pool.template call_method<bool>("ready", state_->id); }
    bool successful() const { return state_->pool.template call_method<bool>("successful", state_->id); }

private:
    friend class PoolProxy;
    struct State;
    explicit AsyncResultProxy(std::shared_ptr<State> state) : state_(std::move(state)) {}

    R fetch(std::optional<double> timeout) const {
        auto bytes = state_->pool.template call_method<std::vector<std::byte>>("result", state_->id, timeout);
        if constexpr (!std::is_void_v<R>) {
            detail::ByteReader r(bytes);
            return detail::get<R>(r);
        }
    }

    std::shared_ptr<State> state_;
};

// Python's PoolProxy: a Pool running in the manager's server process. Functions travel
// as they do to a Pool (function pointers, lambdas with trivially copyable captures),
// which is why only a manager this program started can run them.
class PoolProxy : public BaseProxy {
public:
    PoolProxy() = default;
    explicit PoolProxy(std::shared_ptr<detail::ProxyState> state) : BaseProxy(std::move(state)) {}

    template <class F, class... A>
    auto apply(F&& f, A&&... args) const {
        using Fn = detail::stored_callable_t<F>;
        using R = detail::apply_result_t<Fn, detail::stored_arg_t<A>...>;
        auto bytes = run(&detail::run_apply<Fn, detail::stored_arg_t<A>...>, Fn(std::forward<F>(f)),
                         detail::stored_arg_t<A>(std::forward<A>(args))...);
        if constexpr (!std::is_void_v<R>) {
            detail::ByteReader r(bytes);
            return detail::get<R>(r);
        }
    }

    template <class F, class... A>
    auto apply_async(F&& f, A&&... args) const {
        using Fn = detail::stored_callable_t<F>;
        using R = detail::apply_result_t<Fn, detail::stored_arg_t<A>...>;
        auto bytes = run(&detail::run_apply_async<Fn, detail::stored_arg_t<A>...>, Fn(std::forward<F>(f)),
                         detail::stored_arg_t<A>(std::forward<A>(args))...);
        return async_result<R>(bytes);
    }

    template <class F, std::ranges::input_range Range>
    auto map(F&& f, const Range& items, MapOptions options = {}) const {
        return run_map<false, false>(std::forward<F>(f), items, options);
    }
    template <class F, std::ranges::input_range Range>
    auto map_async(F&& f, const Range& items, MapOptions options = {}) const {
        return run_map<false, true>(std::forward<F>(f), items, options);
    }
    template <class F, std::ranges::input_range Range>
    auto starmap(F&& f, const Range& items, MapOptions options = {}) const {
        return run_map<true, false>(std::forward<F>(f), items, options);
    }
    template <class F, std::ranges::input_range Range>
    auto starmap_async(F&& f, const Range& items, MapOptions options = {}) const {
        return run_map<true, true>(std::forward<F>(f), items, options);
    }

    void close() const { call_method("close"); }
    void terminate() const { call_method("terminate"); }
    void join() const { call_method<bool>("join", std::optional<double>()); }
    bool join(Timeout timeout) const { return call_method<bool>("join", std::optional<double>(timeout.count())); }

private:
    template <class R>
    friend class AsyncResultProxy;

    template <bool Star, bool Async, class F, class Range>
    auto run_map(F&& f, const Range& items, MapOptions options) const {
        using Fn = detail::stored_callable_t<F>;
        using T = std::ranges::range_value_t<Range>;
        const std::vector<T> copy(std::ranges::begin(items), std::ranges::end(items));
        const std::optional<std::uint64_t> chunksize =
            options.chunksize ? std::optional<std::uint64_t>(*options.chunksize) : std::nullopt;
        // What Pool::map or Pool::starmap returns (only the one asked for is instantiated).
        using R = typename decltype([] {
            if constexpr (Star) {
                return std::type_identity<decltype(std::declval<Pool&>().starmap(std::declval<Fn&>(), std::declval<std::vector<T>&>()))>{};
            } else {
                return std::type_identity<decltype(std::declval<Pool&>().map(std::declval<Fn&>(), std::declval<std::vector<T>&>()))>{};
            }
        }())::type;
        auto bytes = run(&detail::run_map<Star, Async, Fn, T>, Fn(std::forward<F>(f)), copy, chunksize);
        if constexpr (Async) {
            return async_result<R>(bytes);
        } else {
            detail::ByteReader r(bytes);
            return detail::get<R>(r);
        }
    }

    template <class R>
    AsyncResultProxy<R> async_result(const std::vector<std::byte>& bytes) const {
        detail::ByteReader r(bytes);
        const auto id = detail::get<std::uint64_t>(r);
        return AsyncResultProxy<R>(std::make_shared<typename AsyncResultProxy<R>::State>(*this, id));
    }

    // Encodes the callable and the arguments, and has the server run `runner` on them.
    template <class Fn, class... A>
    std::vector<std::byte> run(detail::PoolRunner runner, const Fn& fn, const A&... args) const {
        detail::require_transferable_callable<Fn>();
        (detail::require_transferable<A>(), ...);
        detail::ByteWriter counter;
        detail::put_callable(counter, fn);
        (detail::put(counter, args), ...);
        std::vector<std::byte> payload(counter.written());
        detail::ByteWriter w(payload.data());
        detail::put_callable(w, fn);
        (detail::put(w, args), ...);
        return call_method<std::vector<std::byte>>("run", std::uint64_t(detail::address_of_code(&detail::same_image_marker)),
                                                   std::uint64_t(detail::address_of_code(runner)), payload);
    }
};

template <class R>
struct AsyncResultProxy<R>::State {
    State(PoolProxy p, std::uint64_t i) : pool(std::move(p)), id(i) {}
    ~State() {
        try {
            pool.template call_method<void>("forget", id);
        } catch (...) {
        }
    }
    PoolProxy pool;
    std::uint64_t id;
};

// ---- exposing a user's own class -------------------------------------------------------

template <class F>
struct NamedMethod {
    std::string name;
    F fn;
};

// One exposed method: a member function pointer (`&Counter::add`) or a callable whose
// first parameter is the object (`[](Counter& c, int n) { ... }`).
template <class F>
NamedMethod<F> method(std::string name, F fn) {
    return {std::move(name), std::move(fn)};
}

// Python's register(typeid, callable, exposed=(...)): the methods of S a proxy may call.
// By default the server runs one call at a time on each object (as Python's GIL makes
// it); `thread_safe()` lets calls from different clients run at once, for a class that
// locks for itself or whose methods block waiting for one another.
template <class S>
class Exposed {
public:
    explicit Exposed(std::vector<detail::Method<S>> methods) : methods_(std::move(methods)) {}
    Exposed& thread_safe(bool yes = true) {
        thread_safe_ = yes;
        return *this;
    }
    const std::vector<detail::Method<S>>& methods() const noexcept { return methods_; }
    bool is_thread_safe() const noexcept { return thread_safe_; }

    // How a server started by spawn or forkserver makes these methods again: the address
    // of a function that decodes them from `encoded` (0 when one cannot travel).
    struct Portable {
        detail::code_address rebuild = 0;
        std::vector<std::byte> encoded;
    };
    const Portable& portable() const noexcept { return portable_; }
    void set_portable(Portable p) { portable_ = std::move(p); }

private:
    std::vector<detail::Method<S>> methods_;
    bool thread_safe_ = false;
    Portable portable_;
};

namespace detail {

// A method that can be made again in a fresh process: a member function pointer, or a
// callable that travels as a task's does.
template <class F>
concept portable_method = std::is_member_function_pointer_v<F> || transferable_callable<F>;

template <class F>
void put_method(ByteWriter& w, const F& fn) {
    if constexpr (std::is_member_function_pointer_v<F>)
        put_member_function(w, fn);
    else
        put_callable(w, fn);
}
template <class F>
F get_method(ByteReader& r) {
    if constexpr (std::is_member_function_pointer_v<F>)
        return get_member_function<F>(r);
    else
        return get_callable<F>(r);
}

template <class S, class... F>
Exposed<S> rebuild_exposed(ByteReader& in) {
    // Braced: each name is read before its method, left to right.
    return Exposed<S>(std::vector<Method<S>>{[&] {
        auto name = get<std::string>(in);
        return method_of<S>(std::move(name), get_method<F>(in));
    }()...});
}

}  // namespace detail

template <class S, class... F>
Exposed<S> exposed(NamedMethod<F>... methods) {
    typename Exposed<S>::Portable portable;
    if constexpr ((detail::portable_method<F> && ...)) {
        portable.rebuild = detail::address_of_code(&detail::rebuild_exposed<S, F...>);
        portable.encoded = detail::encode_with([&](detail::ByteWriter& w) {
            ((detail::put(w, methods.name), detail::put_method(w, methods.fn)), ...);
        });
    }
    Exposed<S> result(std::vector<detail::Method<S>>{detail::method_of<S>(std::move(methods.name), methods.fn)...});
    result.set_portable(std::move(portable));
    return result;
}

namespace detail {

template <class S>
std::shared_ptr<const method_list<S>> builtin_methods() {
    static const auto methods = std::make_shared<const method_list<S>>(served<S>::methods());
    return methods;
}

// The served object for `object`, with the methods a client may call.
template <class S>
std::shared_ptr<ServedObject> serve(std::shared_ptr<S> object, std::shared_ptr<const method_list<S>> methods,
                                    bool thread_safe) {
    return std::make_shared<ServedWith<S>>(std::move(object), std::move(methods), type_name<proxy_t<S>>(),
                                           !thread_safe);
}

template <class S>
std::shared_ptr<ServedObject> serve_builtin(std::shared_ptr<S> object) {
    return serve<S>(std::move(object), builtin_methods<S>(), served<S>::thread_safe);
}

template <class... A, class F>
auto decode_and_apply(ByteReader& r, F& f) {
    // Braced initialization evaluates left to right: the arguments are read in order.
    std::tuple<A...> args{get<A>(r)...};
    return std::apply(f, std::move(args));
}

// A registration for `factory(A...)`, which makes (or finds) the S to serve.
template <class S, class... A, class Factory>
Registration object_registration(Factory factory, std::shared_ptr<const method_list<S>> methods, bool thread_safe) {
    Registration r;
    r.proxy_kind = std::string(type_name<proxy_t<S>>());
    r.signature = signature_of<A...>();
    r.signature_text = std::string(type_name<argument_tuple<A...>>());
    r.create = [factory = std::move(factory), methods = std::move(methods), thread_safe](ByteReader& in) mutable {
        std::shared_ptr<S> object = decode_and_apply<A...>(in, factory);
        return serve<S>(std::move(object), methods, thread_safe);
    };
    return r;
}

template <class R, class... A, class F>
Registration function_registration(F fn) {
    Registration r;
    r.signature = signature_of<A...>();
    r.signature_text = std::string(type_name<argument_tuple<A...>>());
    r.call = [fn = std::move(fn)](ByteReader& in, Reply& out) mutable {
        if constexpr (std::is_void_v<R>) {
            decode_and_apply<A...>(in, fn);
        } else {
            out.value(decode_and_apply<A...>(in, fn));
        }
    };
    return r;
}

// What a registered callable returns, and how its result is served.
template <class R>
struct returned {
    using object = std::remove_cvref_t<R>;
    static constexpr bool by_reference = std::is_lvalue_reference_v<R>;
    static constexpr bool shared = false;
};
template <class S>
struct returned<std::shared_ptr<S>> {
    using object = S;
    static constexpr bool by_reference = false;
    static constexpr bool shared = true;
};

template <class R, class Value>
std::shared_ptr<typename returned<R>::object> hold(Value&& v) {
    using S = typename returned<R>::object;
    if constexpr (returned<R>::shared) {
        return std::forward<Value>(v);
    } else if constexpr (returned<R>::by_reference) {
        // Served in place: the program that registered it owns it.
        return std::shared_ptr<S>(std::shared_ptr<void>(), std::addressof(v));
    } else {
        return std::make_shared<S>(std::forward<Value>(v));
    }
}

// SyncManager's built-in types: registered at static initialization in every program
// that asks for one, so a server forked or started from the program knows them.
template <class S, class... A>
struct Builtin {
    static std::string key() {
        return std::string(builtin_prefix) + std::string(type_name<S>()) + std::string(type_name<argument_tuple<A...>>());
    }
    static std::shared_ptr<S> make(A... args) {
        if constexpr (requires { served<S>::make(std::move(args)...); }) {
            return served<S>::make(std::move(args)...);
        } else if constexpr (std::is_constructible_v<S, A...>) {
            return std::make_shared<S>(std::move(args)...);
        } else {
            return std::shared_ptr<S>(new S{std::move(args)...});
        }
    }
    static inline const bool registered = BuiltinTypes::instance().add(
        key(), object_registration<S, A...>(&make, builtin_methods<S>(), served<S>::thread_safe));
};

}  // namespace detail

// ---- the manager ------------------------------------------------------------------------

struct ManagerOptions {
    // Where the server listens, or where to connect. Empty: a fresh abstract unix socket
    // (for a manager this program starts).
    Address address{};
    // The shared secret. Empty: the program's own key (Python's
    // current_process().authkey): 32 random bytes drawn once at start, which every
    // child of the program inherits, so a child can connect() to its parent's manager,
    // and a proxy that reaches a process in a message finds its server's key.
    std::string authkey{};
    // Connecting and the handshake give up after this long.
    Timeout connect_timeout = Timeout(20.0);
    // How start() starts the server process (Python's ctx argument); unset: the start
    // method in effect (set_start_method). Under spawn and forkserver the server is a
    // fresh process that repeats this manager's registrations, so their callables (and
    // exposed methods) must travel as a task's do: function pointers, member function
    // pointers, lambdas with trivially copyable captures.
    std::optional<Context> context = {};
    // Limits of a server this manager starts or serves (get_server()). Connections
    // open at once, authenticated or not:
    std::size_t max_connections = 1024;
    // of which still in the handshake (a peer needs no key to open one; when full, the
    // oldest is dropped for a newcomer):
    std::size_t max_handshaking = 64;
    // On a unix socket (the default address is an abstract one), peers of another uid
    // are refused before the handshake; true lets them try the key. TCP cannot tell
    // users apart: there, only the key does.
    bool allow_other_users = false;
};

class BaseManager;

// Python's managers.Server: serves a manager's registered objects from this process.
// A handle, as a Python object is: `auto server = manager.get_server();` copies or moves
// it, and every copy serves and stops the same server.
class Server {
public:
    // Serves until a client asks for shutdown (or stop() from another thread), then returns.
    void serve_forever() { loop("serve_forever").serve_forever(); }
    void stop() noexcept {
        if (loop_) loop_->stop();
    }
    Address address() const { return loop("address").address(); }

private:
    friend class BaseManager;
    Server(std::shared_ptr<detail::ServerCore> core, detail::net::ListeningSocket listener, std::string authkey,
           detail::ServerLimits limits)
        : loop_(std::make_shared<detail::ServerLoop>(std::move(core), std::move(listener), std::move(authkey),
                                                     limits)) {}
    detail::ServerLoop& loop(const char* op) const {
        if (!loop_) throw ValueError(std::string("Server.") + op + ": this Server was moved from");
        return *loop_;
    }
    std::shared_ptr<detail::ServerLoop> loop_;
};

class BaseManager {
public:
    explicit BaseManager(ManagerOptions options = {}) : BaseManager(std::move(options), false) {}

    // A moved-from manager owns nothing (its destructor shuts nothing down).
    BaseManager(BaseManager&& other) noexcept { take(other); }
    BaseManager& operator=(BaseManager&& other) noexcept {
        if (this != &other) {
            try {
                if (started_ && owner_ == detail::current_pid()) shutdown();
            } catch (...) {
            }
            take(other);
        }
        return *this;
    }
    BaseManager(const BaseManager&) = delete;
    BaseManager& operator=(const BaseManager&) = delete;

    // Shuts down a server this manager started (as leaving Python's `with` block does).
    virtual ~BaseManager() {
        try {
            if (started_ && owner_ == detail::current_pid()) shutdown();
        } catch (...) {
        }
    }

    // ---- the server side: what this manager serves -------------------------------------

    // Python's register(typeid, callable). What `callable(args...)` returns decides:
    //   * a reference (T&) or std::shared_ptr<T> to a type with a built-in proxy
    //     (Queue, Lock, Value, std::vector, std::map, ...): clients get a proxy to it;
    //   * such a type by value: each get() serves a new one;
    //   * anything else: a function; clients call<R(Args...)>() it and get the result.
    template <class F>
    void register_(std::string name, F callable) {
        using traits = detail::callable_traits<std::decay_t<F>>;
        using R = typename traits::result;
        using S = typename detail::returned<R>::object;
        note_registration(name, callable);
        if constexpr (has_builtin_proxy<S>) {
            register_object<S, R>(std::move(name), std::move(callable), detail::builtin_methods<S>(),
                                  served<S>::thread_safe, static_cast<typename traits::arguments*>(nullptr));
        } else {
            register_function<R>(std::move(name), std::move(callable), static_cast<typename traits::arguments*>(nullptr));
        }
    }

    // Python's register(typeid, callable, exposed=...): a user type and the methods its
    // proxy (Proxy<S>) may call.
    template <class F, class S>
    void register_(std::string name, F callable, Exposed<S> exposed) {
        using traits = detail::callable_traits<std::decay_t<F>>;
        using R = typename traits::result;
        static_assert(std::is_same_v<typename detail::returned<R>::object, S>,
                      "register_(name, callable, exposed<S>(...)): the callable must return an S, an S& or a "
                      "std::shared_ptr<S>");
        note_registration(name, callable, exposed);
        register_object<S, R>(std::move(name), std::move(callable),
                              std::make_shared<const detail::method_list<S>>(exposed.methods()),
                              exposed.is_thread_safe(), static_cast<typename traits::arguments*>(nullptr));
    }

    // ---- the client side ---------------------------------------------------------------

    // Python's register(typeid) in a client: declares that the server has `name`, an
    // object served as T (get<T>(name)) or, with T a function type R(Args...), a function
    // (call<R(Args...)>(name, args...)).
    template <class T>
    void register_(std::string name) {
        if constexpr (std::is_function_v<T>) {
            declared_[std::move(name)] = "function";
        } else {
            declared_[std::move(name)] = std::string(detail::type_name<proxy_t<T>>());
        }
    }

    // Binds the address and returns the server, to serve from this process.
    Server& get_server() {
        if (client_) throw ValueError("BaseManager.get_server: this manager already started or connected");
        if (!server_) {
            const Address where = listen_address();
            detail::net::ListeningSocket listening(where);
            const std::string secret = detail::auth::random_authkey();
            core_->set_code_secret(secret);
            local_code_secret_for(listening.address(), secret);
            server_.reset(new Server(core_, std::move(listening), authkey_for_server(), server_limits()));
        }
        return *server_;
    }

    // Starts the server in a child process and connects to it.
    void start() {
        if (client_ || server_) throw ValueError("BaseManager.start: this manager already started or connected");
        start_server_process();
        started_ = true;
        owner_ = detail::current_pid();
    }

    // Connects to a running server (AuthenticationError on a wrong key).
    void connect() {
        if (client_) throw ValueError("BaseManager.connect: already connected");
        if (options_.address == Address{})
            throw ValueError("BaseManager.connect: give the server's address in ManagerOptions.address");
        if (options_.authkey.empty()) options_.authkey = detail::process_state().authkey;
        auto client = std::make_shared<detail::ClientCore>(options_.address, options_.authkey, options_.connect_timeout,
                                                           local_code_secret_for(options_.address));
        client->request(detail::Op::ping, 0, {}, nullptr);
        detail::manager::Clients::instance().add(client);
        client_ = std::move(client);
    }

    // A proxy to the object registered as `name` (args go to its callable).
    template <class T, class... A>
    proxy_t<T> get(const std::string& name, const A&... args) {
        check_declared(name, std::string(detail::type_name<proxy_t<T>>()), "get");
        return create<T>(name, detail::as_sent(args)...);
    }

    // Calls the function registered as `name`.
    template <class Sig, class... A>
    auto call(const std::string& name, A&&... args) {
        static_assert(std::is_function_v<Sig>, "BaseManager::call<R(Args...)>: give the function's type");
        check_declared(name, "function", "call");
        return call_function(name, static_cast<Sig*>(nullptr), std::forward<A>(args)...);
    }

    // Stops the server this manager started, and waits for it to exit.
    void shutdown() {
        if (!started_) {
            client_.reset();
            return;
        }
        started_ = false;
        if (owner_ != detail::current_pid()) return;
        try {
            client()->request(detail::Op::shutdown, 0, {}, nullptr);
        } catch (...) {
            // Already gone: nothing to ask.
        }
        client_.reset();
        if (server_process_) {
            if (!server_process_->wait(1.0)) {
                server_process_->signal(SIGTERM);
                if (!server_process_->wait(1.0)) server_process_->signal(SIGKILL);
            }
            server_process_->wait(std::nullopt);
            server_process_.reset();
        }
    }

    // The server's address: after start() or get_server(), the bound one.
    Address address() const {
        if (client_) return client_->address();
        if (server_) return server_->address();
        return options_.address;
    }
    const std::string& authkey() const noexcept { return options_.authkey; }
    // The server process (after start()).
    std::optional<pid_t> server_pid() const {
        return server_process_ ? std::optional<pid_t>(server_process_->pid()) : std::nullopt;
    }

protected:
    BaseManager(ManagerOptions options, bool serve_builtins)
        : options_(std::move(options)),
          core_(std::make_shared<detail::ServerCore>(serve_builtins)),
          serve_builtins_(serve_builtins) {}

    const std::shared_ptr<detail::ClientCore>& client() const {
        if (!client_)
            throw ValueError("manager: not connected: call start() or connect() first (or it was shut down)");
        return client_;
    }

    // A new object of a built-in type on the server (SyncManager's factories).
    template <class S, class... A>
    proxy_t<S> create_builtin(const A&... args) {
        (void)detail::Builtin<S, A...>::registered;  // instantiates the registration
        return create<S>(detail::Builtin<S, A...>::key(), args...);
    }

private:
    // What a server started by spawn or forkserver repeats: each register_(name, callable)
    // as the address of a function that redoes it, and the name and callable encoded.
    // These are code addresses, and the server calls them: they reach it only through
    // the spawn bootstrap (a pipe from the owner that only that child can read, see
    // spawned_server_main), never from a socket.
    using Replay = void(BaseManager&, detail::ByteReader&);
    template <class F>
    void note_registration(const std::string& name, const F& callable) {
        using Fn = std::decay_t<F>;
        if constexpr (detail::transferable_callable<Fn>) {
            replays_.push_back(detail::address_of_code(&replay_registration<Fn>));
            replay_payloads_.push_back(detail::encode_with([&](detail::ByteWriter& w) {
                detail::put(w, name);
                detail::put_callable(w, callable);
            }));
        } else {
            note_unportable(name);
        }
    }
    void note_unportable(const std::string& name) {
        if (unportable_.empty())
            unportable_ = "'" + name + "' (its callable or an exposed method is not a function or member function "
                          "pointer, a lambda with trivially copyable captures or a serializable function object)";
    }
    template <class F, class S>
    void note_registration(const std::string& name, const F& callable, const Exposed<S>& exposed) {
        using Fn = std::decay_t<F>;
        if constexpr (detail::transferable_callable<Fn>) {
            if (exposed.portable().rebuild != 0) {
                replays_.push_back(detail::address_of_code(&replay_exposed_registration<Fn, S>));
                replay_payloads_.push_back(detail::encode_with([&](detail::ByteWriter& w) {
                    detail::put(w, name);
                    detail::put_callable(w, callable);
                    detail::put(w, exposed.is_thread_safe());
                    detail::put(w, exposed.portable().rebuild);
                    detail::put(w, exposed.portable().encoded);
                }));
                return;
            }
        }
        note_unportable(name);
    }
    template <class Fn>
    static void replay_registration(BaseManager& manager, detail::ByteReader& in) {
        auto name = detail::get<std::string>(in);
        manager.register_(std::move(name), detail::get_callable<Fn>(in));
    }
    template <class Fn, class S>
    static void replay_exposed_registration(BaseManager& manager, detail::ByteReader& in) {
        auto name = detail::get<std::string>(in);
        auto callable = detail::get_callable<Fn>(in);
        const bool thread_safe = detail::get<bool>(in);
        const auto rebuild = detail::get<detail::code_address>(in);
        const auto encoded = detail::get<std::vector<std::byte>>(in);
        detail::ByteReader methods(encoded);
        auto exposed = detail::code_at<Exposed<S>(detail::ByteReader&)>(rebuild)(methods);
        exposed.thread_safe(thread_safe);
        manager.register_(std::move(name), std::move(callable), std::move(exposed));
    }
    static int spawned_server_main(detail::ByteReader& in);
    static int serve_in_child(const std::shared_ptr<detail::ServerCore>& core, const Address& where,
                              const std::string& key, const detail::ServerLimits& limits, pid_t owner, int ready_fd,
                              bool close_inherited, bool forked);

    template <class S, class R, class F, class... A>
    void register_object(std::string name, F callable, std::shared_ptr<const detail::method_list<S>> methods,
                         bool thread_safe, std::tuple<A...>*) {
        auto factory = [callable = std::move(callable)](std::decay_t<A>... args) mutable {
            return detail::hold<R>(callable(std::move(args)...));
        };
        declared_[name] = std::string(detail::type_name<proxy_t<S>>());
        core_->add(std::move(name), detail::object_registration<S, std::decay_t<A>...>(std::move(factory),
                                                                                        std::move(methods), thread_safe));
    }

    template <class R, class F, class... A>
    void register_function(std::string name, F callable, std::tuple<A...>*) {
        (detail::require_transferable<std::decay_t<A>>(), ...);
        if constexpr (!std::is_void_v<R>) detail::require_transferable<std::decay_t<R>>();
        declared_[name] = "function";
        core_->add(std::move(name), detail::function_registration<std::decay_t<R>, std::decay_t<A>...>(std::move(callable)));
    }

    template <class S, class... A>
    proxy_t<S> create(std::string_view name, const A&... args) {
        std::uint64_t id = 0;
        std::string kind;
        client()->request(detail::Op::create, 0, name, [&](detail::ByteReader& r) {
            id = detail::get<std::uint64_t>(r);
            kind = detail::get<std::string>(r);
        }, args...);
        auto state = std::make_shared<detail::ProxyState>(client_, id);
        const std::string_view wanted = detail::type_name<proxy_t<S>>();
        if (kind != wanted)
            throw ValueError("manager: '" + std::string(name) + "' is served as " + kind + ", not as " +
                             std::string(wanted) + "; ask for the type the server registered");
        return proxy_t<S>(std::move(state));
    }

    template <class R, class... P, class... A>
    R call_function(const std::string& name, R (*)(P...), A&&... args) {
        static_assert(sizeof...(P) == sizeof...(A), "BaseManager::call: wrong number of arguments");
        if constexpr (std::is_void_v<R>) {
            client()->request(detail::Op::call_function, 0, name, nullptr,
                              static_cast<const std::decay_t<P>&>(std::decay_t<P>(std::forward<A>(args)))...);
        } else {
            std::optional<std::decay_t<R>> result;
            client()->request(detail::Op::call_function, 0, name,
                              [&](detail::ByteReader& r) { result.emplace(detail::get<std::decay_t<R>>(r)); },
                              static_cast<const std::decay_t<P>&>(std::decay_t<P>(std::forward<A>(args)))...);
            return std::move(*result);
        }
    }

    void check_declared(const std::string& name, const std::string& kind, const char* op) const {
        // A SyncManager's own factories need no declaration.
        if (name.starts_with(detail::builtin_prefix)) return;
        auto it = declared_.find(name);
        if (it == declared_.end())
            throw ValueError(std::string("BaseManager.") + op + ": '" + name +
                             "' was not registered; call register_<T>(\"" + name + "\") first, as Python's "
                             "register() is needed on the client too");
        if (it->second != kind)
            throw ValueError(std::string("BaseManager.") + op + ": '" + name + "' was registered as " + it->second +
                             ", not as " + kind);
    }

    Address listen_address() const {
        if (options_.address != Address{}) return options_.address;
        return Address::unix_socket("@mp-manager-" + std::to_string(detail::current_pid()) + "-" +
                                    std::to_string(detail::random_u64()));
    }

    detail::ServerLimits server_limits() const {
        return {.max_connections = options_.max_connections,
                .max_handshaking = options_.max_handshaking,
                .handshake_timeout = detail::handshake_timeout,
                .same_user_only = !options_.allow_other_users};
    }

    // The code secrets of the servers this process (or the process it was forked from)
    // started or serves, by address: a manager that connect()s to one of them from here
    // is one of that program's own processes. The secret lives only in memory (and in a
    // spawned child's bootstrap pipe), never in an address or a file.
    // The code secret of a server this process (or the process it was forked from)
    // started or serves at `where`, remembered when `secret` is given: a manager that
    // connect()s there from here is one of that program's own processes. The secret
    // lives only in memory (and in a spawned child's bootstrap pipe), never in an
    // address, an authkey or a file.
    static std::string local_code_secret_for(const Address& where, const std::string& secret = {}) {
        static std::mutex mutex;
        static auto* secrets = new std::map<std::string, std::string>;  // leaked: used until the very end
        std::lock_guard lock(mutex);
        if (!secret.empty()) (*secrets)[where.to_string()] = secret;
        auto it = secrets->find(where.to_string());
        return it == secrets->end() ? std::string() : it->second;
    }

    std::string authkey_for_server() {
        if (options_.authkey.empty()) options_.authkey = detail::process_state().authkey;
        return options_.authkey;
    }

    void start_server_process();

    void take(BaseManager& other) noexcept {
        options_ = std::move(other.options_);
        core_ = std::move(other.core_);
        serve_builtins_ = other.serve_builtins_;
        declared_ = std::move(other.declared_);
        server_ = std::move(other.server_);
        client_ = std::move(other.client_);
        server_process_ = std::move(other.server_process_);
        replays_ = std::move(other.replays_);
        replay_payloads_ = std::move(other.replay_payloads_);
        unportable_ = std::move(other.unportable_);
        started_ = std::exchange(other.started_, false);
        owner_ = std::exchange(other.owner_, 0);
    }

    ManagerOptions options_;
    std::shared_ptr<detail::ServerCore> core_;
    bool serve_builtins_ = false;
    std::map<std::string, std::string> declared_;
    std::unique_ptr<Server> server_;
    std::shared_ptr<detail::ClientCore> client_;
    std::shared_ptr<detail::ChildRecord> server_process_;
    std::vector<detail::code_address> replays_;
    std::vector<std::vector<std::byte>> replay_payloads_;
    std::string unportable_;  // the first registration a fresh server cannot repeat
    bool started_ = false;
    pid_t owner_ = 0;
};

namespace detail {

// Closes every fd of this process except `keep` (sorted), so the server does not hold
// the ends of its owner's pipes and sockets open.
inline void close_fds_except(std::vector<int> keep) {
    std::sort(keep.begin(), keep.end());
    int from = 0;
    for (int fd : keep) {
        if (fd < from) continue;
        if (fd > from) ::syscall(SYS_close_range, static_cast<unsigned>(from), static_cast<unsigned>(fd - 1), 0u);
        from = fd + 1;
    }
    ::syscall(SYS_close_range, static_cast<unsigned>(from), ~0u, 0u);
}

inline void write_all(int fd, const std::string& s) noexcept {
    std::size_t done = 0;
    while (done < s.size()) {
        const ssize_t n = ::write(fd, s.data() + done, s.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        done += static_cast<std::size_t>(n);
    }
}

}  // namespace detail

// In the server process, however it was started: listens, tells the owner where (or
// why it could not) through `ready_fd`, and serves until shut down or the owner is gone.
inline int BaseManager::serve_in_child(const std::shared_ptr<detail::ServerCore>& core, const Address& where,
                                       const std::string& key, const detail::ServerLimits& limits, pid_t owner,
                                       int ready_fd, bool close_inherited, bool forked) {
    // The server ends when its owner does, however the owner ends.
    const int owner_fd = detail::pidfd_open(owner);
    if (owner_fd < 0) {
        if (forked) ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // kernels before 5.3: the next best
        if (forked ? ::getppid() != owner : ::kill(owner, 0) != 0) return 1;
    }
    std::optional<detail::net::ListeningSocket> listener;
    try {
        listener.emplace(where);
    } catch (const std::exception& e) {
        detail::write_all(ready_fd, std::string("E") + e.what());
        return 1;
    }
    if (close_inherited) detail::close_fds_except({0, 1, 2, ready_fd, owner_fd, listener->fd()});  // owner_fd may be -1: ignored
    const Address bound = listener->address();
    std::vector<std::byte> bytes(detail::encoded_size(bound));
    detail::ByteWriter w(bytes.data());
    detail::put(w, bound);
    detail::write_all(ready_fd, "A" + std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    ::close(ready_fd);
    detail::ServerLoop loop(core, std::move(*listener), key, limits);
    loop.serve_forever(owner_fd);
    return 0;
}

// A server started by spawn or forkserver: a fresh process that rebuilds the manager
// from its registrations, then serves as a forked one does. Its ready pipe is its first
// passed fd.
inline int BaseManager::spawned_server_main(detail::ByteReader& in) {
    const bool builtins = detail::get<bool>(in);
    const auto where = detail::get<Address>(in);
    const auto key = detail::get<std::string>(in);
    const pid_t owner = detail::get<std::int32_t>(in);
    const auto code_secret = detail::get<std::string>(in);
    const auto max_connections = detail::get<std::uint64_t>(in);
    const auto max_handshaking = detail::get<std::uint64_t>(in);
    const bool same_user_only = detail::get<bool>(in);
    const auto replays = detail::get<std::vector<detail::code_address>>(in);
    const auto payloads = detail::get<std::vector<std::vector<std::byte>>>(in);
    BaseManager manager(ManagerOptions{}, builtins);
    manager.core_->set_code_secret(code_secret);
    // The replays are code addresses, but from the spawn bootstrap (a pipe only this
    // child can read, written by the owner), not from a socket.
    for (std::size_t i = 0; i < replays.size(); ++i) {
        detail::ByteReader registration(payloads.at(i));
        detail::code_at<Replay>(replays[i])(manager, registration);
    }
    const detail::ServerLimits limits{.max_connections = max_connections,
                                      .max_handshaking = max_handshaking,
                                      .handshake_timeout = detail::handshake_timeout,
                                      .same_user_only = same_user_only};
    return serve_in_child(manager.core_, where, key, limits, owner, detail::first_passed_fd, builtins, false);
}

inline void BaseManager::start_server_process() {
    const auto method = detail::parse_start_method(options_.context ? options_.context->get_start_method()
                                                                    : get_start_method());
    if (method != detail::StartMethod::fork && !unportable_.empty())
        throw ValueError("BaseManager.start: a server started by the '" + detail::start_method_name(method) +
                         "' start method is a fresh process that must repeat every registration, and " +
                         unportable_ + " cannot be repeated there; register one that can travel, or use "
                         "ManagerOptions{.context = mp::get_context(\"fork\")}");
    const Address where = listen_address();
    const std::string key = authkey_for_server();
    // Drawn afresh for each server: it marks this process and its children as the
    // server's own (see ServerCore::set_code_secret).
    const std::string code_secret = detail::auth::random_authkey();
    core_->set_code_secret(code_secret);
    const detail::ServerLimits limits = server_limits();
    int ready[2];
    if (::pipe2(ready, O_CLOEXEC) != 0) detail::throw_errno("BaseManager.start: pipe");
    const pid_t owner = detail::current_pid();
    const bool close_inherited = serve_builtins_;
    const std::string name = serve_builtins_ ? "SyncManager" : "BaseManager";
    const detail::ForkOptions fork_options{
        .name = name + "-" + detail::identity_suffix(detail::next_child_identity()), .daemon = true, .identity = {}};
    try {
        if (method == detail::StartMethod::fork) {
            const pid_t pid = detail::fork_child(fork_options, [&]() -> int {
                ::close(ready[0]);
                return serve_in_child(core_, where, key, limits, owner, ready[1], close_inherited, true);
            });
            server_process_ = std::make_shared<detail::ChildRecord>(pid, name, true);
        } else {
            const auto payload = detail::encode_values(
                serve_builtins_, where, key, static_cast<std::int32_t>(owner), code_secret,
                std::uint64_t(limits.max_connections), std::uint64_t(limits.max_handshaking), limits.same_user_only,
                replays_, replay_payloads_);
            const int fds[] = {ready[1]};
            const auto child = detail::start_fresh_child(method, fork_options,
                                                         detail::address_of_code(&spawned_server_main), payload, fds);
            server_process_ =
                std::make_shared<detail::ChildRecord>(child.pid, name, true, child.status_fd, child.pidfd);
        }
    } catch (...) {
        ::close(ready[0]);
        ::close(ready[1]);
        throw;
    }
    ::close(ready[1]);
    // The child writes its bound address (or why it could not bind) and closes the pipe.
    std::string message;
    const detail::Deadline deadline(options_.connect_timeout);
    for (;;) {
        if (!detail::wire::readable_within(ready[0], deadline)) break;
        char buf[512];
        const ssize_t n = ::read(ready[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        message.append(buf, static_cast<std::size_t>(n));
    }
    ::close(ready[0]);
    auto fail = [&](const std::string& why) {
        server_process_->signal(SIGKILL);
        server_process_->wait(std::nullopt);
        server_process_.reset();
        throw ProcessError("BaseManager.start: " + why);
    };
    if (message.empty()) fail("the server process exited before it listened on " + where.to_string());
    if (message[0] == 'E') fail(message.substr(1));
    Address bound;
    try {
        detail::ByteReader r(std::span<const std::byte>(reinterpret_cast<const std::byte*>(message.data()) + 1,
                                                        message.size() - 1));
        bound = detail::get<Address>(r);
    } catch (...) {
        fail("the server process sent an unreadable address");
    }
    local_code_secret_for(bound, code_secret);
    client_ = std::make_shared<detail::ClientCore>(bound, key, options_.connect_timeout, code_secret);
    detail::manager::Clients::instance().add(client_);
}

// Python's SyncManager: a BaseManager that also serves the built-in types.
class SyncManager : public BaseManager {
public:
    explicit SyncManager(ManagerOptions options = {}) : BaseManager(std::move(options), true) {}

    // The factories of non-template types are templates too (with an unused parameter),
    // as Pool() is: a program registers, and compiles the server side of, only the
    // built-in types it asks for. As plain members they were compiled into every
    // translation unit that includes this header, used or not.
    template <class = void>
    NamespaceProxy Namespace() {
        return create_builtin<detail::NamespaceState>();
    }
    template <class T>
    ListProxy<T> list(std::vector<T> initial = {}) {
        return create_builtin<std::vector<T>>(initial);
    }
    template <class K, class V>
    DictProxy<K, V> dict(std::vector<std::pair<K, V>> initial = {}) {
        return create_builtin<detail::InsertionOrderedMap<K, V>>(initial);
    }
    template <class K, class V>
    DictProxy<K, V> dict(const std::map<K, V>& initial) {
        return dict<K, V>(std::vector<std::pair<K, V>>(initial.begin(), initial.end()));
    }
    // dict<K, V>({{"a", 1}, {"b", 2}}): an exact match, so not ambiguous with the two above.
    template <class K, class V>
    DictProxy<K, V> dict(std::initializer_list<std::pair<K, V>> initial) {
        return dict<K, V>(std::vector<std::pair<K, V>>(initial));
    }
    template <class T>
    QueueProxy<T> Queue(long maxsize = 0) {
        return create_builtin<multiprocessing::Queue<T>>(maxsize);
    }
    template <class T>
    QueueProxy<T> JoinableQueue(long maxsize = 0) {
        return create_builtin<multiprocessing::JoinableQueue<T>>(maxsize);
    }
    template <class = void>
    AcquirerProxy Lock() {
        return create_builtin<multiprocessing::Lock>();
    }
    template <class = void>
    AcquirerProxy RLock() {
        return create_builtin<multiprocessing::RLock>();
    }
    template <class = void>
    AcquirerProxy Semaphore(int value = 1) {
        return create_builtin<multiprocessing::Semaphore>(value);
    }
    template <class = void>
    AcquirerProxy BoundedSemaphore(int value = 1) {
        return create_builtin<multiprocessing::BoundedSemaphore>(value);
    }
    template <class = void>
    ConditionProxy Condition() {
        return create_builtin<multiprocessing::Condition>();
    }
    template <class = void>
    EventProxy Event() {
        return create_builtin<multiprocessing::Event>();
    }
    template <class = void>
    BarrierProxy Barrier(int parties, std::optional<double> timeout = std::nullopt) {
        return create_builtin<multiprocessing::Barrier>(parties, timeout);
    }
    template <class T>
    ValueProxy<T> Value(T initial = T{}) {
        return create_builtin<detail::ValueBox<T>>(initial);
    }
    template <class T>
    ArrayProxy<T> Array(std::vector<T> initial) {
        return create_builtin<detail::FixedArray<T>>(initial);
    }
    template <class T>
    ArrayProxy<T> Array(std::initializer_list<T> initial) {
        return Array<T>(std::vector<T>(initial));
    }
    // A Pool in the server process (0: cpu_count() workers). A template, so that only a
    // program that calls it registers the Pool type: a server whose program never asked
    // for a Pool serves none (nor its "run" method, the one call that takes code).
    template <class = void>
    PoolProxy Pool(std::size_t processes = 0) {
        return create_builtin<detail::ServedPool>(std::uint64_t(processes));
    }
};

}  // namespace multiprocessing::managers

namespace multiprocessing {

using managers::BaseManager;
using managers::SyncManager;

// Python's multiprocessing.Manager(): a started SyncManager.
inline managers::SyncManager Manager(managers::ManagerOptions options = {}) {
    managers::SyncManager manager(std::move(options));
    manager.start();
    return manager;
}

// Context's factory (declared in context.hpp): ctx.Manager() starts its server by ctx's method.
template <class... A>
auto Context::Manager(A&&... args) const {
    managers::ManagerOptions options(std::forward<A>(args)...);
    options.context = *this;
    return multiprocessing::Manager(std::move(options));
}

}  // namespace multiprocessing
