#include "threading.hpp"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

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

// Spins of an idle OpenMP thread before it sleeps, as libgomp reads them when the library loads
// (the environment may change afterwards; the runtime's threads keep waiting as they started):
// GOMP_SPINCOUNT ("infinite", or a count with an optional k/M/G/T suffix), else 3e10 for
// OMP_WAIT_POLICY=ACTIVE, else 300,000; none for PASSIVE. (LLVM's runtime spins for
// KMP_BLOCKTIME, 200 ms by default: longer than this reckons.)
const unsigned long long kSpinCount = [] {
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  if (policy && (policy[0] == 'p' || policy[0] == 'P')) return 0ULL;
  const char* count = std::getenv("GOMP_SPINCOUNT");
  if (!count) return policy && (policy[0] == 'a' || policy[0] == 'A') ? 30000000000ULL : 300000ULL;
  if (std::strncmp(count, "inf", 3) == 0) return ~0ULL;
  char* end = nullptr;
  const unsigned long long n = std::strtoull(count, &end, 10);
  unsigned long long unit = 1;
  switch (end ? *end : '\0') {
    case 'k':
      unit = 1000ULL;
      break;
    case 'M':
      unit = 1000000ULL;
      break;
    case 'G':
      unit = 1000000000ULL;
      break;
    case 'T':
      unit = 1000000000000ULL;
      break;
    default:
      break;
  }
  return n > ~0ULL / unit ? ~0ULL : n * unit;
}();

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A run of loops that asked back_to_back, each starting less than the spin time after the
// previous one ended: kernels called back to back. Its fourth loop wakes the team; one kernel
// call has at most three loops that could go to spinning threads, so no single call wakes
// sleeping threads for a small loop. (Counted from the previous loop's start, as before, a
// Python loop of 8x512x7x7 BatchNorm inferences stayed on one thread: each call, 50 us on one
// thread plus 6 us in Python, started more than the 50 us spin time after the last had. On two
// threads they take 26 us. Through Python, 2 threads, medians of 400 calls in each of 5
// interleaved processes: float32 74 -> 49 us, float64 218 -> 147; 1024x1024 float64 1163 ->
// 635. Sapphire Rapids.)
constexpr int kBackToBackLoops = 3;

constexpr int64_t kLongAgo = std::numeric_limits<int64_t>::min() / 2;
thread_local int64_t last_loop_end_ns = kLongAgo;
thread_local int64_t last_region_end_ns = kLongAgo;
thread_local int loops_back_to_back = 0;
thread_local bool asked = false;  // the current loop asked back_to_back

}  // namespace

bool threads_spin() { return kSpinCount > 0; }

// One spin of libgomp's wait loop (a `pause` and a load), in ns: the fastest of five timings of
// 64 pauses, counted at half (a core may run faster later than while it was timed), and at
// least 1 ns. Timed once, in about 10 us. A pause takes 26 ns on this Sapphire Rapids VM
// (libgomp's 5000 spins: 0.13 ms), a few ns on older cores. Counted at 1 ns per spin as before,
// normkit took its threads to be asleep between calls from Python (5 us) while they still
// spun, and kept mid-size kernels on one thread: through Python, 2 threads, medians of 9 in
// separate processes, 8x512x7x7 float32 BatchNorm inference 65-72 -> 40-47 us (a few runs at
// 57-74: this VM's noise), 256x768 LayerNorm forward 73-91 -> 32-43 (some at 58-84). Other
// CPUs: 1 ns.
double ns_per_spin() {
  static const double ns = [] {
    double fastest = 1.0;
#if defined(__x86_64__) || defined(__i386__)
    constexpr int kPauses = 64;
    fastest = std::numeric_limits<double>::max();
    for (int run = 0; run < 5; ++run) {
      const int64_t t0 = now_ns();
      for (int i = 0; i < kPauses; ++i) _mm_pause();
      const double each = static_cast<double>(now_ns() - t0) / kPauses;
      if (each < fastest) fastest = each;
    }
#endif
    return fastest / 2 > 1.0 ? fastest / 2 : 1.0;
  }();
  return ns;
}

// Libgomp spins at most 1000 times when it has more threads than the machine has cores.
int64_t spin_time_ns() {
  unsigned long long spins = kSpinCount;
  // Asked once: hardware_concurrency() reads /sys at every call (it doubled a 5 us kernel).
  static const unsigned cores = std::thread::hardware_concurrency();
  if (cores > 0 && static_cast<unsigned>(get_num_threads()) > cores && spins > 1000) spins = 1000;
  const double ns = static_cast<double>(spins) * ns_per_spin();
  return ns > 1e9 ? 1000000000LL : static_cast<int64_t>(ns);
}

bool back_to_back() {
  const int64_t now = now_ns(), spin_time = spin_time_ns();
  loops_back_to_back = now - last_loop_end_ns < spin_time ? loops_back_to_back + 1 : 0;
  asked = true;
  return now - last_region_end_ns < spin_time || loops_back_to_back >= kBackToBackLoops;
}

void note_loop_end(bool parallel) {
  if (!parallel && !asked) return;
  const int64_t now = now_ns();
  if (asked) last_loop_end_ns = now;
  if (parallel) last_region_end_ns = now;
  asked = false;
}

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace normkit
