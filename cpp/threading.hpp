#pragma once
// Thread count control and the one parallel loop the kernels use.
//
// Determinism: kernels split their work into tasks whose arithmetic does not depend on how
// tasks are assigned to threads, so results are bitwise identical for any thread count.

#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace normkit {

// Threads kernels may use. Defaults to omp_get_max_threads() (so OMP_NUM_THREADS is respected).
int get_num_threads();
void set_num_threads(int n);  // n >= 1, else std::invalid_argument
bool openmp_enabled();

// Fewer elements than this per thread are not worth an OpenMP fork/join: the Python package
// lets OpenMP threads sleep soon after a kernel (python/normkit/_openmp.py), and waking them
// costs 100-200 us on a virtual machine.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 17;

// The same for loops whose threads are spinning (unless OpenMP was told not to spin:
// threads_spin), where a fork costs a microsecond or two, not a wake-up: a loop right after a
// parallel loop of the same kernel call (`awake`), and loops that come back to back.
constexpr int64_t kMinElementsPerAwakeThread = int64_t{1} << 13;

// False when OMP_WAIT_POLICY is PASSIVE or GOMP_SPINCOUNT is 0 (threads sleep at once).
bool threads_spin();

// How long OpenMP threads surely spin after a parallel region, in ns (counted low; at most 1 s):
// the runtime's spin count times ns_per_spin.
int64_t spin_time_ns();
double ns_per_spin();  // one spin of an idle thread, counted low (timed once; at least 1 ns)

// Whether a loop of too little work to wake sleeping threads goes parallel anyway: this thread's
// last parallel region ended less than the OpenMP runtime's spin time ago (counted low), so its
// team is spinning; or loops of that size have come back to back, each that soon after the
// last (kernels called in a loop: a benchmark, a C++ program's inner loop), so the team will
// spin after one wake-up. Calls from Python come further apart than the spin time counted for
// normkit's GOMP_SPINCOUNT. Notes the call.
bool back_to_back();
// Called by the thread that ran a loop, inline or as a parallel region (`parallel`), after it.
void note_loop_end(bool parallel);

// Threads for a parallel loop of n_tasks tasks and `elements` elements of work in all: at most
// one per task and one per kMinElementsPerThread elements, or per kMinElementsPerAwakeThread
// when its threads are spinning (`awake`, or back_to_back); 0 or 1: run inline.
inline int64_t team_size(int64_t n_tasks, int64_t elements, bool awake = false) {
  int64_t threads = get_num_threads();
  if (threads > n_tasks) threads = n_tasks;
  if (threads > 1 && threads > elements / kMinElementsPerThread) {
    const bool spinning =
        elements >= 2 * kMinElementsPerAwakeThread && threads_spin() && (awake || back_to_back());
    const int64_t per_thread = spinning ? kMinElementsPerAwakeThread : kMinElementsPerThread;
    if (threads > elements / per_thread) threads = elements / per_thread;
  }
  return threads;
}

// Calls f(begin, end) over contiguous, disjoint ranges covering [0, n_tasks), on as many
// threads as the work (n_tasks * elements_per_task) justifies (see team_size for `awake`);
// tiny work runs inline. Returns the number of threads it ran on.
template <class F>
int64_t parallel_for(int64_t n_tasks, int64_t elements_per_task, bool awake, const F& f) {
  if (n_tasks <= 0) return 1;
  const int64_t threads = team_size(n_tasks, n_tasks * elements_per_task, awake);
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(static_cast<int>(threads))
    {
      const int64_t team = omp_get_num_threads();
      const int64_t t = omp_get_thread_num();
      const int64_t begin = n_tasks * t / team;
      const int64_t end = n_tasks * (t + 1) / team;
      if (begin < end) f(begin, end);
    }
    note_loop_end(true);
    return threads;
  }
#endif
  f(0, n_tasks);
  note_loop_end(false);
  return 1;
}

template <class F>
int64_t parallel_for(int64_t n_tasks, int64_t elements_per_task, const F& f) {
  return parallel_for(n_tasks, elements_per_task, false, f);
}

// Calls f(t, team) on each of `threads` threads at once (t in [0, team)), so that they may wait
// for each other in team_barrier(). Always in a parallel region of its own, of one thread too:
// an orphaned barrier binds to the innermost enclosing region, which must be this one, not one
// of a caller that runs the kernel from its own OpenMP threads. threads < 1 (team_size's "run
// inline") counts as one.
template <class F>
void parallel_team(int64_t threads, const F& f) {
  if (threads < 1) threads = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(static_cast<int>(threads))
  f(int64_t{omp_get_thread_num()}, int64_t{omp_get_num_threads()});
  note_loop_end(threads > 1);
#else
  (void)threads;
  f(int64_t{0}, int64_t{1});
#endif
}

// Waits until every thread of the parallel_team calling it has reached it.
inline void team_barrier() {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

// first(begin, end) over ranges covering [0, n_first), then middle() once, then
// second(begin, end) over ranges covering [0, n_second): like three calls (parallel_for,
// a serial step, parallel_for) but in one parallel region, so sleeping threads wake once.
// `elements` (the work of both phases) decides the thread count as in parallel_for.
template <class First, class Middle, class Second>
void parallel_phases(int64_t n_first, int64_t n_second, int64_t elements, const First& first,
                     const Middle& middle, const Second& second) {
  const int64_t threads = team_size(n_first > n_second ? n_first : n_second, elements);
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(static_cast<int>(threads))
    {
      const int64_t team = omp_get_num_threads();
      const int64_t t = omp_get_thread_num();
      if (n_first * t / team < n_first * (t + 1) / team)
        first(n_first * t / team, n_first * (t + 1) / team);
#pragma omp barrier
#pragma omp single
      middle();
      if (n_second * t / team < n_second * (t + 1) / team)
        second(n_second * t / team, n_second * (t + 1) / team);
    }
    note_loop_end(true);
    return;
  }
#endif
  if (n_first > 0) first(0, n_first);
  middle();
  if (n_second > 0) second(0, n_second);
  note_loop_end(false);
}

}  // namespace normkit
