#include "common.hpp"

#include <malloc.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <vector>

namespace bench {

namespace {

double g_scale = 1.0;
double g_max_seconds = 20.0;

std::int64_t process_cpu_ns() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

double min_of(const std::vector<double>& v) {
  return v.empty() ? 0.0 : *std::min_element(v.begin(), v.end());
}
double max_of(const std::vector<double>& v) {
  return v.empty() ? 0.0 : *std::max_element(v.begin(), v.end());
}

}  // namespace

// Weak defaults: binaries that link alloc_counter.cpp override them.
__attribute__((weak)) bool heap_counting() {
  return false;
}
__attribute__((weak)) void set_heap_counting(bool) {}
__attribute__((weak)) std::int64_t live_heap_bytes() {
  return 0;
}

double scale() {
  return g_scale;
}

double max_seconds() {
  return g_max_seconds;
}

Budget::Budget(std::int64_t n)
    : n_(n),
      deadline_(std::chrono::steady_clock::now() +
                std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                    std::chrono::duration<double>(g_max_seconds))) {}

std::int64_t count(std::int64_t n) {
  return std::max<std::int64_t>(1, std::llround(static_cast<double>(n) * g_scale));
}

std::int64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

void trim_heap() {
  malloc_trim(0);
}

void Stopwatch::start() {
  cpu_ns_ = process_cpu_ns();
  wall_ = std::chrono::steady_clock::now();
}

void Stopwatch::stop(benchmark::State& state, std::int64_t ops) {
  const auto wall = std::chrono::steady_clock::now() - wall_;
  const std::int64_t cpu = process_cpu_ns() - cpu_ns_;
  const double wall_ns = std::chrono::duration<double, std::nano>(wall).count();
  state.SetIterationTime(wall_ns * 1e-9);
  state.counters["ns_per_op"] = wall_ns / static_cast<double>(ops);
  state.counters["cpu_ns_per_op"] = static_cast<double>(cpu) / static_cast<double>(ops);
  state.counters["ops"] = static_cast<double>(ops);
}

void MemoryProbe::begin() {
  trim_heap();
  set_heap_counting(true);
  heap_ = live_heap_bytes();
  rss_ = resident_bytes();
}

void MemoryProbe::at_peak(benchmark::State& state, std::int64_t ops) {
  const std::int64_t heap = live_heap_bytes();
  set_heap_counting(false);
  const std::int64_t rss = resident_bytes();
  if (heap_counting()) {
    state.counters["heap_B_per_op"] = static_cast<double>(heap - heap_) / static_cast<double>(ops);
  }
  state.counters["rss_B_per_op"] =
      static_cast<double>(std::max<std::int64_t>(0, rss - rss_)) / static_cast<double>(ops);
}

void configure(benchmark::internal::Benchmark* b) {
  b->Iterations(1)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond)
      ->ComputeStatistics("min", min_of)
      ->ComputeStatistics("max", max_of);
}

void fail(const std::string& what) {
  std::fprintf(stderr, "benchmark failed: %s\n", what.c_str());
  std::abort();
}

int main(int argc, char** argv) {
  // Our own flag first (--scale=F), then Google Benchmark's.
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--scale=", 8) == 0) {
      g_scale = std::strtod(argv[i] + 8, nullptr);
      if (!(g_scale > 0)) g_scale = 1.0;
    } else if (std::strncmp(argv[i], "--max_seconds=", 14) == 0) {
      g_max_seconds = std::strtod(argv[i] + 14, nullptr);
      if (!(g_max_seconds > 0)) g_max_seconds = 20.0;
    } else {
      rest.push_back(argv[i]);
    }
  }
  int n = static_cast<int>(rest.size());
  rest.push_back(nullptr);
  benchmark::Initialize(&n, rest.data());
  if (benchmark::ReportUnrecognizedArguments(n, rest.data())) return 1;
  benchmark::AddCustomContext("scale", std::to_string(g_scale));
  benchmark::AddCustomContext("max_seconds", std::to_string(g_max_seconds));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace bench
