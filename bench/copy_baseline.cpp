#include "copy_baseline.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <utility>
#include <vector>

#include "aligned_buffer.hpp"
#include "copy.hpp"
#include "threading.hpp"

namespace normkit_bench {

double copy_seconds(std::size_t bytes, int threads) {
  static std::map<std::pair<std::size_t, int>, double> cache;
  const auto key = std::make_pair(bytes, threads);
  if (auto it = cache.find(key); it != cache.end()) return it->second;

  const int before = normkit::get_num_threads();
  normkit::set_num_threads(threads);
  const std::size_t half = bytes / 2;
  normkit_bench::Buffer<char> src(half, 1), dst(half, 0);
  std::vector<double> times;
  for (int rep = 0; rep < 15; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    normkit::parallel_copy(dst.data(), src.data(), half);
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  normkit::set_num_threads(before);
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return cache[key] = times[times.size() / 2];
}

}  // namespace normkit_bench
