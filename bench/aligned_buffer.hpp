#pragma once
// Benchmark buffers aligned to 64 bytes (a cache line, an AVX-512 register), for normkit and its
// peers alike: normkit's Python API hands out large outputs aligned so, and a misaligned output
// would cost streaming stores a scalar head and tail on every short row. And the values that fill
// them.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

namespace normkit_bench {

template <class T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <class U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(std::size_t n) {
    void* p = std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) { std::free(p); }
  bool operator==(const Aligned64&) const { return true; }
  bool operator!=(const Aligned64&) const { return false; }
};

template <class T>
using Buffer = std::vector<T, Aligned64<T>>;

// Uniform values in [-1, 1) from a 64-bit LCG: cheap enough for arrays of 10^8 values. The
// kernels' speed should not depend on the values' distribution, and the Python comparison
// (python -m normkit bench) times normally distributed ones. (It did depend on it once: with
// each NCHW channel's first value as the shift of its statistics, normal data sent one channel
// in 22 through a second pass, which uniform values never need; see channel_ref.)
template <class T>
Buffer<T> random_values(std::size_t n, unsigned seed) {
  std::uint64_t state = 0x9E3779B97F4A7C15ull * (seed + 1);
  Buffer<T> v(n);
  for (auto& e : v) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    e = static_cast<T>(static_cast<double>(state >> 11) * 0x1.0p-52 - 1.0);
  }
  return v;
}

}  // namespace normkit_bench
