#include "copy.hpp"

#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "cpu_features.hpp"
#include "threading.hpp"

namespace normkit {
namespace {

// dst[0, n) = src[0, n), the 16-byte blocks of dst written with streaming (non-temporal) stores
// where SSE2 has them (every x86-64 CPU), the unaligned ends with memcpy.
void stream_copy(char* dst, const char* src, std::size_t n) {
#if defined(__SSE2__)
  const std::size_t head = (16 - reinterpret_cast<std::uintptr_t>(dst) % 16) % 16;
  if (head >= n) {
    std::memcpy(dst, src, n);
    return;
  }
  std::memcpy(dst, src, head);
  std::size_t i = head;
  // Scalar math: dst[i, i + 64) = src[i, i + 64)
  for (; i + 64 <= n; i += 64) {
    const __m128i v0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m128i v1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    const __m128i v2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
    const __m128i v3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), v0);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), v1);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), v2);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), v3);
  }
  _mm_sfence();
  std::memcpy(dst + i, src + i, n - i);
#else
  std::memcpy(dst, src, n);
#endif
}

}  // namespace

void parallel_copy(void* dst, const void* src, std::size_t bytes) {
  constexpr int64_t kBlock = int64_t{1} << 16;  // bytes per task
  const int64_t n_blocks = (static_cast<int64_t>(bytes) + kBlock - 1) / kBlock;
  // As the kernels' outputs: streamed from stream_threshold_bytes() on.
  const bool stream = static_cast<long long>(bytes) >= stream_threshold_bytes();
  // elements_per_task counts bytes / 4: a copy is as cheap per byte as the cheapest kernel.
  parallel_for(n_blocks, kBlock / 4, [&](int64_t b0, int64_t b1) {
    const std::size_t begin = static_cast<std::size_t>(b0 * kBlock);
    const std::size_t end =
        b1 * kBlock < static_cast<int64_t>(bytes) ? static_cast<std::size_t>(b1 * kBlock) : bytes;
    char* d = static_cast<char*>(dst) + begin;
    const char* s = static_cast<const char*>(src) + begin;
    if (stream)
      stream_copy(d, s, end - begin);
    else
      std::memcpy(d, s, end - begin);
  });
}

}  // namespace normkit
