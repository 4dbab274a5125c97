// normkit_bench: every kernel (LayerNorm forward/backward; BatchNorm training forward,
// inference, training backward; both layouts) x float32/float64 x realistic shapes x every
// available ISA x 1 and all threads, timed with real time (OpenMP). Each row reports the
// compulsory bytes (inputs read once + outputs written once), GB/s, and pct_of_copy: the speed
// of a STREAM-style copy of the same byte count on the same threads, measured in this binary;
// BatchNorm training rows also pct_of_two_pass, against their own two-pass memory pattern.
// With -DNORMKIT_BENCH_ONEDNN=ON, oneDNN's primitives run the same float32 cases as peers.
// Buffers start on a cache line; the float32 cases run once more on the preferred ISA with the
// inputs 16 bytes past a line (the shape's label ends in /in+16B), as NumPy's large arrays start
// (its allocator's header), while the outputs stay aligned as the Python API allocates them.
//
//   normkit_bench [--benchmark_filter=REGEX] [--benchmark_format=json] [--benchmark_min_time=0.1s]

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "aligned_buffer.hpp"
#include "batch_norm.hpp"
#include "copy_baseline.hpp"
#include "dispatch.hpp"
#include "layer_norm.hpp"
#include "threading.hpp"
#ifdef NORMKIT_BENCH_ONEDNN
#include "onednn_peer.hpp"
#endif

namespace {

using normkit_bench::Buffer;
using normkit_bench::random_values;

struct LayerNormShape {
  int64_t rows, cols;
};
struct BatchNormShape {
  const char* label;
  int64_t n, c, s;  // x viewed as (n, c, s); s == 1 is channels-last
};

const LayerNormShape kLayerNormShapes[] = {
    {8192, 768}, {4096, 4096}, {65536, 128}, {1, 262144}, {256, 64}};
const BatchNormShape kBatchNormShapes[] = {{"32x64x56x56", 32, 64, 56 * 56},
                                           {"256x256x14x14", 256, 256, 14 * 14},
                                           {"8x512x7x7", 8, 512, 7 * 7},
                                           {"1024x1024", 1024, 1024, 1},
                                           {"nhwc_32x56x56x64", 32 * 56 * 56, 64, 1},
                                           {"32x16384", 32, 16384, 1}};

// Batches of a kernel's yardsticks: as many as the kernel's timed iterations, up to 9.
int yardstick_batches(const benchmark::State& state) {
  return state.iterations() < 9 ? static_cast<int>(state.iterations()) : 9;
}

// Times f with real time; reports bytes, GB/s and the percentage of a copy of `bytes`, and
// returns the seconds per call.
double run(benchmark::State& state, double bytes, int threads, const std::function<void()>& f) {
  f();  // warm-up: first touch, caches
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    f();
    benchmark::ClobberMemory();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double per_iteration = seconds / static_cast<double>(state.iterations());
  state.counters["bytes"] = bytes;
  state.counters["GB/s"] = bytes / per_iteration / 1e9;
  state.counters["pct_of_copy"] = 100.0 *
                                  normkit_bench::copy_seconds(static_cast<std::size_t>(bytes),
                                                              threads, yardstick_batches(state)) /
                                  per_iteration;
  return per_iteration;
}

// BatchNorm training must read its inputs twice (statistics, then the output): the percentage
// of that memory pattern's own time (two_pass_seconds), beside the percentage of a copy.
void report_two_pass(benchmark::State& state, double seconds, double in_bytes, double out_bytes,
                     int threads) {
  state.counters["pct_of_two_pass"] =
      100.0 *
      normkit_bench::two_pass_seconds(static_cast<std::size_t>(in_bytes),
                                      static_cast<std::size_t>(out_bytes), threads,
                                      yardstick_batches(state)) /
      seconds;
}

void use(normkit::Isa isa, int threads) {
  normkit::set_active_isa(isa);
  normkit::set_num_threads(threads);
}

// Where NumPy's large arrays start: 16 bytes past a cache line. `skew` below is in values.
constexpr std::size_t kNumPySkewBytes = 16;
const std::string kSkewLabel = "/in+16B";

template <class T>
void layer_norm_forward(benchmark::State& state, normkit::Isa isa, int threads, LayerNormShape sh,
                        std::size_t skew) {
  use(isa, threads);
  const std::size_t n = static_cast<std::size_t>(sh.rows * sh.cols);
  auto x_buf = random_values<T>(skew + n, 1), gamma = random_values<T>(sh.cols, 2),
       beta = random_values<T>(sh.cols, 3);
  const T* x = x_buf.data() + skew;
  Buffer<T> y(n), mean(sh.rows), rstd(sh.rows);
  const double bytes = double(sizeof(T)) * (2.0 * n + 2.0 * sh.cols + 2.0 * sh.rows);
  run(state, bytes, threads, [&] {
    normkit::layer_norm_forward<T>(y.data(), mean.data(), rstd.data(), x, gamma.data(), beta.data(),
                                   sh.rows, sh.cols, 1e-5);
  });
}

template <class T>
void layer_norm_backward(benchmark::State& state, normkit::Isa isa, int threads, LayerNormShape sh,
                         std::size_t skew) {
  use(isa, threads);
  const std::size_t n = static_cast<std::size_t>(sh.rows * sh.cols);
  auto x_buf = random_values<T>(skew + n, 1), dy_buf = random_values<T>(skew + n, 4),
       gamma = random_values<T>(sh.cols, 2);
  const T *x = x_buf.data() + skew, *dy = dy_buf.data() + skew;
  Buffer<T> y(n), dx(n), mean(sh.rows), rstd(sh.rows), dgamma(sh.cols), dbeta(sh.cols);
  normkit::layer_norm_forward<T>(y.data(), mean.data(), rstd.data(), x, gamma.data(), nullptr,
                                 sh.rows, sh.cols, 1e-5);
  const double bytes = double(sizeof(T)) * (3.0 * n + 3.0 * sh.cols + 2.0 * sh.rows);
  run(state, bytes, threads, [&] {
    normkit::layer_norm_backward<T>(dx.data(), dgamma.data(), dbeta.data(), dy, x, mean.data(),
                                    rstd.data(), gamma.data(), sh.rows, sh.cols);
  });
}

enum class BatchNormPass { train_forward, inference, train_backward };

template <class T>
void batch_norm(benchmark::State& state, normkit::Isa isa, int threads, BatchNormShape sh,
                BatchNormPass pass, std::size_t skew) {
  use(isa, threads);
  const std::size_t n = static_cast<std::size_t>(sh.n * sh.c * sh.s);
  const std::size_t c = static_cast<std::size_t>(sh.c);
  auto x_buf = random_values<T>(skew + n, 1), dy_buf = random_values<T>(skew + n, 4),
       gamma = random_values<T>(c, 2), beta = random_values<T>(c, 3);
  const T *x = x_buf.data() + skew, *dy = dy_buf.data() + skew;
  Buffer<T> y(n), dx(n), mean(c), invstd(c), running_mean(c, T(0)), running_var(c, T(1)), dgamma(c),
      dbeta(c);
  normkit::batch_norm_forward<T>(y.data(), mean.data(), invstd.data(), nullptr, nullptr, x,
                                 gamma.data(), beta.data(), sh.n, sh.c, sh.s, true, 0.1, 1e-5);
  const double elems = static_cast<double>(n);
  switch (pass) {
    case BatchNormPass::train_forward: {
      const double seconds = run(state, double(sizeof(T)) * 2.0 * elems, threads, [&] {
        normkit::batch_norm_forward<T>(y.data(), mean.data(), invstd.data(), running_mean.data(),
                                       running_var.data(), x, gamma.data(), beta.data(), sh.n, sh.c,
                                       sh.s, true, 0.1, 1e-5);
      });
      report_two_pass(state, seconds, double(sizeof(T)) * elems, double(sizeof(T)) * elems,
                      threads);
      break;
    }
    case BatchNormPass::inference:
      run(state, double(sizeof(T)) * 2.0 * elems, threads, [&] {
        normkit::batch_norm_forward<T>(y.data(), mean.data(), invstd.data(), running_mean.data(),
                                       running_var.data(), x, gamma.data(), beta.data(), sh.n, sh.c,
                                       sh.s, false, 0.1, 1e-5);
      });
      break;
    case BatchNormPass::train_backward: {
      const double seconds = run(state, double(sizeof(T)) * 3.0 * elems, threads, [&] {
        normkit::batch_norm_backward<T>(dx.data(), dgamma.data(), dbeta.data(), dy, x, mean.data(),
                                        invstd.data(), gamma.data(), sh.n, sh.c, sh.s, true);
      });
      report_two_pass(state, seconds, double(sizeof(T)) * 2.0 * elems, double(sizeof(T)) * elems,
                      threads);
      break;
    }
  }
}

const char* pass_name(BatchNormPass pass) {
  switch (pass) {
    case BatchNormPass::train_forward:
      return "batch_norm_train_fwd";
    case BatchNormPass::inference:
      return "batch_norm_infer";
    default:
      return "batch_norm_train_bwd";
  }
}

std::string ln_label(LayerNormShape sh) {
  return std::to_string(sh.rows) + "x" + std::to_string(sh.cols);
}

void configure(benchmark::internal::Benchmark* b) {
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

std::string name(const char* kernel, const char* dtype, const char* impl, int threads,
                 const std::string& label) {
  return std::string(kernel) + "/" + dtype + "/" + impl + "/threads:" + std::to_string(threads) +
         "/" + label;
}

// Each case registers normkit (every ISA, float32 and float64) and its oneDNN twin back to back,
// so on a shared machine the two sides of a ratio run close together in time.

void register_layer_norm(LayerNormShape sh, bool backward, int threads) {
  const char* kernel = backward ? "layer_norm_bwd" : "layer_norm_fwd";
  const std::size_t skew = kNumPySkewBytes / sizeof(float);
  for (normkit::Isa isa : normkit::available_isas()) {
    configure(benchmark::RegisterBenchmark(
        name(kernel, "f32", normkit::isa_name(isa), threads, ln_label(sh)).c_str(),
        [=](benchmark::State& s) {
          backward ? layer_norm_backward<float>(s, isa, threads, sh, 0)
                   : layer_norm_forward<float>(s, isa, threads, sh, 0);
        }));
    configure(benchmark::RegisterBenchmark(
        name(kernel, "f64", normkit::isa_name(isa), threads, ln_label(sh)).c_str(),
        [=](benchmark::State& s) {
          backward ? layer_norm_backward<double>(s, isa, threads, sh, 0)
                   : layer_norm_forward<double>(s, isa, threads, sh, 0);
        }));
  }
  const normkit::Isa best = normkit::available_isas().back();
  configure(benchmark::RegisterBenchmark(
      name(kernel, "f32", normkit::isa_name(best), threads, ln_label(sh) + kSkewLabel).c_str(),
      [=](benchmark::State& s) {
        backward ? layer_norm_backward<float>(s, best, threads, sh, skew)
                 : layer_norm_forward<float>(s, best, threads, sh, skew);
      }));
#ifdef NORMKIT_BENCH_ONEDNN
  namespace peer = normkit_bench::onednn;
  const double n = double(sh.rows * sh.cols);
  const double bytes = backward ? 4.0 * (3.0 * n + 3.0 * sh.cols + 2.0 * sh.rows)
                                : 4.0 * (2.0 * n + 2.0 * sh.cols + 2.0 * sh.rows);
  configure(benchmark::RegisterBenchmark(
      name(kernel, "f32", "onednn", threads, ln_label(sh)).c_str(), [=](benchmark::State& s) {
        peer::set_threads(threads);
        const std::function<void()> f = backward ? peer::layer_norm_backward(sh.rows, sh.cols)
                                                 : peer::layer_norm_forward(sh.rows, sh.cols);
        run(s, bytes, threads, f);
      }));
#endif
}

void register_batch_norm(BatchNormShape sh, BatchNormPass pass, int threads) {
  const char* kernel = pass_name(pass);
  const std::size_t skew = kNumPySkewBytes / sizeof(float);
  for (normkit::Isa isa : normkit::available_isas()) {
    configure(benchmark::RegisterBenchmark(
        name(kernel, "f32", normkit::isa_name(isa), threads, sh.label).c_str(),
        [=](benchmark::State& s) { batch_norm<float>(s, isa, threads, sh, pass, 0); }));
    configure(benchmark::RegisterBenchmark(
        name(kernel, "f64", normkit::isa_name(isa), threads, sh.label).c_str(),
        [=](benchmark::State& s) { batch_norm<double>(s, isa, threads, sh, pass, 0); }));
  }
  const normkit::Isa best = normkit::available_isas().back();
  configure(benchmark::RegisterBenchmark(
      name(kernel, "f32", normkit::isa_name(best), threads, sh.label + kSkewLabel).c_str(),
      [=](benchmark::State& s) { batch_norm<float>(s, best, threads, sh, pass, skew); }));
#ifdef NORMKIT_BENCH_ONEDNN
  namespace peer = normkit_bench::onednn;
  const double n = double(sh.n * sh.c * sh.s);
  const double bytes = (pass == BatchNormPass::train_backward ? 12.0 : 8.0) * n;
  configure(benchmark::RegisterBenchmark(
      name(kernel, "f32", "onednn", threads, sh.label).c_str(), [=](benchmark::State& s) {
        peer::set_threads(threads);
        const std::function<void()> f =
            pass == BatchNormPass::train_backward
                ? peer::batch_norm_backward(sh.n, sh.c, sh.s)
                : peer::batch_norm_forward(sh.n, sh.c, sh.s, pass == BatchNormPass::train_forward);
        const double seconds = run(s, bytes, threads, f);
        if (pass != BatchNormPass::inference)
          report_two_pass(s, seconds, bytes - 4.0 * n, 4.0 * n, threads);
      }));
#endif
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const int all = normkit::get_num_threads();
  std::vector<int> thread_counts{1};
  if (all > 1) thread_counts.push_back(all);
  benchmark::AddCustomContext("normkit_isa_available", [] {
    std::string names;
    for (normkit::Isa isa : normkit::available_isas())
      names += std::string(names.empty() ? "" : ",") + normkit::isa_name(isa);
    return names;
  }());
  for (int threads : thread_counts) {
    for (LayerNormShape sh : kLayerNormShapes)
      for (bool backward : {false, true}) register_layer_norm(sh, backward, threads);
    for (BatchNormShape sh : kBatchNormShapes)
      for (BatchNormPass pass :
           {BatchNormPass::train_forward, BatchNormPass::inference, BatchNormPass::train_backward})
        register_batch_norm(sh, pass, threads);
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
