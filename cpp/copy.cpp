#include "copy.hpp"

#include <cstdint>
#include <cstring>

#include "threading.hpp"

namespace normkit {

void parallel_copy(void* dst, const void* src, std::size_t bytes) {
  constexpr int64_t kBlock = int64_t{1} << 16;  // bytes per task
  const int64_t n_blocks = (static_cast<int64_t>(bytes) + kBlock - 1) / kBlock;
  // elements_per_task counts bytes / 4: a copy is as cheap per byte as the cheapest kernel.
  parallel_for(n_blocks, kBlock / 4, [&](int64_t b0, int64_t b1) {
    const std::size_t begin = static_cast<std::size_t>(b0 * kBlock);
    const std::size_t end =
        b1 * kBlock < static_cast<int64_t>(bytes) ? static_cast<std::size_t>(b1 * kBlock) : bytes;
    std::memcpy(static_cast<char*>(dst) + begin, static_cast<const char*>(src) + begin,
                end - begin);
  });
}

}  // namespace normkit
