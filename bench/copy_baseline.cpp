#include "copy_baseline.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "aligned_buffer.hpp"
#include "copy.hpp"
#include "threading.hpp"

namespace normkit_bench {
namespace {

// Median seconds per call of f() over `batches` timed batches on `threads` threads. A batch repeats
// f for at least kMinBatch (one call for arrays from memory; many for small ones, whose single
// calls took 10-50 us and whose median of 9 moved by a factor of two between runs of the same
// binary), after one untimed batch that brings the buffers into the caches and wakes the threads.
template <class F>
double median_seconds(int threads, int batches, const F& f) {
  using Clock = std::chrono::steady_clock;
  constexpr double kMinBatch = 2e-3;
  const int before = normkit::get_num_threads();
  normkit::set_num_threads(threads);
  auto batch = [&](int64_t calls) {
    const auto t0 = Clock::now();
    for (int64_t i = 0; i < calls; ++i) f();
    return std::chrono::duration<double>(Clock::now() - t0).count() / static_cast<double>(calls);
  };
  const double first = batch(1);
  const int64_t calls = first >= kMinBatch ? 1 : static_cast<int64_t>(kMinBatch / first) + 1;
  batch(calls);
  std::vector<double> times;
  for (int rep = 0; rep < batches; ++rep) times.push_back(batch(calls));
  normkit::set_num_threads(before);
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

// Buffers of at least `n` values, kept from call to call (per slot): a fresh pair of buffers per
// benchmark spent more time in page faults than in copying (a third of a smoke run of every
// benchmark). Their contents do not matter; the untimed first batch maps them either way.
template <class T>
T* reused(int slot, std::size_t n) {
  static Buffer<T> buffers[2];
  Buffer<T>& b = buffers[slot];
  if (b.size() < n) {
    b = Buffer<T>();  // (freed before the larger one is mapped)
    b.resize(n);
  }
  return b.data();
}

constexpr int64_t kWords = int64_t{1} << 14;  // 32-bit words per task of the two-pass pattern

// Pass 1 of the two-pass pattern: an integer sum (vectorizes without reordering any float sum).
uint32_t block_sum(const uint32_t* in, int64_t n) {
  uint32_t s = 0;
  for (int64_t i = 0; i < n; ++i) s += in[i];
  return s;
}

// Pass 2: out[i] = in[i] ^ in[i + stride] (the second term when there are two inputs) ^ k,
// streamed past the caches where SSE2 has streaming stores.
void block_out(uint32_t* out, const uint32_t* in, int64_t stride, bool two_inputs, uint32_t k,
               int64_t n) {
  int64_t i = 0;
#if defined(__SSE2__)
  const __m128i k_v = _mm_set1_epi32(static_cast<int>(k));
  for (; i + 4 <= n; i += 4) {
    __m128i v = _mm_xor_si128(_mm_load_si128(reinterpret_cast<const __m128i*>(in + i)), k_v);
    if (two_inputs)
      v = _mm_xor_si128(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i + stride)));
    _mm_stream_si128(reinterpret_cast<__m128i*>(out + i), v);
  }
  _mm_sfence();
#endif
  for (; i < n; ++i) out[i] = in[i] ^ (two_inputs ? in[i + stride] : 0u) ^ k;
}

}  // namespace

double copy_seconds(std::size_t bytes, int threads, int batches) {
  const std::size_t half = bytes / 2;
  char *src = reused<char>(0, half), *dst = reused<char>(1, half);
  return median_seconds(threads, batches, [&] { normkit::parallel_copy(dst, src, half); });
}

double two_pass_seconds(std::size_t in_bytes, std::size_t out_bytes, int threads, int batches) {
  const int64_t n_out = static_cast<int64_t>(out_bytes / 4);
  const bool two_inputs = in_bytes >= 2 * out_bytes;
  const int64_t n_in = two_inputs ? 2 * n_out : n_out;
  const uint32_t* in = reused<uint32_t>(0, static_cast<std::size_t>(n_in));
  uint32_t* out = reused<uint32_t>(1, static_cast<std::size_t>(n_out));
  std::vector<uint32_t> sums(static_cast<std::size_t>((n_in + kWords - 1) / kWords));
  return median_seconds(threads, batches, [&] {
    normkit::parallel_for(static_cast<int64_t>(sums.size()), kWords, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        sums[b] = block_sum(in + b * kWords, std::min(kWords, n_in - b * kWords));
    });
    uint32_t k = 0;
    for (uint32_t s : sums) k += s;
    const int64_t n_tasks = (n_out + kWords - 1) / kWords;
    normkit::parallel_for(n_tasks, kWords, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        block_out(out + t * kWords, in + t * kWords, n_out, two_inputs, k,
                  std::min(kWords, n_out - t * kWords));
    });
  });
}

}  // namespace normkit_bench
