// Python's functools.partial, as the pool and Process take it: mp::partial(f, args...).
#pragma once

#include <concepts>
#include <cstdint>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "detail/callable.hpp"

namespace multiprocessing {

// `partial(f, a, b)(x, y)` calls `f(a, b, x, y)`. It crosses to another process as
// `f` (a function travels as a code address, as any function given to a pool does; a
// function object as its bytes or its cereal serialize) and the bound arguments as
// values: so `pool.map(mp::partial(scale, factor, name), v)` does what a lambda capturing
// the std::string `name` cannot.
template <class F, class... Bound>
class Partial {
    static_assert(std::is_pointer_v<F> || std::is_default_constructible_v<F>,
                  "multiprocessing: mp::partial binds a function, or a function object that is default "
                  "constructible (so that another process can rebuild it); a lambda with captures is "
                  "neither: make the captures bound arguments of mp::partial instead");

public:
    Partial() = default;  // what another process decodes into
    explicit Partial(F fn, Bound... bound) : fn_(std::move(fn)), bound_(std::move(bound)...) {}
    // User-provided, so that a Partial is never copied as raw bytes: its function pointer
    // must travel as a code address (save/load below), not as this process's address.
    Partial(const Partial& other) : fn_(other.fn_), bound_(other.bound_) {}
    Partial(Partial&&) noexcept = default;
    Partial& operator=(const Partial&) = default;
    Partial& operator=(Partial&&) noexcept = default;
    ~Partial() = default;

    template <class... Rest>
        requires std::invocable<const F&, const Bound&..., Rest...>
    decltype(auto) operator()(Rest&&... rest) const {
        return std::apply(
            [&](const Bound&... bound) -> decltype(auto) {
                return std::invoke(fn_, bound..., std::forward<Rest>(rest)...);
            },
            bound_);
    }

    template <class Archive>
    void save(Archive& ar) const {
        if constexpr (std::is_pointer_v<F>)
            ar(std::uint64_t(detail::address_of_code(fn_)));
        else
            ar(fn_);
        ar(bound_);
    }
    template <class Archive>
    void load(Archive& ar) {
        if constexpr (std::is_pointer_v<F>) {
            std::uint64_t where = 0;
            ar(where);
            fn_ = detail::code_at<std::remove_pointer_t<F>>(where);
        } else {
            ar(fn_);
        }
        ar(bound_);
    }

private:
    F fn_{};
    std::tuple<Bound...> bound_;
};

// Binds `args` (stored as values; a string literal as a std::string) before the
// arguments of each call. Functions decay to pointers.
template <class F, class... A>
Partial<detail::stored_callable_t<F>, detail::stored_arg_t<A>...> partial(F&& fn, A&&... args) {
    detail::require_transferable_callable<detail::stored_callable_t<F>>();
    return Partial<detail::stored_callable_t<F>, detail::stored_arg_t<A>...>(std::forward<F>(fn),
                                                                             std::forward<A>(args)...);
}

}  // namespace multiprocessing
