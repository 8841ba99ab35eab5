// How a function and its captures travel to another process.
//
// Accepted: function pointers, lambdas without captures, lambdas whose captures are
// all trivially copyable, and function objects that cereal can serialize. Their bytes
// (or serialized form) go in the task; the code itself is found in the other process by
// its address, which a fork child shares with its parent (spawn-style children will
// translate it through the loaded image: see code_address()).
//
// Rejected at compile time, with the reason: std::function (it hides what it holds, so
// nothing can say whether that is safe to copy) and lambdas capturing non-trivially-
// copyable things such as a std::string (their heap memory stays in the parent).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <type_traits>

#include "codec.hpp"

namespace multiprocessing::detail {

template <class F>
inline constexpr bool is_std_function = false;
template <class Sig>
inline constexpr bool is_std_function<std::function<Sig>> = true;

template <class F>
concept transferable_callable =
    !is_std_function<F> &&
    (std::is_function_v<std::remove_pointer_t<F>> ||
     (std::is_class_v<F> && (raw_bytes<F> || cereal_serializable<F>)));

template <class F>
struct callable_cannot_cross_process_boundary {
    static_assert(!is_std_function<F>,
                  "multiprocessing: a std::function cannot be sent to another process: it may hold "
                  "anything, including pointers into this process. Pass the function pointer or the "
                  "lambda itself instead.");
    static_assert(is_std_function<F> || dependent_false<F>,
                  "multiprocessing: this callable cannot be sent to another process: a lambda's captures "
                  "must all be trivially copyable (ints, doubles, PODs), since anything owning heap memory "
                  "(a std::string, a std::vector) would point into this process. Fix: pass such values "
                  "as task arguments instead of capturing them, or use a function object with a cereal "
                  "`serialize(Archive&)`.");
};

template <class F>
constexpr void require_transferable_callable() {
    if constexpr (!transferable_callable<F>) (void)sizeof(callable_cannot_cross_process_boundary<F>);
}

// A function or class type as it is stored for sending: functions decay to pointers.
template <class F>
using stored_callable_t = std::decay_t<F>;

// Arguments are stored as values. A string literal or char* argument becomes a
// std::string (a pointer would mean nothing in the other process).
template <class A>
using stored_arg_t = std::conditional_t<
    std::is_same_v<std::decay_t<A>, const char*> || std::is_same_v<std::decay_t<A>, char*>,
    std::string, std::decay_t<A>>;

// The address of code, as it travels. Under fork the child's image is the parent's, so
// the address itself is valid there.
using code_address = std::uintptr_t;

template <class Fn>
code_address address_of_code(Fn* fn) noexcept {
    return reinterpret_cast<code_address>(fn);
}
template <class Fn>
Fn* code_at(code_address address) noexcept {
    return reinterpret_cast<Fn*>(address);
}

// Writes a callable into a task.
template <class F>
void put_callable(ByteWriter& w, const F& f) {
    require_transferable_callable<F>();
    if constexpr (std::is_pointer_v<F>) {
        code_address a = address_of_code(f);
        w.write(&a, sizeof a);
    } else if constexpr (std::is_empty_v<F> && std::is_trivially_copyable_v<F>) {
        // A capture-less lambda: nothing to send.
    } else {
        put(w, f);
    }
}

template <class F>
F get_callable(ByteReader& r) {
    if constexpr (std::is_pointer_v<F>) {
        code_address a;
        r.read(&a, sizeof a);
        return code_at<std::remove_pointer_t<F>>(a);
    } else if constexpr (std::is_empty_v<F> && std::is_trivially_copyable_v<F>) {
        // C++20 lambdas without captures are default constructible; other empty trivially
        // copyable classes are rebuilt from their (meaningless) bytes.
        if constexpr (std::is_default_constructible_v<F>) {
            return F{};
        } else {
            alignas(F) unsigned char storage[sizeof(F)] = {};
            return *std::launder(reinterpret_cast<F*>(storage));
        }
    } else {
        return get<F>(r);
    }
}

}  // namespace multiprocessing::detail
