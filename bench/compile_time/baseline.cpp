// The baseline: what a program with only the standard library's <vector> and <thread> costs.
#include <thread>
#include <vector>

int square(int x) { return x * x; }

int main() {
    std::vector<int> v{1, 2, 3, 4, 5}, out(v.size());
    std::thread t([&] { for (std::size_t i = 0; i < v.size(); ++i) out[i] = square(v[i]); });
    t.join();
    return out[4] == 25 ? 0 : 1;
}
