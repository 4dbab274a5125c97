#pragma once
// A STREAM-style parallel copy: the bandwidth yardstick the benchmarks compare kernels with.
// Large copies stream their stores past the caches, as normkit's large outputs do: glibc's
// memcpy (which keeps them) moved 32-200 MB 1.6-1.9x slower than such a loop on the machine
// the benchmarks were recorded on, so with it the yardstick said kernels were faster than a
// copy that was itself slow.

#include <cstddef>

namespace normkit {

// dst[0, bytes) = src[0, bytes), split over the kernel threads (get_num_threads()).
void parallel_copy(void* dst, const void* src, std::size_t bytes);

}  // namespace normkit
