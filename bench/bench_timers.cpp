// 1,000,000 one-shot timers with random deadlines in 0..200 ms (the same deadlines, fixed
// seed, for everyone), armed and run to completion. The measure is CPU time per timer
// (cpu_ns_per_op: arming + firing, the loop's sleeping excluded by nature), plus heap and RSS
// bytes per armed timer at the point where all of them are armed.
//
//   coselect   TaskManager::call_later callbacks, and coroutines in co_await sleep_for(d)
//   peers      asio::steady_timer with a callback, asio::awaitable coroutines on their own
//              steady_timer, libuv uv_timer_t (millisecond resolution)
//   floor      a std::priority_queue pass: push every deadline, pop them all in order
#include <uv.h>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <chrono>
#include <coselect.hpp>
#include <cstdint>
#include <functional>
#include <queue>
#include <random>
#include <utility>
#include <vector>

#include "common.hpp"

namespace {

constexpr std::int64_t kTimers = 1'000'000;

using std::chrono::microseconds;

const std::vector<microseconds>& deadlines() {
  static const std::vector<microseconds> d = [] {
    std::vector<microseconds> v(static_cast<std::size_t>(bench::count(kTimers)));
    std::mt19937_64 rng(20240511);
    std::uniform_int_distribution<std::int64_t> us(0, 200'000);
    for (auto& x : v)
      x = microseconds(us(rng));
    return v;
  }();
  return d;
}

void check(bool ok, const char* what) {
  if (!ok) bench::fail(what);
}

// ---- coselect: call_later ------------------------------------------------------------------

coselect::Task<void> cs_call_later(benchmark::State& state) {
  const auto& d = deadlines();
  const auto n = static_cast<std::int64_t>(d.size());
  coselect::TaskManager& tm = coselect::Scheduler::current()->tasks();
  coselect::WaitableEvent all_fired;
  std::int64_t fired = 0;
  bench::MemoryProbe mem;
  mem.begin();
  bench::Stopwatch sw;
  for (const microseconds delay : d) {
    tm.call_later(delay, [&] {
      if (++fired == n) all_fired.set();
    });
  }
  mem.at_peak(state, n);
  co_await all_fired.wait();
  sw.stop(state, n);
}

void timers_call_later(benchmark::State& state) {
  deadlines();
  for (auto _ : state) {
    coselect::Scheduler s;
    s.run(cs_call_later(state));
  }
}
COSELECT_BENCH(timers_call_later)->Name("timers/coselect_call_later");

// ---- coselect: sleep_for coroutines --------------------------------------------------------

coselect::Task<void> cs_sleeper(microseconds delay, std::int64_t& fired, std::int64_t n,
                                coselect::WaitableEvent& all_fired) {
  co_await coselect::sleep_for(delay);
  if (++fired == n) all_fired.set();
}

coselect::Task<void> cs_sleep_for(benchmark::State& state) {
  const auto& d = deadlines();
  const auto n = static_cast<std::int64_t>(d.size());
  coselect::Scheduler& s = *coselect::Scheduler::current();
  coselect::WaitableEvent all_fired;
  std::int64_t fired = 0;
  bench::MemoryProbe mem;
  mem.begin();
  bench::Stopwatch sw;
  for (const microseconds delay : d)
    s.spawn(cs_sleeper(delay, fired, n, all_fired));
  co_await coselect::yield_now();  // every sleeper has armed its timer
  mem.at_peak(state, n);
  co_await all_fired.wait();
  sw.stop(state, n);
}

void timers_sleep_for(benchmark::State& state) {
  deadlines();
  for (auto _ : state) {
    coselect::Scheduler s;
    s.run(cs_sleep_for(state));
  }
}
COSELECT_BENCH(timers_sleep_for)->Name("timers/coselect_sleep_for");

// ---- Asio ----------------------------------------------------------------------------------

void timers_asio(benchmark::State& state) {
  const auto& d = deadlines();
  const auto n = static_cast<std::int64_t>(d.size());
  for (auto _ : state) {
    asio::io_context ctx(1);
    std::vector<asio::steady_timer> timers;
    std::int64_t fired = 0;
    bench::MemoryProbe mem;
    mem.begin();
    bench::Stopwatch sw;
    timers.reserve(d.size());
    for (const microseconds delay : d) {
      timers.emplace_back(ctx, delay);
      timers.back().async_wait([&fired](const asio::error_code&) { ++fired; });
    }
    mem.at_peak(state, n);
    ctx.run();
    sw.stop(state, n);
    check(fired == n, "asio timers");
  }
}
COSELECT_BENCH(timers_asio)->Name("timers/asio_steady_timer");

asio::awaitable<void> asio_sleeper(microseconds delay, std::int64_t& armed, std::int64_t& fired) {
  asio::steady_timer t(co_await asio::this_coro::executor, delay);
  ++armed;
  co_await t.async_wait(asio::use_awaitable);
  ++fired;
}

void timers_asio_awaitable(benchmark::State& state) {
  const auto& d = deadlines();
  const auto n = static_cast<std::int64_t>(d.size());
  for (auto _ : state) {
    asio::io_context ctx(1);
    std::int64_t armed = 0, fired = 0;
    bench::MemoryProbe mem;
    mem.begin();
    bench::Stopwatch sw;
    for (const microseconds delay : d)
      asio::co_spawn(ctx, asio_sleeper(delay, armed, fired), asio::detached);
    // Start the sleepers one handler at a time: they all arm before the reactor next looks at
    // its timers (it runs after the handlers queued before it), so none has fired yet.
    while (armed < n)
      ctx.run_one();
    mem.at_peak(state, n);
    ctx.run();
    sw.stop(state, n);
    check(fired == n, "asio awaitable timers");
  }
}
COSELECT_BENCH(timers_asio_awaitable)->Name("timers/asio_awaitable_timer");

// ---- libuv ---------------------------------------------------------------------------------

void timers_libuv(benchmark::State& state) {
  const auto& d = deadlines();
  const auto n = static_cast<std::int64_t>(d.size());
  for (auto _ : state) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    std::int64_t fired = 0;
    bench::MemoryProbe mem;
    mem.begin();
    bench::Stopwatch sw;
    std::vector<uv_timer_t> timers(d.size());
    for (std::size_t i = 0; i < d.size(); ++i) {
      uv_timer_t& t = timers[i];
      uv_timer_init(&loop, &t);
      t.data = &fired;
      const auto ms = static_cast<std::uint64_t>((d[i].count() + 999) / 1000);  // never early
      uv_timer_start(
          &t, [](uv_timer_t* h) { ++*static_cast<std::int64_t*>(h->data); }, ms, 0);
    }
    mem.at_peak(state, n);
    uv_run(&loop, UV_RUN_DEFAULT);
    sw.stop(state, n);
    check(fired == n, "libuv timers");
    for (uv_timer_t& t : timers)
      uv_close(reinterpret_cast<uv_handle_t*>(&t), nullptr);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
  }
}
COSELECT_BENCH(timers_libuv)->Name("timers/libuv_timer");

// ---- floor ---------------------------------------------------------------------------------

void timers_priority_queue(benchmark::State& state) {
  const auto& d = deadlines();
  const auto n = static_cast<std::int64_t>(d.size());
  using entry = std::pair<std::chrono::steady_clock::time_point, std::uint32_t>;
  for (auto _ : state) {
    std::int64_t fired = 0;
    bench::MemoryProbe mem;
    mem.begin();
    bench::Stopwatch sw;
    std::priority_queue<entry, std::vector<entry>, std::greater<>> q;
    const auto now = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < d.size(); ++i)
      q.emplace(now + d[i], static_cast<std::uint32_t>(i));
    mem.at_peak(state, n);
    while (!q.empty()) {
      benchmark::DoNotOptimize(q.top().second);
      ++fired;
      q.pop();
    }
    sw.stop(state, n);
    check(fired == n, "priority_queue timers");
  }
}
COSELECT_BENCH(timers_priority_queue)->Name("timers/floor_priority_queue");

}  // namespace

COSELECT_BENCH_MAIN()
