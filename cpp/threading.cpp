#include "threading.hpp"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace normkit {
namespace {

std::atomic<int>& thread_setting() {
#ifdef _OPENMP
  static std::atomic<int> n{omp_get_max_threads()};
#else
  static std::atomic<int> n{1};
#endif
  return n;
}

}  // namespace

int get_num_threads() { return thread_setting().load(std::memory_order_relaxed); }

void set_num_threads(int n) {
  if (n < 1)
    throw std::invalid_argument("number of threads must be >= 1, got " + std::to_string(n));
  thread_setting().store(n, std::memory_order_relaxed);
}

namespace {

// Read when the library loads, as the OpenMP runtime reads the same settings then (the
// environment may change afterwards; the runtime's threads keep waiting as they started).
const bool kThreadsSpin = [] {
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  const char* spincount = std::getenv("GOMP_SPINCOUNT");
  if (policy && (policy[0] == 'p' || policy[0] == 'P')) return false;
  return !(spincount && std::strcmp(spincount, "0") == 0);
}();

}  // namespace

bool threads_spin() { return kThreadsSpin; }

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace normkit
