#include "onednn_peer.hpp"

#include <omp.h>

#include <memory>
#include <oneapi/dnnl/dnnl.hpp>
#include <unordered_map>
#include <vector>

#include "aligned_buffer.hpp"

namespace normkit_bench::onednn {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;
constexpr float kEps = 1e-5f;
const auto kFlags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;

dnnl::engine& engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

// Buffers, memories and the primitive, kept alive by the returned call.
struct Case {
  dnnl::stream stream{engine()};
  std::vector<normkit_bench::Buffer<float>> storage;
  dnnl::primitive primitive;
  std::unordered_map<int, memory> args;

  memory make(const memory::desc& md) {
    const auto seed = static_cast<unsigned>(storage.size() + 1);
    storage.push_back(normkit_bench::random_values<float>(md.get_size() / sizeof(float), seed));
    return memory(md, engine(), storage.back().data());
  }
  std::function<void()> call(std::shared_ptr<Case> self) {
    return [self] {
      self->primitive.execute(self->stream, self->args);
      self->stream.wait();
    };
  }
};

memory::desc data_desc(int64_t n, int64_t c, int64_t s) {
  if (s == 1) return memory::desc({n, c}, dt::f32, tag::nc);
  return memory::desc({n, c, s, 1}, dt::f32, tag::nchw);
}

memory::desc channel_desc(int64_t c) { return memory::desc({c}, dt::f32, tag::a); }

}  // namespace

void set_threads(int threads) { omp_set_num_threads(threads); }

std::function<void()> layer_norm_forward(int64_t rows, int64_t cols) {
  auto k = std::make_shared<Case>();
  const memory::desc md({rows, cols}, dt::f32, tag::ab);
  const dnnl::layer_normalization_forward::desc d(dnnl::prop_kind::forward_training, md, kEps,
                                                  kFlags);
  const dnnl::layer_normalization_forward::primitive_desc pd(d, engine());
  k->primitive = dnnl::layer_normalization_forward(pd);
  k->args = {{DNNL_ARG_SRC, k->make(md)},
             {DNNL_ARG_DST, k->make(md)},
             {DNNL_ARG_MEAN, k->make(pd.mean_desc())},
             {DNNL_ARG_VARIANCE, k->make(pd.variance_desc())},
             {DNNL_ARG_SCALE, k->make(channel_desc(cols))},
             {DNNL_ARG_SHIFT, k->make(channel_desc(cols))}};
  return k->call(k);
}

std::function<void()> layer_norm_backward(int64_t rows, int64_t cols) {
  auto k = std::make_shared<Case>();
  const memory::desc md({rows, cols}, dt::f32, tag::ab);
  const dnnl::layer_normalization_forward::desc fd(dnnl::prop_kind::forward_training, md, kEps,
                                                   kFlags);
  const dnnl::layer_normalization_forward::primitive_desc fpd(fd, engine());
  const dnnl::layer_normalization_backward::desc d(dnnl::prop_kind::backward, md, md, kEps, kFlags);
  const dnnl::layer_normalization_backward::primitive_desc pd(d, engine(), fpd);
  k->primitive = dnnl::layer_normalization_backward(pd);
  memory variance = k->make(fpd.variance_desc());
  for (float& v : k->storage.back()) v = v * v + 0.5f;  // a variance is positive
  k->args = {{DNNL_ARG_SRC, k->make(md)},
             {DNNL_ARG_DIFF_DST, k->make(md)},
             {DNNL_ARG_MEAN, k->make(fpd.mean_desc())},
             {DNNL_ARG_VARIANCE, variance},
             {DNNL_ARG_SCALE, k->make(channel_desc(cols))},
             {DNNL_ARG_SHIFT, k->make(channel_desc(cols))},
             {DNNL_ARG_DIFF_SRC, k->make(md)},
             {DNNL_ARG_DIFF_SCALE, k->make(channel_desc(cols))},
             {DNNL_ARG_DIFF_SHIFT, k->make(channel_desc(cols))}};
  return k->call(k);
}

std::function<void()> batch_norm_forward(int64_t n, int64_t c, int64_t s, bool training) {
  auto k = std::make_shared<Case>();
  const memory::desc md = data_desc(n, c, s);
  const auto flags = training ? kFlags : kFlags | dnnl::normalization_flags::use_global_stats;
  const dnnl::batch_normalization_forward::desc d(
      training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference, md, kEps,
      flags);
  const dnnl::batch_normalization_forward::primitive_desc pd(d, engine());
  k->primitive = dnnl::batch_normalization_forward(pd);
  memory variance = k->make(channel_desc(c));
  for (float& v : k->storage.back()) v = v * v + 0.5f;
  k->args = {{DNNL_ARG_SRC, k->make(md)},
             {DNNL_ARG_DST, k->make(md)},
             {DNNL_ARG_MEAN, k->make(channel_desc(c))},
             {DNNL_ARG_VARIANCE, variance},
             {DNNL_ARG_SCALE, k->make(channel_desc(c))},
             {DNNL_ARG_SHIFT, k->make(channel_desc(c))}};
  return k->call(k);
}

std::function<void()> batch_norm_backward(int64_t n, int64_t c, int64_t s) {
  auto k = std::make_shared<Case>();
  const memory::desc md = data_desc(n, c, s);
  const dnnl::batch_normalization_forward::desc fd(dnnl::prop_kind::forward_training, md, kEps,
                                                   kFlags);
  const dnnl::batch_normalization_forward::primitive_desc fpd(fd, engine());
  const dnnl::batch_normalization_backward::desc d(dnnl::prop_kind::backward, md, md, kEps, kFlags);
  const dnnl::batch_normalization_backward::primitive_desc pd(d, engine(), fpd);
  k->primitive = dnnl::batch_normalization_backward(pd);
  memory variance = k->make(channel_desc(c));
  for (float& v : k->storage.back()) v = v * v + 0.5f;
  k->args = {{DNNL_ARG_SRC, k->make(md)},
             {DNNL_ARG_DIFF_DST, k->make(md)},
             {DNNL_ARG_MEAN, k->make(channel_desc(c))},
             {DNNL_ARG_VARIANCE, variance},
             {DNNL_ARG_SCALE, k->make(channel_desc(c))},
             {DNNL_ARG_SHIFT, k->make(channel_desc(c))},
             {DNNL_ARG_DIFF_SRC, k->make(md)},
             {DNNL_ARG_DIFF_SCALE, k->make(channel_desc(c))},
             {DNNL_ARG_DIFF_SHIFT, k->make(channel_desc(c))}};
  return k->call(k);
}

}  // namespace normkit_bench::onednn
