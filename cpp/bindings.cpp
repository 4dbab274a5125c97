// pybind11 bindings: convert and check arrays, allocate the outputs (copying inputs that overlap
// a given one), release the GIL, call the core. The Python layer (python/normkit) owns the
// user-facing API and its error messages; the checks here only guarantee that the core never sees a
// buffer of the wrong type or size.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <forward_list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "batch_norm.hpp"
#include "buffer_pool.hpp"
#include "copy.hpp"
#include "cpu_features.hpp"
#include "dispatch.hpp"
#include "layer_norm.hpp"
#include "threading.hpp"

namespace py = pybind11;

namespace {

using Shape = std::vector<py::ssize_t>;

// An uninitialised C-contiguous array; large ones come from the buffer pool and go back to it
// when the array is freed.
py::array empty_array(const Shape& shape, const py::dtype& dtype) {
  std::size_t bytes = static_cast<std::size_t>(dtype.itemsize());
  for (py::ssize_t n : shape) bytes *= static_cast<std::size_t>(n);
  if (bytes < normkit::kPoolMinBytes) return py::array(dtype, shape);
  struct Block {
    void* data;
    std::size_t bytes;
  };
  auto* held = new Block{normkit::pool_acquire(bytes), bytes};
  py::capsule release(held, [](void* p) {
    auto* b = static_cast<Block*>(p);
    normkit::pool_release(b->data, b->bytes);
    delete b;
  });
  return py::array(dtype, shape, held->data, release);
}

py::array empty_like(const py::array& x) {
  return empty_array(Shape(x.shape(), x.shape() + x.ndim()), x.dtype());
}

// `out` if given (checked where its pointer is taken), else a new array shaped like x (its
// inputs then cannot overlap it).
py::array output_or_new(const py::object& out, const py::array& x) {
  return out.is_none() ? empty_like(x) : py::cast<py::array>(out);
}

template <class T>
void check_array(const py::array& a, const char* name, int64_t size, bool writeable) {
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + ": expected dtype " +
                         std::string(py::str(py::dtype::of<T>())) + ", got " +
                         std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  if (writeable && !a.writeable())
    throw py::value_error(std::string(name) + ": expected a writeable array");
  if (static_cast<int64_t>(a.size()) != size)
    throw py::value_error(std::string(name) + ": expected " + std::to_string(size) +
                          " elements, got " + std::to_string(a.size()));
}

template <class T>
const T* in(const py::array& a, const char* name, int64_t size) {
  check_array<T>(a, name, size, false);
  return static_cast<const T*>(a.data());
}

template <class T>
const T* in_optional(const py::object& a, const char* name, int64_t size) {
  if (a.is_none()) return nullptr;
  return in<T>(py::cast<py::array>(a), name, size);
}

template <class T>
T* out(py::array& a, const char* name, int64_t size) {
  check_array<T>(a, name, size, true);
  return static_cast<T*>(a.mutable_data());
}

template <class T>
T* out_optional(const py::object& a, const char* name, int64_t size) {
  if (a.is_none()) return nullptr;
  py::array arr = py::cast<py::array>(a);
  return out<T>(arr, name, size);
}

// The inputs of a kernel writing into y: one that overlaps y is copied first, so that writing y
// cannot change a value the kernel has yet to read. x may be y itself (`may_be_y`): the kernels
// read each value before writing it.
template <class T>
class Unaliased {
 public:
  Unaliased(const T* y, int64_t size) : y_(address(y)), y_end_(address(y + size)) {}

  const T* operator()(const T* a, int64_t size, bool may_be_y = false) {
    if (!a || address(a + size) <= y_ || y_end_ <= address(a)) return a;
    if (may_be_y && address(a) == y_ && address(a + size) == y_end_) return a;
    copies_.emplace_front(a, a + size);
    return copies_.front().data();
  }

 private:
  static std::uintptr_t address(const T* p) { return reinterpret_cast<std::uintptr_t>(p); }
  std::uintptr_t y_, y_end_;
  std::forward_list<std::vector<T>> copies_;
};

// The per-row or per-channel statistics a forward writes: new arrays of `shape` when the caller
// wants them returned (`arrays` then holds them), else scratch memory (`scratch`): an array
// costs a NumPy allocation, a sizeable share of a call on a small input.
template <class T>
struct Statistics {
  py::object arrays[2] = {py::none(), py::none()};
  std::unique_ptr<T[]> scratch;
  T* data[2];

  Statistics(const std::optional<Shape>& shape, int64_t size) {
    if (shape) {
      for (int k = 0; k < 2; ++k) {
        py::array_t<T> a(*shape);
        data[k] = out<T>(a, "statistics", size);
        arrays[k] = std::move(a);
      }
    } else {
      scratch.reset(new T[2 * static_cast<std::size_t>(size)]);
      data[0] = scratch.get();
      data[1] = data[0] + size;
    }
  }
};

template <class T>
py::tuple layer_norm_forward_t(const py::array& x, const py::object& gamma, const py::object& beta,
                               double eps, const py::object& y_out,
                               const std::optional<Shape>& stats_shape, int64_t rows,
                               int64_t cols) {
  py::array y = output_or_new(y_out, x);
  T* y_p = out<T>(y, "y", rows * cols);
  Unaliased<T> unaliased(y_p, rows * cols);
  const T* x_p = unaliased(in<T>(x, "x", rows * cols), rows * cols, true);
  const T* gamma_p = unaliased(in_optional<T>(gamma, "gamma", cols), cols);
  const T* beta_p = unaliased(in_optional<T>(beta, "beta", cols), cols);
  Statistics<T> stats(stats_shape, rows);
  {
    py::gil_scoped_release release;
    normkit::layer_norm_forward<T>(y_p, stats.data[0], stats.data[1], x_p, gamma_p, beta_p, rows,
                                   cols, eps);
  }
  return py::make_tuple(y, stats.arrays[0], stats.arrays[1]);
}

template <class T>
py::tuple layer_norm_backward_t(const py::array& dy, const py::array& x, const py::array& mean,
                                const py::array& rstd, const py::object& gamma,
                                const Shape& param_shape, int64_t rows, int64_t cols) {
  const T* dy_p = in<T>(dy, "dy", rows * cols);
  const T* x_p = in<T>(x, "x", rows * cols);
  const T* mean_p = in<T>(mean, "mean", rows);
  const T* rstd_p = in<T>(rstd, "rstd", rows);
  const T* gamma_p = in_optional<T>(gamma, "gamma", cols);
  py::array dx = empty_like(x);
  py::object dgamma = gamma_p ? py::array_t<T>(param_shape) : py::object(py::none());
  py::object dbeta = gamma_p ? py::array_t<T>(param_shape) : py::object(py::none());
  T* dx_p = out<T>(dx, "dx", rows * cols);
  T* dgamma_p = out_optional<T>(dgamma, "dgamma", cols);
  T* dbeta_p = out_optional<T>(dbeta, "dbeta", cols);
  {
    py::gil_scoped_release release;
    normkit::layer_norm_backward<T>(dx_p, dgamma_p, dbeta_p, dy_p, x_p, mean_p, rstd_p, gamma_p,
                                    rows, cols);
  }
  return py::make_tuple(dx, dgamma, dbeta);
}

template <class T>
py::tuple batch_norm_forward_t(const py::array& x, const py::object& running_mean,
                               const py::object& running_var, const py::object& gamma,
                               const py::object& beta, const py::object& y_out, int64_t n,
                               int64_t c, int64_t s, bool training, double momentum, double eps,
                               bool stats_wanted) {
  py::array y = output_or_new(y_out, x);
  T* y_p = out<T>(y, "y", n * c * s);
  Unaliased<T> unaliased(y_p, n * c * s);
  const T* x_p = unaliased(in<T>(x, "x", n * c * s), n * c * s, true);
  T* rm_p = out_optional<T>(running_mean, "running_mean", c);
  T* rv_p = out_optional<T>(running_var, "running_var", c);
  const T* gamma_p = unaliased(in_optional<T>(gamma, "gamma", c), c);
  const T* beta_p = unaliased(in_optional<T>(beta, "beta", c), c);
  Statistics<T> stats(stats_wanted ? std::optional<Shape>(Shape{c}) : std::nullopt, c);
  {
    py::gil_scoped_release release;
    normkit::batch_norm_forward<T>(y_p, stats.data[0], stats.data[1], rm_p, rv_p, x_p, gamma_p,
                                   beta_p, n, c, s, training, momentum, eps);
  }
  return py::make_tuple(y, stats.arrays[0], stats.arrays[1]);
}

template <class T>
py::tuple batch_norm_backward_t(const py::array& dy, const py::array& x, const py::array& mean,
                                const py::array& invstd, const py::object& gamma, int64_t n,
                                int64_t c, int64_t s, bool training) {
  const T* dy_p = in<T>(dy, "dy", n * c * s);
  const T* x_p = in<T>(x, "x", n * c * s);
  const T* mean_p = in<T>(mean, "mean", c);
  const T* invstd_p = in<T>(invstd, "invstd", c);
  const T* gamma_p = in_optional<T>(gamma, "gamma", c);
  py::array dx = empty_like(x);
  py::object dgamma = gamma_p ? py::array_t<T>(c) : py::object(py::none());
  py::object dbeta = gamma_p ? py::array_t<T>(c) : py::object(py::none());
  T* dx_p = out<T>(dx, "dx", n * c * s);
  T* dgamma_p = out_optional<T>(dgamma, "dgamma", c);
  T* dbeta_p = out_optional<T>(dbeta, "dbeta", c);
  {
    py::gil_scoped_release release;
    normkit::batch_norm_backward<T>(dx_p, dgamma_p, dbeta_p, dy_p, x_p, mean_p, invstd_p, gamma_p,
                                    n, c, s, training);
  }
  return py::make_tuple(dx, dgamma, dbeta);
}

bool is_float32(const py::array& a) { return a.dtype().is(py::dtype::of<float>()); }

std::vector<std::string> available_isa_names() {
  std::vector<std::string> names;
  for (normkit::Isa isa : normkit::available_isas()) names.emplace_back(normkit::isa_name(isa));
  return names;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "normkit's compiled core: SIMD + OpenMP normalization kernels";

  // Choose the ISA now, so a bad NORMKIT_ISA fails the import with its message.
  normkit::active_isa();

  m.def(
      "layer_norm_forward",
      [](const py::array& x, const py::object& gamma, const py::object& beta, double eps,
         const py::object& y, const std::optional<Shape>& stats_shape, int64_t rows, int64_t cols) {
        if (is_float32(x))
          return layer_norm_forward_t<float>(x, gamma, beta, eps, y, stats_shape, rows, cols);
        return layer_norm_forward_t<double>(x, gamma, beta, eps, y, stats_shape, rows, cols);
      },
      py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("eps"), py::arg("y"),
      py::arg("stats_shape"), py::arg("rows"), py::arg("cols"),
      "LayerNorm forward over the last axis of a C-contiguous (rows, cols) array: (y, mean, "
      "rstd), y written into `y` if given; mean and rstd new arrays of stats_shape, or None "
      "when stats_shape is None.");

  m.def(
      "layer_norm_backward",
      [](const py::array& dy, const py::array& x, const py::array& mean, const py::array& rstd,
         const py::object& gamma, const Shape& param_shape, int64_t rows, int64_t cols) {
        if (is_float32(x))
          return layer_norm_backward_t<float>(dy, x, mean, rstd, gamma, param_shape, rows, cols);
        return layer_norm_backward_t<double>(dy, x, mean, rstd, gamma, param_shape, rows, cols);
      },
      py::arg("dy"), py::arg("x"), py::arg("mean"), py::arg("rstd"), py::arg("gamma"),
      py::arg("param_shape"), py::arg("rows"), py::arg("cols"),
      "LayerNorm backward: (dx, dgamma, dbeta), new arrays; dgamma and dbeta (of param_shape) "
      "only when gamma is given, else None.");

  m.def(
      "batch_norm_forward",
      [](const py::array& x, const py::object& running_mean, const py::object& running_var,
         const py::object& gamma, const py::object& beta, const py::object& y, int64_t n, int64_t c,
         int64_t s, bool training, double momentum, double eps, bool stats) {
        if (is_float32(x))
          return batch_norm_forward_t<float>(x, running_mean, running_var, gamma, beta, y, n, c, s,
                                             training, momentum, eps, stats);
        return batch_norm_forward_t<double>(x, running_mean, running_var, gamma, beta, y, n, c, s,
                                            training, momentum, eps, stats);
      },
      py::arg("x"), py::arg("running_mean"), py::arg("running_var"), py::arg("gamma"),
      py::arg("beta"), py::arg("y"), py::arg("n"), py::arg("c"), py::arg("s"), py::arg("training"),
      py::arg("momentum"), py::arg("eps"), py::arg("stats"),
      "BatchNorm forward over x viewed as (n, c, s): (y, mean, invstd), y written into `y` if "
      "given, mean and invstd new arrays if `stats`, else None; updates running statistics in "
      "place when training.");

  m.def(
      "batch_norm_backward",
      [](const py::array& dy, const py::array& x, const py::array& mean, const py::array& invstd,
         const py::object& gamma, int64_t n, int64_t c, int64_t s, bool training) {
        if (is_float32(x))
          return batch_norm_backward_t<float>(dy, x, mean, invstd, gamma, n, c, s, training);
        return batch_norm_backward_t<double>(dy, x, mean, invstd, gamma, n, c, s, training);
      },
      py::arg("dy"), py::arg("x"), py::arg("mean"), py::arg("invstd"), py::arg("gamma"),
      py::arg("n"), py::arg("c"), py::arg("s"), py::arg("training"),
      "BatchNorm backward: (dx, dgamma, dbeta), new arrays; dgamma and dbeta only when gamma is "
      "given, else None.");

  m.def("empty", &empty_array, py::arg("shape"), py::arg("dtype"),
        "Uninitialised C-contiguous array; large ones reuse cached, already-mapped memory.");
  m.def("release_cached_memory", &normkit::pool_release_cached,
        "Free the idle cached output buffers; returns the bytes freed.");
  m.def("cached_bytes", &normkit::pool_cached_bytes);
  m.def("stream_threshold_bytes", &normkit::stream_threshold_bytes,
        "Outputs of at least this many bytes are written with streaming (non-temporal) stores.");
  m.def("l2_cache_bytes", &normkit::l2_cache_bytes, "One core's L2 cache, as the kernels see it.");
  m.def("last_level_cache_bytes", &normkit::last_level_cache_bytes,
        "The last-level cache, as the kernels see it (0: unknown).");
  m.def(
      "copy",
      [](py::array& dst, const py::array& src) {
        if (!(dst.flags() & py::array::c_style) || !(src.flags() & py::array::c_style) ||
            !dst.writeable() || dst.nbytes() != src.nbytes())
          throw py::value_error("copy: expected C-contiguous arrays of equal size, dst writeable");
        void* d = dst.mutable_data();
        const void* s = src.data();
        const auto n = static_cast<std::size_t>(src.nbytes());
        py::gil_scoped_release release;
        normkit::parallel_copy(d, s, n);
      },
      py::arg("dst"), py::arg("src"),
      "Parallel copy on the kernel threads: the benchmarks' bandwidth yardstick.");

  m.def("get_num_threads", &normkit::get_num_threads);
  m.def("set_num_threads", &normkit::set_num_threads, py::arg("n"));
  m.def("openmp_enabled", &normkit::openmp_enabled);
  m.def("threads_spin", &normkit::threads_spin,
        "Whether OpenMP threads spin after a parallel region (a kernel's later passes reuse "
        "them on smaller work); false under OMP_WAIT_POLICY=PASSIVE or GOMP_SPINCOUNT=0.");
  m.def("spin_time_ns", &normkit::spin_time_ns,
        "How long OpenMP threads surely spin after a parallel region, in ns (counted low): small "
        "kernels called back to back within it use them.");
  m.def("ns_per_spin", &normkit::ns_per_spin,
        "One spin of an idle OpenMP thread in ns, as spin_time_ns counts it (timed once: half "
        "the fastest of a few timings of the CPU's pause, at least 1 ns).");
  m.def("active_isa", [] { return std::string(normkit::isa_name(normkit::active_isa())); });
  m.def("available_isas", &available_isa_names);
  m.def(
      "set_isa", [](const std::string& name) { normkit::set_active_isa(normkit::parse_isa(name)); },
      py::arg("name"), "Switch kernels to another available ISA (tests, benchmarks).");
}
