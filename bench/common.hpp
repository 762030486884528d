// Shared by every coselect benchmark: workload scaling, timing of the measured region only,
// heap and RSS probes, and min/max statistics next to Google Benchmark's median.
//
// Every benchmark runs its whole workload (e.g. 200,000 round trips) as one iteration and
// reports per-operation counters:
//   ns_per_op       wall-clock time of the measured region / operations
//   cpu_ns_per_op   process CPU time (all threads) of the measured region / operations
//   heap_B_per_op   live heap bytes added by the workload at its peak / operations (where asked)
//   rss_B_per_op    resident-set growth at the same point / operations (where asked)
// Repetitions (--benchmark_repetitions=N) give min / median / max of each counter.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <string>

namespace bench {

// Workload size scaled by --scale=F (default 1; the CI smoke run uses a small F).
std::int64_t count(std::int64_t n);
double scale();
// --max_seconds=S (default 20): the time bound of one workload (see Budget).
double max_seconds();

// A workload whose operations may each take a long time (a thread wake-up on a busy machine)
// stops after n operations or once --max_seconds=S (default 20) have passed, whichever comes
// first; it then reports per-operation numbers over the operations it did.
class Budget {
 public:
  explicit Budget(std::int64_t n);
  // May operation i (0-based) start? Reads the clock once every 64 operations.
  bool more(std::int64_t i) const {
    if (i >= n_) return false;
    if ((i & 63) != 0) return true;
    return std::chrono::steady_clock::now() < deadline_;
  }

 private:
  std::int64_t n_;
  std::chrono::steady_clock::time_point deadline_;
};

// Net heap bytes allocated through operator new by this thread (alloc_counter.cpp): only
// differences between two readings on one thread mean anything. Binaries that do not link the
// counter report heap_counting() == false.
bool heap_counting();
void set_heap_counting(bool on);
std::int64_t live_heap_bytes();
// Resident set size of the process now, in bytes; trim_heap() first returns free memory to the
// kernel so that a later reading counts what a workload added.
std::int64_t resident_bytes();
void trim_heap();

// Times the measured region: wall clock and the process's CPU clock.
class Stopwatch {
 public:
  Stopwatch() { start(); }
  void start();
  // Ends the region: sets the iteration time and the per-operation counters.
  void stop(benchmark::State& state, std::int64_t ops);

 private:
  std::chrono::steady_clock::time_point wall_{};
  std::int64_t cpu_ns_ = 0;
};

// Memory of a workload: call begin() before it allocates, at_peak() when everything is live.
class MemoryProbe {
 public:
  void begin();
  void at_peak(benchmark::State& state, std::int64_t ops);

 private:
  std::int64_t heap_ = 0;
  std::int64_t rss_ = 0;
};

// One iteration per run (the workload is the iteration), manual timing, min and max next to
// the default mean/median/stddev.
void configure(benchmark::internal::Benchmark* b);

// Aborts the benchmark with a message (a workload that did not complete is a bug, not a number).
[[noreturn]] void fail(const std::string& what);

int main(int argc, char** argv);

}  // namespace bench

#define COSELECT_BENCH(fn) BENCHMARK(fn)->Apply(::bench::configure)
#define COSELECT_BENCH_MAIN()         \
  int main(int argc, char** argv) {   \
    return ::bench::main(argc, argv); \
  }
