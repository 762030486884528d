// fd scaling: N idle pipes (N = 10, 100, 1000), each with a waiter for readability that never
// fires, plus one active pipe that a coroutine (or callback) writes a byte to, waits on, and
// reads back. One op = one wake of the active pipe with N idle fds watched.
//
//   coselect   co_await readable(fd) on a Scheduler (select(): cost grows with the watched fds)
//   peers      Asio posix::stream_descriptor::async_wait (epoll), libuv uv_poll_t (epoll)
//   floors     select() over a prebuilt fd_set, epoll_wait() on a prebuilt epoll set
//
// Idle read ends stay below FD_SETSIZE: their write ends are moved above 1024.
#include <fcntl.h>
#include <sys/epoll.h>
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

// Fewer wakes where each one is expensive; at least 5,000.
std::int64_t wakes_for(std::int64_t idle) {
  return bench::count(std::max<std::int64_t>(5'000, 1'000'000 / idle));
}

struct Pipes {
  std::vector<int> idle_r, idle_w;
  int active_r = -1, active_w = -1;

  explicit Pipes(std::int64_t idle) {
    for (std::int64_t i = 0; i < idle; ++i) {
      auto [r, w] = make();
      idle_r.push_back(r);
      idle_w.push_back(w);
    }
    std::tie(active_r, active_w) = make();
  }
  ~Pipes() {
    for (int fd : idle_r)
      ::close(fd);
    for (int fd : idle_w)
      ::close(fd);
    ::close(active_r);
    ::close(active_w);
  }
  Pipes(const Pipes&) = delete;
  Pipes& operator=(const Pipes&) = delete;

  bool selectable() const {
    return std::all_of(idle_r.begin(), idle_r.end(), [](int fd) { return fd < FD_SETSIZE; }) &&
           active_r < FD_SETSIZE;
  }
  int max_fd() const { return std::max(active_r, *std::max_element(idle_r.begin(), idle_r.end())); }

  void poke() const {
    const char c = 1;
    check(::write(active_w, &c, 1) == 1, "write");
  }
  void drain() const {
    char c;
    check(::read(active_r, &c, 1) == 1, "read");
  }

 private:
  static std::pair<int, int> make() {
    int fds[2];
    check(::pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0, "pipe2");
    const int high = ::fcntl(fds[1], F_DUPFD_CLOEXEC, 1024);  // keep low numbers for readers
    check(high >= 0, "fcntl(F_DUPFD_CLOEXEC)");
    ::close(fds[1]);
    return {fds[0], high};
  }
};

void args(benchmark::internal::Benchmark* b) {
  bench::configure(b);
  b->ArgName("idle")->Arg(10)->Arg(100)->Arg(1000);
}

// ---- coselect ------------------------------------------------------------------------------

coselect::Task<void> cs_idle(int fd) {
  co_await coselect::readable(fd);
}

coselect::Task<void> cs_active(benchmark::State& state, const Pipes& p, std::int64_t wakes) {
  coselect::Scheduler& s = *coselect::Scheduler::current();
  for (int fd : p.idle_r)
    s.spawn(cs_idle(fd));
  co_await coselect::yield_now();  // every idle waiter is registered
  bench::Stopwatch sw;
  for (std::int64_t i = 0; i < wakes; ++i) {
    p.poke();
    co_await coselect::readable(p.active_r);
    p.drain();
  }
  sw.stop(state, wakes);
}

void fd_coselect(benchmark::State& state) {
  const std::int64_t idle = state.range(0);
  for (auto _ : state) {
    Pipes p(idle);
    if (!p.selectable()) {
      state.SkipWithError("fds beyond FD_SETSIZE");
      break;
    }
    coselect::Scheduler s;
    s.run(cs_active(state, p, wakes_for(idle)));
  }  // the scheduler destroys the idle waiters' frames
}
BENCHMARK(fd_coselect)->Name("fd/coselect_select")->Apply(args);

// ---- floors --------------------------------------------------------------------------------

void fd_select(benchmark::State& state) {
  const std::int64_t idle = state.range(0);
  const std::int64_t wakes = wakes_for(idle);
  for (auto _ : state) {
    Pipes p(idle);
    if (!p.selectable()) {
      state.SkipWithError("fds beyond FD_SETSIZE");
      break;
    }
    fd_set all;
    FD_ZERO(&all);
    for (int fd : p.idle_r)
      FD_SET(fd, &all);
    FD_SET(p.active_r, &all);
    const int nfds = p.max_fd() + 1;
    bench::Stopwatch sw;
    for (std::int64_t i = 0; i < wakes; ++i) {
      p.poke();
      fd_set ready = all;
      check(::select(nfds, &ready, nullptr, nullptr, nullptr) == 1, "select");
      check(FD_ISSET(p.active_r, &ready), "select: active fd");
      p.drain();
    }
    sw.stop(state, wakes);
  }
}
BENCHMARK(fd_select)->Name("fd/floor_select")->Apply(args);

void fd_epoll(benchmark::State& state) {
  const std::int64_t idle = state.range(0);
  const std::int64_t wakes = wakes_for(idle);
  for (auto _ : state) {
    Pipes p(idle);
    const int ep = ::epoll_create1(EPOLL_CLOEXEC);
    check(ep >= 0, "epoll_create1");
    auto add = [&](int fd) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = fd;
      check(::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll_ctl");
    };
    for (int fd : p.idle_r)
      add(fd);
    add(p.active_r);
    bench::Stopwatch sw;
    for (std::int64_t i = 0; i < wakes; ++i) {
      p.poke();
      epoll_event ev[16];
      check(::epoll_wait(ep, ev, 16, -1) == 1 && ev[0].data.fd == p.active_r, "epoll_wait");
      p.drain();
    }
    sw.stop(state, wakes);
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

asio::awaitable<void> asio_active(stream_descriptor& sd, const Pipes& p, std::int64_t wakes) {
  for (std::int64_t i = 0; i < wakes; ++i) {
    p.poke();
    co_await sd.async_wait(stream_descriptor::wait_read, asio::use_awaitable);
    p.drain();
  }
}

void fd_asio(benchmark::State& state) {
  const std::int64_t idle = state.range(0);
  const std::int64_t wakes = wakes_for(idle);
  for (auto _ : state) {
    Pipes p(idle);
    asio::io_context ctx(1);
    std::vector<std::unique_ptr<stream_descriptor>> idle_sd;
    for (int fd : p.idle_r) {
      idle_sd.push_back(std::make_unique<stream_descriptor>(ctx, fd));
      asio::co_spawn(ctx, asio_idle(*idle_sd.back()), asio::detached);
    }
    stream_descriptor active(ctx, p.active_r);
    ctx.poll();  // every idle waiter is registered
    ctx.restart();
    bench::Stopwatch sw;
    asio::co_spawn(ctx, asio_active(active, p, wakes), [&](std::exception_ptr) { ctx.stop(); });
    ctx.run();
    sw.stop(state, wakes);
    // Give the fds back to Pipes (release() also cancels the idle waits), let them finish.
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
  const Pipes* pipes;
  std::int64_t left;
};

void fd_libuv(benchmark::State& state) {
  const std::int64_t idle = state.range(0);
  const std::int64_t wakes = wakes_for(idle);
  for (auto _ : state) {
    Pipes p(idle);
    uv_loop_t loop;
    uv_loop_init(&loop);
    std::vector<uv_poll_t> idle_polls(p.idle_r.size());
    for (std::size_t i = 0; i < idle_polls.size(); ++i) {
      uv_poll_init(&loop, &idle_polls[i], p.idle_r[i]);
      uv_poll_start(&idle_polls[i], UV_READABLE, [](uv_poll_t*, int, int) {});
    }
    UvActive game{&p, wakes};
    uv_poll_t active;
    uv_poll_init(&loop, &active, p.active_r);
    active.data = &game;
    uv_run(&loop, UV_RUN_NOWAIT);  // registrations reach epoll
    bench::Stopwatch sw;
    uv_poll_start(&active, UV_READABLE, [](uv_poll_t* h, int, int) {
      auto& g = *static_cast<UvActive*>(h->data);
      g.pipes->drain();
      if (--g.left == 0) {
        uv_stop(h->loop);
      } else {
        g.pipes->poke();
      }
    });
    p.poke();
    uv_run(&loop, UV_RUN_DEFAULT);
    sw.stop(state, wakes);
    check(game.left == 0, "libuv fd");
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
