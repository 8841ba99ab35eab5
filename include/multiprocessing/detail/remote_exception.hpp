// How an exception thrown by a task in a worker comes back to the parent: as its
// demangled type name and its what(), rebuilt as the same type when the parent knows
// how (the standard exceptions, the library's own, and the user's registered types),
// and as RemoteError otherwise.
#pragma once

#include <cxxabi.h>
#include <pthread.h>

#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <unordered_map>
#include <vector>

#include "../errors.hpp"
#include "codec.hpp"

namespace multiprocessing::detail {

inline std::string demangle(const char* mangled) {
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> name(abi::__cxa_demangle(mangled, nullptr, nullptr, &status),
                                                std::free);
    return status == 0 && name ? std::string(name.get()) : std::string(mangled);
}

struct ExceptionInfo {
    std::string type;
    std::string what;
    // The exception's own fields, encoded by its cereal serialize: only for a registered
    // type that has one (register_exception), else empty.
    std::vector<std::byte> fields;
    template <class Archive>
    void serialize(Archive& ar) { ar(type, what, fields); }
};

class ExceptionRegistry {
public:
    using Factory = std::function<std::exception_ptr(const ExceptionInfo& info)>;
    // Called inside a catch block whose exception has the registered type.
    using FieldEncoder = std::vector<std::byte> (*)();
    struct Registered {
        Factory rebuild;
        FieldEncoder encode_fields = nullptr;  // only for a type with a serialize
    };

    static ExceptionRegistry& instance() {
        static ExceptionRegistry registry;
        return registry;
    }

    template <class E>
    void add() {
        static_assert(std::is_constructible_v<E, std::string>,
                      "multiprocessing::register_exception<E>: E must be constructible from a std::string "
                      "(its what() message), so it can be rebuilt in the parent.");
        std::lock_guard lock(mutex_);
        const std::string name = demangle(typeid(E).name());
        if constexpr (cereal_serializable<E>) {
            // E(what), then its fields as its serialize reads them.
            auto rebuild = [](const ExceptionInfo& info) {
                E rebuilt(info.what);
                if (!info.fields.empty()) {
                    try {
                        ByteReader r(info.fields);
                        InArchive ar(r);
                        ar(rebuilt);
                    } catch (const std::exception& e) {
                        return std::make_exception_ptr(
                            ProcessError("multiprocessing: the fields of a " + info.type + " (\"" + info.what +
                                         "\") from another process could not be read: " + e.what()));
                    }
                }
                return std::make_exception_ptr(std::move(rebuilt));
            };
            auto encode_fields = []() -> std::vector<std::byte> {
                try {
                    throw;
                } catch (const E& e) {
                    return encode_values(e);
                }
            };
            types_[name] = {rebuild, encode_fields};
        } else {
            types_[name] = {[](const ExceptionInfo& info) { return std::make_exception_ptr(E(info.what)); }};
        }
    }

    std::exception_ptr rebuild(const ExceptionInfo& info) const {
        {
            std::lock_guard lock(mutex_);
            auto it = types_.find(info.type);
            if (it != types_.end()) return it->second.rebuild(info);
        }
        return std::make_exception_ptr(RemoteError(info.type, info.type + ": " + info.what));
    }

    // Inside a catch block: the fields of the exception in flight, if its type (`type`,
    // demangled) is registered with a serialize; else empty.
    std::vector<std::byte> encode_fields(const std::string& type) const {
        FieldEncoder encode = nullptr;
        {
            std::lock_guard lock(mutex_);
            auto it = types_.find(type);
            if (it == types_.end() || !it->second.encode_fields) return {};
            encode = it->second.encode_fields;
        }
        try {
            return encode();
        } catch (...) {
            return {};  // its serialize threw: the type and what() still cross
        }
    }

private:
    ExceptionRegistry() {
        // A fork child describes its exceptions through this registry (encode_fields): a
        // lock another thread held at the fork would never be released there. The maps
        // are only read after registration, so a fresh lock in the child is sound.
        // (Through `self`, not instance(): a fork during this constructor must not wait
        // on the static's guard in the child.)
        self_ = this;
        ::pthread_atfork(nullptr, nullptr, [] { new (&self_->mutex_) std::mutex; });
        add<std::runtime_error>();
        add<std::logic_error>();
        add<std::invalid_argument>();
        add<std::out_of_range>();
        add<std::domain_error>();
        add<std::length_error>();
        add<std::overflow_error>();
        add<std::underflow_error>();
        add<std::range_error>();
        types_[demangle(typeid(std::bad_alloc).name())] = {
            [](const ExceptionInfo&) { return std::make_exception_ptr(std::bad_alloc()); }};
        add<ProcessError>();
        add<TimeoutError>();
        add<AuthenticationError>();
        add<BufferTooShort>();
        add<WorkerLostError>();
        add<Full>();
        add<Empty>();
        add<EOFError>();
        add<ValueError>();
        add<StopIteration>();
        add<BrokenBarrierError>();
        add<KeyError>();
        add<IndexError>();
        types_[demangle(typeid(RemoteError).name())] = {
            [](const ExceptionInfo& info) { return std::make_exception_ptr(RemoteError(info.what)); }};
    }

    static inline ExceptionRegistry* self_ = nullptr;  // the one instance, for the fork handler
    mutable std::mutex mutex_;
    std::unordered_map<std::string, Registered> types_;  // by demangled name
};

// Call inside a catch block: describes the exception in flight, whatever its type.
inline ExceptionInfo describe_current_exception() {
    const std::type_info* t = abi::__cxa_current_exception_type();
    ExceptionInfo info{t ? demangle(t->name()) : std::string("unknown"), {}, {}};
    try {
        throw;
    } catch (const RemoteError& e) {
        // Keep the original remote type through a second hop.
        if (!e.type_name().empty()) info.type = e.type_name();
        info.what = e.what();
        return info;
    } catch (const std::exception& e) {
        info.what = e.what();
    } catch (...) {
        info.what = "a value of type " + info.type + " was thrown";
        return info;
    }
    info.fields = ExceptionRegistry::instance().encode_fields(info.type);
    return info;
}

}  // namespace multiprocessing::detail

namespace multiprocessing {

// Lets exceptions of type E thrown by tasks in workers arrive in the parent as E (with
// the same what()) instead of RemoteError. E must be constructible from a std::string;
// when E also has a cereal serialize, its fields cross too (E(what), then serialize
// reads them). Register in every process that throws or catches E: before the pool or
// Process starts (fork children inherit it), or at namespace scope, which also runs in
// spawned and forkserver children.
template <class E>
void register_exception() {
    detail::ExceptionRegistry::instance().add<E>();
}

}  // namespace multiprocessing
