#include "workspace.hpp"

#include <cstdlib>
#include <new>

namespace normkit {
namespace {

constexpr int kCachedLevels = 8;  // nesting levels: the orchestration's, then the kernels'

struct Buffer {
  double* data = nullptr;
  std::size_t capacity = 0;  // doubles
};

struct ThreadCache {
  Buffer levels[kCachedLevels];
  int depth = 0;
  ~ThreadCache() {
    for (Buffer& b : levels) std::free(b.data);
  }
};

thread_local ThreadCache cache;

double* allocate(std::size_t n_doubles) {
  // 64-byte alignment: one cache line, one AVX-512 register.
  const std::size_t bytes = (n_doubles * sizeof(double) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  return static_cast<double*>(p);
}

}  // namespace

Workspace::Workspace(std::size_t n_doubles) : data_(nullptr), level_(cache.depth) {
  if (level_ >= kCachedLevels) {  // deeper than the cache: a private buffer
    data_ = n_doubles ? allocate(n_doubles) : nullptr;
  } else {
    Buffer& b = cache.levels[level_];
    if (b.capacity < n_doubles) {
      std::free(b.data);
      b.data = nullptr;
      b.capacity = 0;
      b.data = allocate(n_doubles);
      b.capacity = n_doubles;
    }
    data_ = b.data;
  }
  ++cache.depth;
}

Workspace::~Workspace() {
  --cache.depth;
  if (level_ >= kCachedLevels) std::free(data_);
}

double* Workspace::data() const { return data_; }

}  // namespace normkit
