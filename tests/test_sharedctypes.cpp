// sharedctypes: a port of the behaviours CPython checks in _TestValue and _TestArray
// (Lib/test/_test_multiprocessing.py), written for the C++ API: Value, RawValue, Array,
// RawArray live in shared memory, so what a child writes the parent reads; copies of a
// handle are the same object; Value and Array carry a lock.
//
// Children get the objects as Process arguments. A child reports a failed check by
// throwing (CHILD_REQUIRE): its exit code is then 1. No Catch2 macro runs in a child.
#include <catch2/catch.hpp>

#include <sys/resource.h>

#include <multiprocessing.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <deque>
#include <mutex>
#include <numeric>
#include <ranges>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "support.hpp"

namespace mp = multiprocessing;
using namespace std::chrono_literals;

namespace {

using mp_test::Children;

// Runs f(args...) in a child and waits for it to succeed.
template <class F, class... A>
void in_child(F f, A&&... args) {
    Children kids;
    kids.start(f, std::forward<A>(args)...);
    kids.join_all();
}

using mp_test::Point;

// Trivially copyable, but with default member values (not trivially default constructible).
struct WithDefaults {
    int a = 7;
    double b = 2.5;
};

template <class T>
using SyncValue = mp::Value<T>;
template <class T>
using SyncArray = mp::Array<T>;

}  // namespace

// =====================================================================================
// Value, RawValue (_TestValue)

namespace {

// CPython's codes_values: ('i', 4343, 24234), ('d', 3.625, -4.25), ('h', -232, 234),
// ('q', 2**33, 2**34), ('c', b'x', b'y'); plus a bool and a struct.
template <template <class> class V>
void set_values(V<int> i, V<double> d, V<short> h, V<long long> q, V<char> c, V<bool> b, V<Point> p) {
    CHILD_REQUIRE(i.value() == 4343);  // the child sees the parent's values...
    CHILD_REQUIRE(p.value() == (Point{1.5, -2.0}));
    i.value() = 24234;  // ...and the parent sees the child's
    d.value() = -4.25;
    h.value() = 234;
    q.value() = 1LL << 34;
    c.value() = 'y';
    b.value() = true;
    p.value() = Point{-0.5, 8.25};
}

template <template <class> class V>
void check_values_cross() {
    V<int> i(4343);
    V<double> d(3.625);
    V<short> h(-232);
    V<long long> q(1LL << 33);
    V<char> c('x');
    V<bool> b(false);
    V<Point> p(Point{1.5, -2.0});
    CHECK(i.value() == 4343);
    CHECK(d.value() == 3.625);
    CHECK(h.value() == -232);
    CHECK(q.value() == 1LL << 33);
    CHECK(c.value() == 'x');
    CHECK(b.value() == false);
    CHECK(p.value() == (Point{1.5, -2.0}));

    in_child(set_values<V>, i, d, h, q, c, b, p);

    CHECK(i.value() == 24234);
    CHECK(d.value() == -4.25);
    CHECK(h.value() == 234);
    CHECK(q.value() == 1LL << 34);
    CHECK(c.value() == 'y');
    CHECK(b.value() == true);
    CHECK(p.value() == (Point{-0.5, 8.25}));
}

}  // namespace

TEST_CASE("Value: int, double, short, long long, char, bool and a struct set in a child are read in the parent",
          "[value][processes]") {
    check_values_cross<SyncValue>();
}

TEST_CASE("RawValue: the same, without a lock", "[value][processes]") {
    check_values_cross<mp::RawValue>();
}

TEST_CASE("Value: default construction gives T{}", "[value]") {
    mp::Value<int> i;
    mp::Value<double> d;
    mp::RawValue<Point> p;
    CHECK(i.value() == 0);
    CHECK(d.value() == 0.0);
    CHECK(p.value() == (Point{0.0, 0.0}));
    mp::RawValue<WithDefaults> w;
    CHECK(w.value().a == 7);
    CHECK(w.value().b == 2.5);
}

TEST_CASE("Value: get_lock() and get_obj()", "[value][lock]") {
    // CPython's test_getobj_getlock.
    SECTION("the default lock is an RLock") {
        mp::Value<int> v(5);
        auto& lock = v.get_lock();
        CHECK(lock.acquire());
        CHECK(lock.acquire(false));  // re-entrant
        lock.release();
        lock.release();
        {
            std::lock_guard g(v.get_lock());
            v.value() += 1;
        }
        CHECK(v.value() == 6);
        const mp::RawValue<int>& raw = v.get_obj();
        CHECK(raw.value() == 6);
        raw.value() = 9;  // the same memory
        CHECK(v.value() == 9);
        v.acquire();  // Value's own acquire/release take the lock
        CHECK(v.get_lock().held_by_me());
        v.release();
        CHECK_FALSE(v.get_lock().held_by_me());
    }
    SECTION("Value<T, Lock>(v, lock) uses the given lock") {
        mp::Lock lock;
        mp::Value<int, mp::Lock> v(5, lock);
        CHECK(v.value() == 5);
        lock.acquire();
        CHECK_FALSE(v.get_lock().acquire(false));  // held through `lock`
        lock.release();
        {
            std::lock_guard g(v.get_lock());
            CHECK_FALSE(lock.try_lock());  // held through get_lock()
        }
        CHECK(lock.try_lock());
        lock.release();

        // Two values may share one lock.
        mp::Value<double, mp::Lock> w(1.5, lock);
        std::lock_guard g(w.get_lock());
        CHECK_FALSE(v.get_lock().try_lock());
    }
    SECTION("Value<T, RLock>(v, rlock) uses the given RLock") {
        mp::RLock rlock;
        mp::Value<int> v(5, rlock);
        rlock.acquire();
        CHECK(v.get_lock().held_by_me());
        rlock.release();
        CHECK_FALSE(v.get_lock().held_by_me());
    }
}

TEST_CASE("Value: 4 processes x 5000 increments under get_lock() give 20000", "[value][processes]") {
    mp::Value<int> counter(0);
    Children kids;
    for (int i = 0; i < 4; ++i)
        kids.start(
            [](mp::Value<int> c) {
                for (int k = 0; k < 5000; ++k) {
                    std::lock_guard g(c.get_lock());
                    c.value() += 1;
                }
            },
            counter);
    kids.join_all(std::chrono::seconds(60));
    CHECK(counter.value() == 20000);
}

TEST_CASE("Value: copies of a handle are the same value, here and in a child", "[value][processes]") {
    mp::Value<double> a(1.0);
    auto b = a;
    b.value() = 2.5;
    CHECK(a.value() == 2.5);
    mp::Value<double> c(0.0);
    c = a;  // assigning a handle makes it refer to a's value
    c.value() = 4.0;
    CHECK(a.value() == 4.0);

    in_child([](mp::Value<double> v) { v.value() *= 2; }, b);
    CHECK(a.value() == 8.0);

    // The lock is shared as well.
    auto copy = a;
    {
        std::lock_guard g(copy.get_lock());
        in_child([](mp::Value<double> v) { CHILD_REQUIRE(!v.get_lock().acquire(false)); }, a);
    }
    // Python's `with v:` takes the value's own lock.
    {
        std::lock_guard g(a);
        in_child([](mp::Value<double> v) { CHILD_REQUIRE(!v.try_lock()); }, copy);
    }
    in_child([](mp::Value<double> v) { CHILD_REQUIRE(v.try_lock()); v.unlock(); }, copy);
}

// =====================================================================================
// Array, RawArray (_TestArray)

namespace {

// CPython's _TestArray.f: prefix sums, in place.
template <class Seq>
void prefix_sums(Seq& seq) {
    for (std::size_t i = 1; i < seq.size(); ++i) seq[i] += seq[i - 1];
}
template <template <class> class A>
void prefix_sums_in_child(A<int> arr) {
    prefix_sums(arr);
}

template <template <class> class A>
void check_array_cross() {
    std::vector<int> seq{680, 626, 934, 821, 150, 233, 548, 982, 714, 831};
    A<int> arr(seq);
    CHECK(arr.size() == seq.size());
    CHECK(arr[3] == seq[3]);
    auto slice = arr.span().subspan(2, 5);  // arr[2:7]
    CHECK(std::vector<int>(slice.begin(), slice.end()) == std::vector<int>(seq.begin() + 2, seq.begin() + 7));

    // arr[4:8] = seq[4:8] = [1, 2, 3, 4]
    const int four[] = {1, 2, 3, 4};
    std::ranges::copy(four, arr.span().subspan(4, 4).begin());
    std::ranges::copy(four, seq.begin() + 4);
    CHECK(std::vector<int>(arr.begin(), arr.end()) == seq);

    prefix_sums(seq);
    in_child(prefix_sums_in_child<A>, arr);
    CHECK(std::vector<int>(arr.begin(), arr.end()) == seq);
}

}  // namespace

TEST_CASE("Array: made from a vector, read, sliced, assigned, and modified by a child", "[array][processes]") {
    check_array_cross<SyncArray>();
}

TEST_CASE("RawArray: the same, without a lock", "[array][processes]") {
    check_array_cross<mp::RawArray>();
}

TEST_CASE("Array(n) is zero-filled", "[array]") {
    // CPython's test_array_from_size: repeated, so that reused memory would show.
    for (int round = 0; round < 3; ++round) {
        mp::Array<int> arr(10);
        CHECK(arr.size() == 10);
        CHECK(std::ranges::all_of(arr, [](int x) { return x == 0; }));
        std::iota(arr.begin(), arr.end(), 0);  // arr[:] = range(10)
        CHECK(std::ranges::equal(arr, std::views::iota(0, 10)));
    }
    mp::RawArray<double> d(5);
    CHECK(std::ranges::all_of(d, [](double x) { return x == 0.0; }));
    mp::Array<Point> pts(3);
    CHECK(std::ranges::all_of(pts, [](const Point& p) { return p == Point{0, 0}; }));
    mp::Array<WithDefaults> w(2);  // a struct's own default values, as anywhere else
    CHECK(w[0].a == 7);
    CHECK(w[1].b == 2.5);
    mp::Array<int> empty(0);
    CHECK(empty.size() == 0);
    CHECK(empty.begin() == empty.end());
}

TEST_CASE("Array: made from an initializer list, a vector, std::views::iota and other ranges", "[array]") {
    mp::Array<int> a{0, 1, 2, 3};  // Array('i', range(4))
    CHECK(a.size() == 4);
    CHECK(std::ranges::equal(a, std::vector{0, 1, 2, 3}));

    std::vector<int> v{5, 6, 7};
    mp::Array<int> b(v);
    CHECK(std::ranges::equal(b, v));
    v[0] = 100;  // the array is a copy of the vector's elements
    CHECK(b[0] == 5);

    mp::Array<int> c(std::views::iota(0, 10));  // Array('i', range(10))
    CHECK(c.size() == 10);
    CHECK(std::ranges::equal(c, std::views::iota(0, 10)));

    // A range that does not know its size.
    auto evens = std::views::iota(0, 20) | std::views::filter([](int x) { return x % 2 == 0; });
    mp::RawArray<long> d(evens);
    CHECK(d.size() == 10);
    CHECK(std::ranges::equal(d, std::vector<long>{0, 2, 4, 6, 8, 10, 12, 14, 16, 18}));

    mp::Array<char> s(std::string_view("hello world"));  // Array('c', b'hello world')
    CHECK(std::string(s.begin(), s.end()) == "hello world");

    mp::RawArray<Point> pts{{1.875, -6.25}, {-5.75, 2.0}};
    CHECK(pts.size() == 2);
    CHECK(pts[1] == (Point{-5.75, 2.0}));
}

TEST_CASE("Array: span(), iteration and at()", "[array]") {
    mp::Array<int> a{3, 1, 2};
    std::span<int> s = a.span();
    CHECK(s.size() == 3);
    s[0] = 30;  // the same memory
    CHECK(a[0] == 30);

    int sum = 0;
    for (int x : a) sum += x;
    CHECK(sum == 33);
    std::ranges::sort(a);
    CHECK(std::ranges::equal(a, std::vector{1, 2, 30}));
    CHECK(a.data() == s.data());

    CHECK(a.at(2) == 30);
    a.at(1) = 20;
    CHECK(a[1] == 20);
    CHECK_THROWS_AS(a.at(3), mp::IndexError);
    CHECK_THROWS_AS(a.at(1000), std::out_of_range);  // IndexError is an out_of_range
    mp::Array<int> empty(0);
    CHECK_THROWS_AS(empty.at(0), mp::IndexError);
    const mp::RawArray<int>& raw = a.get_obj();
    CHECK(raw.at(0) == 1);
    CHECK_THROWS_AS(raw.at(3), mp::IndexError);
}

TEST_CASE("Array: a child's writes are the parent's reads (arr[i] = -arr[i])", "[array][processes]") {
    mp::Array<int> arr(std::views::iota(0, 10));
    in_child(
        [](mp::Array<int> a) {
            for (auto& x : a) x = -x;
        },
        arr);
    CHECK(std::ranges::equal(arr, std::views::iota(0, 10) | std::views::transform([](int x) { return -x; })));
}

TEST_CASE("Array: copies of a handle share the same memory", "[array][processes]") {
    mp::Array<int> a(4);
    auto b = a;
    b[0] = 42;
    CHECK(a[0] == 42);
    CHECK(a.data() == b.data());

    mp::Array<int> c(2);
    c = a;  // now the same array as a
    CHECK(c.size() == 4);
    c[3] = 7;
    CHECK(a[3] == 7);

    in_child([](mp::Array<int> copy) { copy[1] = 99; }, b);
    CHECK(a[1] == 99);

    mp::RawArray<int> r(3);
    mp::RawArray<int> r2 = r;
    r2[2] = 5;
    CHECK(r[2] == 5);
}

TEST_CASE("RawArray<Point>: a struct array modified in a child", "[array][processes]") {
    mp::RawArray<Point> pts{{1.875, -6.25}, {-5.75, 2.0}};
    in_child(
        [](mp::RawArray<Point> a) {
            for (auto& p : a) {
                p.x *= p.x;
                p.y *= p.y;
            }
        },
        pts);
    CHECK(pts[0] == (Point{3.515625, 39.0625}));
    CHECK(pts[1] == (Point{33.0625, 4.0}));
}

TEST_CASE("Array: get_lock(), a given lock, and 4 processes updating under it", "[array][lock][processes]") {
    SECTION("the default RLock; updates under it are exact") {
        mp::Array<int> a(2);
        Children kids;
        for (int i = 0; i < 4; ++i)
            kids.start(
                [](mp::Array<int> arr) {
                    for (int k = 0; k < 2500; ++k) {
                        std::lock_guard g(arr.get_lock());
                        arr[0] += 1;
                        arr[1] += 2;
                    }
                },
                a);
        kids.join_all(std::chrono::seconds(60));
        CHECK(a[0] == 10000);
        CHECK(a[1] == 20000);
        CHECK(a.get_lock().acquire(false));
        CHECK(a.get_lock().acquire(false));  // re-entrant
        a.get_lock().release();
        a.release();
    }
    SECTION("Array<T, Lock>(n, lock): the given lock") {
        mp::Lock lock;
        mp::Array<double, mp::Lock> a(3, lock);
        CHECK(std::ranges::all_of(a, [](double x) { return x == 0.0; }));
        a.acquire();
        CHECK_FALSE(lock.try_lock());
        in_child([](mp::Lock l) { CHILD_REQUIRE(!l.acquire(false)); }, lock);
        a.release();
        CHECK(lock.try_lock());
        lock.release();
    }
    SECTION("Array(items, lock): elements from a sequence, and the given lock") {
        // Python: Array('c', b'hello world', lock=lock); Array(Point, [...], lock=lock)
        mp::Lock lock;
        mp::Array<char, mp::Lock> s(std::string_view("hello world"), lock);
        mp::Array<Point, mp::Lock> pts({{1.875, -6.25}, {-5.75, 2.0}}, lock);
        mp::Array<int, mp::Lock> r(std::views::iota(0, 5), lock);
        CHECK(std::string(s.begin(), s.end()) == "hello world");
        CHECK(pts[1] == (Point{-5.75, 2.0}));
        CHECK(std::ranges::equal(r, std::views::iota(0, 5)));
        std::lock_guard g(s.get_lock());  // one lock for the three
        CHECK_FALSE(pts.get_lock().try_lock());
        CHECK_FALSE(r.get_lock().try_lock());
    }
}

TEST_CASE("Each shared value keeps one fd, and at the soft fd limit that limit is raised, not hit", "[sharedctypes][fds]") {
    struct rlimit original {};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &original) == 0);
    if (original.rlim_max != RLIM_INFINITY && original.rlim_max < 1024) {
        WARN("the hard fd limit is " << original.rlim_max << ": too low to test raising the soft one");
        return;
    }
    struct rlimit low = original;
    low.rlim_cur = 256;
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
    struct Restore {
        struct rlimit limit;
        ~Restore() { ::setrlimit(RLIMIT_NOFILE, &limit); }
    } restore{original};
    {
        std::vector<mp::RawValue<int>> values;
        for (int i = 0; i < 400; ++i) values.emplace_back(i);  // more than 256 fds
        int sum = 0;
        for (const auto& v : values) sum += v.value();
        CHECK(sum == 399 * 400 / 2);
        struct rlimit now {};
        REQUIRE(::getrlimit(RLIMIT_NOFILE, &now) == 0);
        CHECK(now.rlim_cur == original.rlim_max);
    }
}
