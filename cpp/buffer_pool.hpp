#pragma once
// A cache of large output buffers. Fresh multi-megabyte allocations are mapped anew by the C
// library on every call, and the first write to each page then costs a page fault and a
// zero-fill in the kernel: for a 50 MB output that is as slow as the normalization itself. In a
// training loop the same sizes come back every step, so blocks released by one step serve the
// next, already mapped. The cache holds at most kMaxCachedBytes; release_cached() empties it.

#include <cstddef>

namespace normkit {

constexpr std::size_t kPoolMinBytes = std::size_t{1} << 20;    // smaller: plain allocation
constexpr std::size_t kMaxCachedBytes = std::size_t{1} << 30;  // cap on idle cached memory

// A block of at least `bytes` (64-byte aligned); throws std::bad_alloc.
void* pool_acquire(std::size_t bytes);
// Returns a block from pool_acquire(bytes) to the cache (or frees it past the cap).
void pool_release(void* block, std::size_t bytes);
// Frees every idle cached block; returns the bytes freed.
std::size_t pool_release_cached();
std::size_t pool_cached_bytes();

}  // namespace normkit
