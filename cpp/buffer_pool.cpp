#include "buffer_pool.hpp"

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace normkit {
namespace {

constexpr std::size_t kHugePage = std::size_t{2} << 20;
constexpr std::size_t kSmallGrain = std::size_t{64} << 10;

// Blocks of whole huge pages; below one huge page, of whole 64 KiB (a 200 KB output does not
// hold 2 MiB).
std::size_t grain(std::size_t bytes) { return bytes >= kHugePage ? kHugePage : kSmallGrain; }
std::size_t rounded(std::size_t bytes) {
  return (bytes + grain(bytes) - 1) / grain(bytes) * grain(bytes);
}

struct Pool {
  std::mutex mutex;
  std::multimap<std::size_t, void*> idle;  // rounded size -> block
  std::size_t idle_bytes = 0;
};

// Never destroyed: arrays may release blocks during interpreter shutdown.
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

}  // namespace

void* pool_acquire(std::size_t bytes) {
  const std::size_t size = rounded(bytes);
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    auto it = p.idle.find(size);
    if (it != p.idle.end()) {
      void* block = it->second;
      p.idle.erase(it);
      p.idle_bytes -= size;
      return block;
    }
  }
  void* block = std::aligned_alloc(grain(size), size);
  if (!block) throw std::bad_alloc();
#ifdef __linux__
  if (size >= kHugePage) madvise(block, size, MADV_HUGEPAGE);  // fewer, larger page faults
#endif
  return block;
}

void pool_release(void* block, std::size_t bytes) {
  const std::size_t size = rounded(bytes);
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    if (p.idle_bytes + size <= kMaxCachedBytes) {
      p.idle.emplace(size, block);
      p.idle_bytes += size;
      return;
    }
  }
  std::free(block);
}

std::size_t pool_release_cached() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  const std::size_t freed = p.idle_bytes;
  for (auto& entry : p.idle) std::free(entry.second);
  p.idle.clear();
  p.idle_bytes = 0;
  return freed;
}

std::size_t pool_cached_bytes() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  return p.idle_bytes;
}

}  // namespace normkit
