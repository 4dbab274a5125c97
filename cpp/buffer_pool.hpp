#pragma once
// A cache of large output buffers. Fresh multi-megabyte allocations are mapped anew by the C
// library on every call, and the first write to each page then costs a page fault and a
// zero-fill in the kernel: for a 50 MB output that is as slow as the normalization itself. In a
// training loop the same sizes come back every step, so blocks released by one step serve the
// next, already mapped. The cache holds at most kMaxCachedBytes; release_cached() empties it.

#include <cstddef>

namespace normkit {

// Smaller: plain allocation. Outputs from 128 KiB up are mapped anew too, once the C library's
// heap has been trimmed: an 800 KB output (8x512x7x7 float32) took 7-10 us of page faults per
// call, a third of its 25 us inference.
constexpr std::size_t kPoolMinBytes = std::size_t{128} << 10;
constexpr std::size_t kMaxCachedBytes = std::size_t{1} << 30;  // cap on idle cached memory

// A block of at least `bytes` (64-byte aligned); throws std::bad_alloc.
void* pool_acquire(std::size_t bytes);
// Returns a block from pool_acquire(bytes) to the cache (or frees it past the cap).
void pool_release(void* block, std::size_t bytes);
// Frees every idle cached block; returns the bytes freed.
std::size_t pool_release_cached();
std::size_t pool_cached_bytes();

}  // namespace normkit
