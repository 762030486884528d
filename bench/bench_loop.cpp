// Work that stays on one thread: hand-offs between coroutines through an event, call_soon
// (vs asio::post), one set() releasing many waiters, and spawning trivial coroutines.
//
//   handoff/*      two coroutines ping-pong through events on one loop; one op = one hand-off
//                  (a set() and the other coroutine resuming). Default 1,000,000.
//   await_set/*    co_await of an event that is already set (must not suspend, no system call)
//   post_local/*   call_soon / asio::post from the loop thread itself, 1,000,000 callbacks
//   post_remote/*  the same from another thread while the loop runs
//   broadcast/*    100,000 suspended coroutines released by one set() (or timer.cancel());
//                  heap_B_per_op is the memory of one suspended coroutine with its wait
//   spawn/*        1,000,000 trivial coroutines spawned (in batches of 1,000) and completed
#include <sys/select.h>
#include <unistd.h>

#include <algorithm>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/experimental/channel.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <coselect.hpp>
#include <cstdint>
#include <thread>

#include "common.hpp"
#include "floor.hpp"

namespace {

constexpr std::int64_t kHandoffs = 1'000'000;
constexpr std::int64_t kPosts = 1'000'000;
constexpr std::int64_t kWaiters = 100'000;
constexpr std::int64_t kSpawns = 1'000'000;
constexpr std::int64_t kSpawnBatch = 1'000;

using coselect::Task;
using coselect::WaitableEvent;

coselect::Scheduler& here() {
  return *coselect::Scheduler::current();
}

void check(bool ok, const char* what) {
  if (!ok) bench::fail(what);
}

// ==== hand-off ===============================================================================

// --- coselect: two coroutines, two WaitableEvents -------------------------------------------

Task<void> cs_ponger(WaitableEvent& mine, WaitableEvent& theirs, std::int64_t rounds) {
  for (std::int64_t i = 0; i < rounds; ++i) {
    co_await mine.wait();
    mine.clear();
    theirs.set();
  }
}

Task<void> cs_handoff(benchmark::State& state, std::int64_t handoffs) {
  WaitableEvent ping, pong;
  const std::int64_t rounds = handoffs / 2;
  here().spawn(cs_ponger(ping, pong, rounds));
  co_await coselect::yield_now();  // the ponger is waiting now
  bench::Stopwatch sw;
  for (std::int64_t i = 0; i < rounds; ++i) {
    ping.set();
    co_await pong.wait();
    pong.clear();
  }
  sw.stop(state, rounds * 2);
}

void handoff_coselect(benchmark::State& state) {
  for (auto _ : state) {
    coselect::Scheduler s;
    s.run(cs_handoff(state, bench::count(kHandoffs)));
  }
}
COSELECT_BENCH(handoff_coselect)->Name("handoff/coselect_event");

// --- floor: bare ready-queue ----------------------------------------------------------------

floor_rt::Job fl_ponger(floor_rt::Event& mine, floor_rt::Event& theirs, std::int64_t rounds) {
  for (std::int64_t i = 0; i < rounds; ++i) {
    co_await mine.wait();
    mine.clear();
    theirs.set();
  }
}

floor_rt::Job fl_pinger(floor_rt::Event& mine, floor_rt::Event& theirs, std::int64_t rounds) {
  for (std::int64_t i = 0; i < rounds; ++i) {
    theirs.set();
    co_await mine.wait();
    mine.clear();
  }
}

void handoff_floor(benchmark::State& state) {
  const std::int64_t rounds = bench::count(kHandoffs) / 2;
  for (auto _ : state) {
    floor_rt::Loop loop;
    floor_rt::Event ping{loop}, pong{loop};
    floor_rt::spawn(loop, fl_ponger(ping, pong, rounds));
    loop.run();  // the ponger is waiting now
    bench::Stopwatch sw;
    floor_rt::spawn(loop, fl_pinger(pong, ping, rounds));
    loop.run();
    sw.stop(state, rounds * 2);
  }
}
COSELECT_BENCH(handoff_floor)->Name("handoff/floor_ready_queue");

// --- floor: one thread, pipe write + select + read ------------------------------------------

void handoff_pipe(benchmark::State& state) {
  const std::int64_t n = bench::count(kHandoffs);
  for (auto _ : state) {
    int fds[2];
    check(::pipe(fds) == 0, "pipe");
    bench::Stopwatch sw;
    for (std::int64_t i = 0; i < n; ++i) {
      char c = 1;
      check(::write(fds[1], &c, 1) == 1, "write");
      fd_set set;
      FD_ZERO(&set);
      FD_SET(fds[0], &set);
      check(::select(fds[0] + 1, &set, nullptr, nullptr, nullptr) == 1, "select");
      check(::read(fds[0], &c, 1) == 1, "read");
    }
    sw.stop(state, n);
    ::close(fds[0]);
    ::close(fds[1]);
  }
}
COSELECT_BENCH(handoff_pipe)->Name("handoff/floor_pipe_select");

// --- Asio: experimental channel -------------------------------------------------------------

// (Asio 1.22's channel<void(error_code)> does not compile: an ambiguous channel_traits; a
// payload of one int avoids it and costs nothing measurable.)
using AsioChannel = asio::experimental::channel<void(asio::error_code, int)>;

asio::awaitable<void> asio_ch_ponger(AsioChannel& in, AsioChannel& out, std::int64_t rounds) {
  for (std::int64_t i = 0; i < rounds; ++i) {
    co_await in.async_receive(asio::use_awaitable);
    co_await out.async_send(asio::error_code{}, 0, asio::use_awaitable);
  }
}

asio::awaitable<void> asio_ch_pinger(AsioChannel& out, AsioChannel& in, std::int64_t rounds) {
  for (std::int64_t i = 0; i < rounds; ++i) {
    co_await out.async_send(asio::error_code{}, 0, asio::use_awaitable);
    co_await in.async_receive(asio::use_awaitable);
  }
}

void handoff_asio_channel(benchmark::State& state) {
  const std::int64_t rounds = bench::count(kHandoffs) / 2;
  for (auto _ : state) {
    asio::io_context ctx(1);
    AsioChannel ab(ctx, 1), ba(ctx, 1);
    asio::co_spawn(ctx, asio_ch_ponger(ab, ba, rounds), asio::detached);
    ctx.poll();  // the ponger is waiting now
    ctx.restart();
    bench::Stopwatch sw;
    asio::co_spawn(ctx, asio_ch_pinger(ab, ba, rounds), asio::detached);
    ctx.run();
    sw.stop(state, rounds * 2);
  }
}
COSELECT_BENCH(handoff_asio_channel)->Name("handoff/asio_channel");

// --- Asio: a steady_timer that never expires, cancelled to wake its waiter (asio#891) -------

asio::awaitable<void> asio_tm_side(asio::steady_timer& mine, asio::steady_timer& theirs,
                                   std::int64_t rounds, bool starts) {
  asio::error_code ec;
  for (std::int64_t i = 0; i < rounds; ++i) {
    if (starts) theirs.cancel();
    co_await mine.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (!starts) theirs.cancel();
  }
}

void handoff_asio_timer(benchmark::State& state) {
  const std::int64_t rounds = bench::count(kHandoffs) / 2;
  for (auto _ : state) {
    asio::io_context ctx(1);
    asio::steady_timer ping(ctx, asio::steady_timer::time_point::max());
    asio::steady_timer pong(ctx, asio::steady_timer::time_point::max());
    asio::co_spawn(ctx, asio_tm_side(ping, pong, rounds, false), asio::detached);
    ctx.poll();  // the ponger is waiting now
    ctx.restart();
    bench::Stopwatch sw;
    asio::co_spawn(ctx, asio_tm_side(pong, ping, rounds, true), asio::detached);
    ctx.run();
    sw.stop(state, rounds * 2);
  }
}
COSELECT_BENCH(handoff_asio_timer)->Name("handoff/asio_timer_cancel");

// ==== await an event that is already set =====================================================

Task<void> cs_await_set(benchmark::State& state, std::int64_t n) {
  WaitableEvent ev;
  ev.set();
  bench::Stopwatch sw;
  for (std::int64_t i = 0; i < n; ++i)
    co_await ev.wait();
  sw.stop(state, n);
}

void await_set_coselect(benchmark::State& state) {
  for (auto _ : state) {
    coselect::Scheduler s;
    s.run(cs_await_set(state, bench::count(kHandoffs)));
  }
}
COSELECT_BENCH(await_set_coselect)->Name("await_set/coselect_event");

// ==== call_soon / post =======================================================================

Task<void> cs_post_local(benchmark::State& state, std::int64_t n) {
  std::int64_t done = 0;
  coselect::TaskManager& tm = here().tasks();
  bench::Stopwatch sw;
  for (std::int64_t i = 0; i < n; ++i)
    tm.call_soon([&done] { ++done; });
  while (done < n)
    co_await coselect::yield_now();
  sw.stop(state, n);
}

void post_local_coselect(benchmark::State& state) {
  for (auto _ : state) {
    coselect::Scheduler s;
    s.run(cs_post_local(state, bench::count(kPosts)));
  }
}
COSELECT_BENCH(post_local_coselect)->Name("post_local/coselect_call_soon");

void post_local_asio(benchmark::State& state) {
  const std::int64_t n = bench::count(kPosts);
  for (auto _ : state) {
    asio::io_context ctx(1);
    std::int64_t done = 0;
    bench::Stopwatch sw;
    asio::post(ctx, [&] {
      for (std::int64_t i = 0; i < n; ++i)
        asio::post(ctx, [&done] { ++done; });
    });
    ctx.run();
    sw.stop(state, n);
    check(done == n, "asio post_local");
  }
}
COSELECT_BENCH(post_local_asio)->Name("post_local/asio_post");

void post_remote_coselect(benchmark::State& state) {
  const std::int64_t n = bench::count(kPosts);
  for (auto _ : state) {
    coselect::Scheduler s;
    std::int64_t done = 0;
    bench::Stopwatch sw;
    std::thread producer([&] {
      coselect::TaskManager& tm = s.tasks();
      for (std::int64_t i = 0; i < n; ++i) {
        tm.call_soon([&] {
          if (++done == n) s.stop();
        });
      }
    });
    s.run();
    producer.join();
    sw.stop(state, n);
    check(done == n, "coselect post_remote");
  }
}
COSELECT_BENCH(post_remote_coselect)->Name("post_remote/coselect_call_soon");

void post_remote_asio(benchmark::State& state) {
  const std::int64_t n = bench::count(kPosts);
  for (auto _ : state) {
    asio::io_context ctx(1);
    auto guard = asio::make_work_guard(ctx);
    std::int64_t done = 0;
    bench::Stopwatch sw;
    std::thread producer([&] {
      for (std::int64_t i = 0; i < n; ++i) {
        asio::post(ctx, [&] {
          if (++done == n) ctx.stop();
        });
      }
    });
    ctx.run();
    producer.join();
    sw.stop(state, n);
    check(done == n, "asio post_remote");
  }
}
COSELECT_BENCH(post_remote_asio)->Name("post_remote/asio_post");

// ==== broadcast ==============================================================================

Task<void> cs_waiter(WaitableEvent& ev, std::int64_t& waiting, std::int64_t& done) {
  ++waiting;
  co_await ev.wait();
  ++done;
}

Task<void> cs_broadcast(benchmark::State& state, std::int64_t n) {
  WaitableEvent ev;
  std::int64_t waiting = 0, done = 0;
  bench::MemoryProbe mem;
  mem.begin();
  for (std::int64_t i = 0; i < n; ++i)
    here().spawn(cs_waiter(ev, waiting, done));
  co_await coselect::yield_now();  // every waiter runs up to its co_await first
  check(waiting == n && done == 0, "coselect broadcast setup");
  mem.at_peak(state, n);
  bench::Stopwatch sw;
  ev.set();
  while (done < n)
    co_await coselect::yield_now();
  sw.stop(state, n);
}

void broadcast_coselect(benchmark::State& state) {
  for (auto _ : state) {
    coselect::Scheduler s;
    s.run(cs_broadcast(state, bench::count(kWaiters)));
  }
}
COSELECT_BENCH(broadcast_coselect)->Name("broadcast/coselect_event");

floor_rt::Job fl_waiter(floor_rt::Event& ev, std::int64_t& waiting, std::int64_t& done) {
  ++waiting;
  co_await ev.wait();
  ++done;
}

void broadcast_floor(benchmark::State& state) {
  const std::int64_t n = bench::count(kWaiters);
  for (auto _ : state) {
    floor_rt::Loop loop;
    floor_rt::Event ev{loop};
    std::int64_t waiting = 0, done = 0;
    bench::MemoryProbe mem;
    mem.begin();
    for (std::int64_t i = 0; i < n; ++i)
      floor_rt::spawn(loop, fl_waiter(ev, waiting, done));
    loop.run();
    check(waiting == n && done == 0, "floor broadcast setup");
    mem.at_peak(state, n);
    bench::Stopwatch sw;
    ev.set();
    loop.run();
    sw.stop(state, n);
    check(done == n, "floor broadcast");
  }
}
COSELECT_BENCH(broadcast_floor)->Name("broadcast/floor_ready_queue");

asio::awaitable<void> asio_waiter(asio::steady_timer& t, std::int64_t& waiting,
                                  std::int64_t& done) {
  asio::error_code ec;
  ++waiting;
  co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  ++done;
}

void broadcast_asio(benchmark::State& state) {
  const std::int64_t n = bench::count(kWaiters);
  for (auto _ : state) {
    asio::io_context ctx(1);
    asio::steady_timer t(ctx, asio::steady_timer::time_point::max());
    std::int64_t waiting = 0, done = 0;
    bench::MemoryProbe mem;
    mem.begin();
    for (std::int64_t i = 0; i < n; ++i)
      asio::co_spawn(ctx, asio_waiter(t, waiting, done), asio::detached);
    ctx.poll();
    ctx.restart();
    check(waiting == n && done == 0, "asio broadcast setup");
    mem.at_peak(state, n);
    bench::Stopwatch sw;
    t.cancel();
    ctx.run();
    sw.stop(state, n);
    check(done == n, "asio broadcast");
  }
}
COSELECT_BENCH(broadcast_asio)->Name("broadcast/asio_timer_cancel");

// ==== spawn ==================================================================================

Task<void> cs_trivial(std::int64_t& done) {
  ++done;
  co_return;
}

Task<void> cs_spawn(benchmark::State& state, std::int64_t n) {
  std::int64_t done = 0;
  coselect::Scheduler& s = here();
  bench::Stopwatch sw;
  for (std::int64_t started = 0; started < n;) {
    const std::int64_t batch = std::min(kSpawnBatch, n - started);
    for (std::int64_t i = 0; i < batch; ++i)
      s.spawn(cs_trivial(done));
    started += batch;
    while (done < started)
      co_await coselect::yield_now();
  }
  sw.stop(state, n);
}

void spawn_coselect(benchmark::State& state) {
  for (auto _ : state) {
    coselect::Scheduler s;
    s.run(cs_spawn(state, bench::count(kSpawns)));
  }
}
COSELECT_BENCH(spawn_coselect)->Name("spawn/coselect");

floor_rt::Job fl_trivial(std::int64_t& done) {
  ++done;
  co_return;
}

void spawn_floor(benchmark::State& state) {
  const std::int64_t n = bench::count(kSpawns);
  for (auto _ : state) {
    floor_rt::Loop loop;
    std::int64_t done = 0;
    bench::Stopwatch sw;
    for (std::int64_t started = 0; started < n;) {
      const std::int64_t batch = std::min(kSpawnBatch, n - started);
      for (std::int64_t i = 0; i < batch; ++i)
        floor_rt::spawn(loop, fl_trivial(done));
      started += batch;
      loop.run();
    }
    sw.stop(state, n);
    check(done == n, "floor spawn");
  }
}
COSELECT_BENCH(spawn_floor)->Name("spawn/floor_ready_queue");

asio::awaitable<void> asio_trivial(std::int64_t& done) {
  ++done;
  co_return;
}

asio::awaitable<void> asio_spawner(std::int64_t n, std::int64_t& done) {
  auto ex = co_await asio::this_coro::executor;
  for (std::int64_t started = 0; started < n;) {
    const std::int64_t batch = std::min(kSpawnBatch, n - started);
    for (std::int64_t i = 0; i < batch; ++i)
      asio::co_spawn(ex, asio_trivial(done), asio::detached);
    started += batch;
    while (done < started)
      co_await asio::post(ex, asio::use_awaitable);
  }
}

void spawn_asio(benchmark::State& state) {
  const std::int64_t n = bench::count(kSpawns);
  for (auto _ : state) {
    asio::io_context ctx(1);
    std::int64_t done = 0;
    bench::Stopwatch sw;
    asio::co_spawn(ctx, asio_spawner(n, done), asio::detached);
    ctx.run();
    sw.stop(state, n);
    check(done == n, "asio spawn");
  }
}
COSELECT_BENCH(spawn_asio)->Name("spawn/asio_co_spawn");

}  // namespace

COSELECT_BENCH_MAIN()
