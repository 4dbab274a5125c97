#pragma once
// The bandwidth yardstick: a STREAM-style copy moving a given number of bytes (half read, half
// written) with a given number of threads, timed once per (bytes, threads) and cached.

#include <cstddef>

namespace normkit_bench {

// Median seconds of copying bytes / 2 bytes from one buffer to another.
double copy_seconds(std::size_t bytes, int threads);

}  // namespace normkit_bench
