// How an exception thrown by a task in a worker comes back to the parent: as its
// demangled type name and its what(), rebuilt as the same type when the parent knows
// how (the standard exceptions, the library's own, and the user's registered types),
// and as RemoteError otherwise.
#pragma once

#include <cxxabi.h>

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

#include "../errors.hpp"

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
    template <class Archive>
    void serialize(Archive& ar) { ar(type, what); }
};

// Call inside a catch block: describes the exception in flight, whatever its type.
inline ExceptionInfo describe_current_exception() {
    const std::type_info* t = abi::__cxa_current_exception_type();
    ExceptionInfo info{t ? demangle(t->name()) : std::string("unknown"), {}};
    try {
        throw;
    } catch (const RemoteError& e) {
        // Keep the original remote type through a second hop.
        if (!e.type_name().empty()) info.type = e.type_name();
        info.what = e.what();
    } catch (const std::exception& e) {
        info.what = e.what();
    } catch (...) {
        info.what = "a value of type " + info.type + " was thrown";
    }
    return info;
}

class ExceptionRegistry {
public:
    using Factory = std::function<std::exception_ptr(const std::string& what)>;

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
        factories_[demangle(typeid(E).name())] = [](const std::string& what) {
            return std::make_exception_ptr(E(what));
        };
    }

    std::exception_ptr rebuild(const ExceptionInfo& info) const {
        {
            std::lock_guard lock(mutex_);
            auto it = factories_.find(info.type);
            if (it != factories_.end()) return it->second(info.what);
        }
        return std::make_exception_ptr(RemoteError(info.type, info.type + ": " + info.what));
    }

private:
    ExceptionRegistry() {
        add<std::runtime_error>();
        add<std::logic_error>();
        add<std::invalid_argument>();
        add<std::out_of_range>();
        add<std::domain_error>();
        add<std::length_error>();
        add<std::overflow_error>();
        add<std::underflow_error>();
        add<std::range_error>();
        factories_[demangle(typeid(std::bad_alloc).name())] = [](const std::string&) {
            return std::make_exception_ptr(std::bad_alloc());
        };
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
        factories_[demangle(typeid(RemoteError).name())] = [](const std::string& what) {
            return std::make_exception_ptr(RemoteError(what));
        };
    }

    mutable std::mutex mutex_;
    std::unordered_map<std::string, Factory> factories_;
};

}  // namespace multiprocessing::detail

namespace multiprocessing {

// Lets exceptions of type E thrown by tasks in workers arrive in the parent as E (with
// the same what()) instead of RemoteError. E must be constructible from a std::string.
template <class E>
void register_exception() {
    detail::ExceptionRegistry::instance().add<E>();
}

}  // namespace multiprocessing
