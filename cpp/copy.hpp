#pragma once
// A STREAM-style parallel copy: the bandwidth yardstick the benchmarks compare kernels with.

#include <cstddef>

namespace normkit {

// dst[0, bytes) = src[0, bytes), split over the kernel threads (get_num_threads()).
void parallel_copy(void* dst, const void* src, std::size_t bytes);

}  // namespace normkit
