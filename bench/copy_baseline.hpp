#pragma once
// The bandwidth yardsticks, timed afresh at every call (right after the kernel they measure, so
// that a kernel and its yardstick see the same machine on a shared, noisy host):
//  - a STREAM-style copy moving a given number of bytes (half read, half written);
//  - the memory pattern of a kernel that must read its inputs twice (BatchNorm training: the
//    statistics, then the output from the same inputs), with next to no arithmetic.

#include <cstddef>

namespace normkit_bench {

// Each is the median of `batches` timed batches (at most 9 are worth it): as many as the kernel
// it is set against was timed in, so that a smoke run (one call of each kernel) does not spend
// most of its time on yardsticks.

// Median seconds of copying bytes / 2 bytes from one buffer to another.
double copy_seconds(std::size_t bytes, int threads, int batches);

// Median seconds of one pass reading in_bytes, then a second pass reading them again and
// writing out_bytes (streamed, like normkit's large outputs); in_bytes is 1 or 2 times out_bytes.
double two_pass_seconds(std::size_t in_bytes, std::size_t out_bytes, int threads, int batches);

}  // namespace normkit_bench
