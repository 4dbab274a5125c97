#pragma once
// Benchmark buffers aligned to 64 bytes (a cache line, an AVX-512 register), for normkit and its
// peers alike: normkit's Python API hands out large outputs aligned so, and a misaligned output
// would cost streaming stores a scalar head and tail on every short row.

#include <cstddef>
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

}  // namespace normkit_bench
