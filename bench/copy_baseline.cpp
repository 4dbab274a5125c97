#include "copy_baseline.hpp"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace normkit_bench {

double copy_seconds(std::size_t bytes, int threads) {
  static std::map<std::pair<std::size_t, int>, double> cache;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(bytes, threads);
  if (auto it = cache.find(key); it != cache.end()) return it->second;

  const std::size_t half = bytes / 2;
  std::vector<char> src(half, 1), dst(half, 0);
  std::vector<double> times;
  for (int rep = 0; rep < 15; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
    {
      const std::size_t t = static_cast<std::size_t>(omp_get_thread_num());
      const std::size_t n = static_cast<std::size_t>(omp_get_num_threads());
      const std::size_t begin = half * t / n, end = half * (t + 1) / n;
      std::memcpy(dst.data() + begin, src.data() + begin, end - begin);
    }
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return cache[key] = times[times.size() / 2];
}

}  // namespace normkit_bench
