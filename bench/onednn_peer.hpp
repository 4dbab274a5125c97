#pragma once
// oneDNN's layer and batch normalization primitives on the benchmark's float32 cases. Each
// factory builds the primitive and its buffers and returns a call that executes it once.

#include <cstdint>
#include <functional>

namespace normkit_bench::onednn {

void set_threads(int threads);  // oneDNN here runs on OpenMP

std::function<void()> layer_norm_forward(int64_t rows, int64_t cols);
std::function<void()> layer_norm_backward(int64_t rows, int64_t cols);
// x viewed as (n, c, s); s == 1 is a (rows, channels) table.
std::function<void()> batch_norm_forward(int64_t n, int64_t c, int64_t s, bool training);
std::function<void()> batch_norm_backward(int64_t n, int64_t c, int64_t s);

}  // namespace normkit_bench::onednn
