// fd scaling: N idle fds (N = 10, 100, 1,000, 10,000), each with a waiter for readability that
// never fires, plus one active pipe that a coroutine (or callback) writes a byte to, waits on,
// and reads back. One op = one wake of the active pipe with N idle fds watched.
//
//   coselect   co_await readable(fd) on a Scheduler, once per backend: select (a round with an
//              fd >= FD_SETSIZE is a poll() round), poll, epoll
//   peers      Asio posix::stream_descriptor::async_wait (epoll), libuv uv_poll_t (epoll)
//   floors     select() over a prebuilt fd_set (only where every fd is < FD_SETSIZE), poll() over
//              a prebuilt pollfd array, epoll_wait() on a prebuilt epoll set (the §7 reference)
//
// The idle fds are eventfds that nobody writes (one descriptor each: 10,000 idle pipes would
// need 20,000 descriptors). RLIMIT_NOFILE is raised to its hard limit first. Each run stops after
// its wake count or --max_seconds (default 20), whichever comes first.
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>
#include <coselect.hpp>
#include <cstdint>
#include <memory>
#include <vector>

#include "common.hpp"

namespace {

void check(bool ok, const char* what) {
  if (!ok) bench::fail(what);
}

// Fewer wakes where each one is expensive; at least 2,000.
std::int64_t wakes_for(std::int64_t idle) {
  return bench::count(std::max<std::int64_t>(2'000, 1'000'000 / idle));
}

void raise_fd_limit() {
  rlimit rl{};
  check(::getrlimit(RLIMIT_NOFILE, &rl) == 0, "getrlimit");
  rl.rlim_cur = rl.rlim_max;
  check(::setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit");
}

struct Fds {
  std::vector<int> idle;
  int active_r = -1, active_w = -1;

  explicit Fds(std::int64_t n) {
    raise_fd_limit();
    int fds[2];
    check(::pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0, "pipe2");
    active_r = fds[0];
    active_w = fds[1];
    for (std::int64_t i = 0; i < n; ++i) {
      const int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      check(fd >= 0, "eventfd (is RLIMIT_NOFILE's hard limit too low?)");
      idle.push_back(fd);
    }
  }
  ~Fds() {
    for (int fd : idle)
      ::close(fd);
    ::close(active_r);
    ::close(active_w);
  }
  Fds(const Fds&) = delete;
  Fds& operator=(const Fds&) = delete;

  bool selectable() const {
    return std::all_of(idle.begin(), idle.end(), [](int fd) { return fd < FD_SETSIZE; }) &&
           active_r < FD_SETSIZE;
  }
  int max_fd() const { return std::max(active_r, *std::max_element(idle.begin(), idle.end())); }

  void poke() const {
    const char c = 1;
    check(::write(active_w, &c, 1) == 1, "write");
  }
  void drain() const {
    char c;
    check(::read(active_r, &c, 1) == 1, "read");
  }
};

void args(benchmark::internal::Benchmark* b) {
  bench::configure(b);
  b->ArgName("idle")->Arg(10)->Arg(100)->Arg(1000)->Arg(10000);
}

// ---- coselect ------------------------------------------------------------------------------

coselect::Task<void> cs_idle(int fd) {
  co_await coselect::readable(fd);
}

coselect::Task<void> cs_active(benchmark::State& state, const Fds& p, std::int64_t wakes) {
  coselect::Scheduler& s = *coselect::Scheduler::current();
  for (int fd : p.idle)
    s.spawn(cs_idle(fd));
  // The spawned waiters start in the next iteration, after this coroutine's own turn: two
  // yields let every one of them register (under epoll: reach the kernel) before the clock runs.
  co_await coselect::yield_now();
  co_await coselect::yield_now();
  const bench::Budget budget(wakes);
  bench::Stopwatch sw;
  std::int64_t done = 0;
  for (; budget.more(done); ++done) {
    p.poke();
    co_await coselect::readable(p.active_r);
    p.drain();
  }
  sw.stop(state, done);
}

template <coselect::Backend B>
void fd_coselect(benchmark::State& state) {
  const std::int64_t idle = state.range(0);
  for (auto _ : state) {
    Fds p(idle);
    coselect::Scheduler s(B);
    s.run(cs_active(state, p, wakes_for(idle)));
  }  // the scheduler destroys the idle waiters' frames
}
BENCHMARK(fd_coselect<coselect::Backend::select>)->Name("fd/coselect_select")->Apply(args);
BENCHMARK(fd_coselect<coselect::Backend::poll>)->Name("fd/coselect_poll")->Apply(args);
BENCHMARK(fd_coselect<coselect::Backend::epoll>)->Name("fd/coselect_epoll")->Apply(args);

// ---- floors --------------------------------------------------------------------------------

void fd_select(benchmark::State& state) {
  const std::int64_t idle = state.range(0);
  for (auto _ : state) {
    Fds p(idle);
    if (!p.selectable()) {
      state.SkipWithError("fds beyond FD_SETSIZE: select() cannot take them");
      break;
    }
    fd_set all;
    FD_ZERO(&all);
    for (int fd : p.idle)
      FD_SET(fd, &all);
    FD_SET(p.active_r, &all);
    const int nfds = p.max_fd() + 1;
    const bench::Budget budget(wakes_for(idle));
    bench::Stopwatch sw;
    std::int64_t done = 0;
    for (; budget.more(done); ++done) {
      p.poke();
      fd_set ready = all;
      check(::select(nfds, &ready, nullptr, nullptr, nullptr) == 1, "select");
      check(FD_ISSET(p.active_r, &ready), "select: active fd");
      p.drain();
    }
    sw.stop(state, done);
  }
}
BENCHMARK(fd_select)->Name("fd/floor_select")->Apply(args);

void fd_poll(benchmark::State& state) {
  const std::int64_t idle = state.range(0);
  for (auto _ : state) {
    Fds p(idle);
    std::vector<pollfd> all;
    for (int fd : p.idle)
      all.push_back(pollfd{fd, POLLIN, 0});
    all.push_back(pollfd{p.active_r, POLLIN, 0});
    const bench::Budget budget(wakes_for(idle));
    bench::Stopwatch sw;
    std::int64_t done = 0;
    for (; budget.more(done); ++done) {
      p.poke();
      // poll() rewrites only revents: the array is reused as it is, as a loop keeping it would.
      check(::poll(all.data(), all.size(), -1) == 1, "poll");
      check(all.back().revents & POLLIN, "poll: active fd");
      p.drain();
    }
    sw.stop(state, done);
  }
}
BENCHMARK(fd_poll)->Name("fd/floor_poll")->Apply(args);

void fd_epoll(benchmark::State& state) {
  const std::int64_t idle = state.range(0);
  for (auto _ : state) {
    Fds p(idle);
    const int ep = ::epoll_create1(EPOLL_CLOEXEC);
    check(ep >= 0, "epoll_create1");
    auto add = [&](int fd) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = fd;
      check(::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll_ctl");
    };
    for (int fd : p.idle)
      add(fd);
    add(p.active_r);
    const bench::Budget budget(wakes_for(idle));
    bench::Stopwatch sw;
    std::int64_t done = 0;
    for (; budget.more(done); ++done) {
      p.poke();
      epoll_event ev[16];
      check(::epoll_wait(ep, ev, 16, -1) == 1 && ev[0].data.fd == p.active_r, "epoll_wait");
      p.drain();
    }
    sw.stop(state, done);
    ::close(ep);
  }
}
BENCHMARK(fd_epoll)->Name("fd/floor_epoll")->Apply(args);

// ---- Asio ----------------------------------------------------------------------------------

using asio::posix::stream_descriptor;

asio::awaitable<void> asio_idle(stream_descriptor& sd) {
  asio::error_code ec;
  co_await sd.async_wait(stream_descriptor::wait_read,
                         asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<void> asio_active(stream_descriptor& sd, const Fds& p, const bench::Budget& budget,
                                  std::int64_t& done) {
  for (; budget.more(done); ++done) {
    p.poke();
    co_await sd.async_wait(stream_descriptor::wait_read, asio::use_awaitable);
    p.drain();
  }
}

void fd_asio(benchmark::State& state) {
  const std::int64_t idle = state.range(0);
  for (auto _ : state) {
    Fds p(idle);
    asio::io_context ctx(1);
    std::vector<std::unique_ptr<stream_descriptor>> idle_sd;
    for (int fd : p.idle) {
      idle_sd.push_back(std::make_unique<stream_descriptor>(ctx, fd));
      asio::co_spawn(ctx, asio_idle(*idle_sd.back()), asio::detached);
    }
    stream_descriptor active(ctx, p.active_r);
    ctx.poll();  // every idle waiter is registered
    ctx.restart();
    const bench::Budget budget(wakes_for(idle));
    std::int64_t done = 0;
    bench::Stopwatch sw;
    asio::co_spawn(ctx, asio_active(active, p, budget, done),
                   [&](std::exception_ptr) { ctx.stop(); });
    ctx.run();
    sw.stop(state, done);
    // Give the fds back to Fds (release() also cancels the idle waits), let them finish.
    active.release();
    for (auto& sd : idle_sd)
      sd->release();
    ctx.restart();
    ctx.run();
  }
}
BENCHMARK(fd_asio)->Name("fd/asio_epoll")->Apply(args);

// ---- libuv ---------------------------------------------------------------------------------

struct UvActive {
  const Fds* fds;
  const bench::Budget* budget;
  std::int64_t done;
};

void fd_libuv(benchmark::State& state) {
  const std::int64_t idle = state.range(0);
  for (auto _ : state) {
    Fds p(idle);
    uv_loop_t loop;
    uv_loop_init(&loop);
    std::vector<uv_poll_t> idle_polls(p.idle.size());
    for (std::size_t i = 0; i < idle_polls.size(); ++i) {
      uv_poll_init(&loop, &idle_polls[i], p.idle[i]);
      uv_poll_start(&idle_polls[i], UV_READABLE, [](uv_poll_t*, int, int) {});
    }
    const bench::Budget budget(wakes_for(idle));
    UvActive game{&p, &budget, 0};
    uv_poll_t active;
    uv_poll_init(&loop, &active, p.active_r);
    active.data = &game;
    uv_run(&loop, UV_RUN_NOWAIT);  // registrations reach epoll
    bench::Stopwatch sw;
    uv_poll_start(&active, UV_READABLE, [](uv_poll_t* h, int, int) {
      auto& g = *static_cast<UvActive*>(h->data);
      g.fds->drain();
      if (!g.budget->more(++g.done)) {
        uv_stop(h->loop);
      } else {
        g.fds->poke();
      }
    });
    p.poke();
    uv_run(&loop, UV_RUN_DEFAULT);
    sw.stop(state, game.done);
    for (uv_poll_t& h : idle_polls)
      uv_close(reinterpret_cast<uv_handle_t*>(&h), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&active), nullptr);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
  }
}
BENCHMARK(fd_libuv)->Name("fd/libuv_poll")->Apply(args);

}  // namespace

COSELECT_BENCH_MAIN()
