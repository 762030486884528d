// Cross-thread wake round trip: two threads ping-pong N times (default 200,000). Each round
// trip wakes a sleeping thread twice, so this measures the kernel's wake-up path plus what each
// mechanism adds to it.
//
//   coselect   two Schedulers on two threads, coroutines awaiting each other's WaitableEvent
//   floors     pipe + select(), eventfd + epoll_wait(), std::mutex + std::condition_variable
//   peers      asio::post between two io_contexts, libuv uv_async_send between two loops
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <unistd.h>
#include <uv.h>

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <atomic>
#include <condition_variable>
#include <coselect.hpp>
#include <cstdint>
#include <mutex>
#include <thread>

#include "common.hpp"

namespace {

constexpr std::int64_t kRoundTrips = 200'000;

// ---- coselect ------------------------------------------------------------------------------

coselect::Task<void> ping_side(coselect::WaitableEvent& mine, coselect::WaitableEvent& theirs,
                               std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    theirs.set();
    co_await mine.wait();
    mine.clear();
  }
}

coselect::Task<void> pong_side(coselect::WaitableEvent& mine, coselect::WaitableEvent& theirs,
                               std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    co_await mine.wait();
    mine.clear();
    theirs.set();
  }
}

void wake_coselect(benchmark::State& state) {
  const std::int64_t n = bench::count(kRoundTrips);
  for (auto _ : state) {
    coselect::WaitableEvent ping, pong;
    coselect::Scheduler a, b;
    bench::Stopwatch sw;
    std::thread other([&] { b.run(pong_side(ping, pong, n)); });
    a.run(ping_side(pong, ping, n));
    other.join();
    sw.stop(state, n);
  }
}
COSELECT_BENCH(wake_coselect)->Name("wake/coselect");

// ---- floors --------------------------------------------------------------------------------

struct Pipe {
  int r = -1, w = -1;
  Pipe() {
    int fds[2];
    if (::pipe(fds) != 0) bench::fail("pipe");
    r = fds[0];
    w = fds[1];
  }
  ~Pipe() {
    ::close(r);
    ::close(w);
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
};

void select_read(int fd) {
  fd_set set;
  FD_ZERO(&set);
  FD_SET(fd, &set);
  if (::select(fd + 1, &set, nullptr, nullptr, nullptr) != 1) bench::fail("select");
  char c;
  if (::read(fd, &c, 1) != 1) bench::fail("read");
}

void write_one(int fd) {
  const char c = 1;
  if (::write(fd, &c, 1) != 1) bench::fail("write");
}

void wake_pipe_select(benchmark::State& state) {
  const std::int64_t n = bench::count(kRoundTrips);
  for (auto _ : state) {
    Pipe to_b, to_a;
    bench::Stopwatch sw;
    std::thread other([&] {
      for (std::int64_t i = 0; i < n; ++i) {
        select_read(to_b.r);
        write_one(to_a.w);
      }
    });
    for (std::int64_t i = 0; i < n; ++i) {
      write_one(to_b.w);
      select_read(to_a.r);
    }
    other.join();
    sw.stop(state, n);
  }
}
COSELECT_BENCH(wake_pipe_select)->Name("wake/floor_pipe_select");

struct EventFd {
  int fd = -1, ep = -1;
  EventFd() {
    fd = ::eventfd(0, EFD_CLOEXEC);
    ep = ::epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (fd < 0 || ep < 0 || ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) bench::fail("eventfd");
  }
  ~EventFd() {
    ::close(fd);
    ::close(ep);
  }
  EventFd(const EventFd&) = delete;
  EventFd& operator=(const EventFd&) = delete;

  void signal() const {
    const std::uint64_t one = 1;
    if (::write(fd, &one, sizeof one) != sizeof one) bench::fail("eventfd write");
  }
  void wait() const {
    epoll_event ev{};
    while (::epoll_wait(ep, &ev, 1, -1) != 1) {
    }
    std::uint64_t value;
    if (::read(fd, &value, sizeof value) != sizeof value) bench::fail("eventfd read");
  }
};

void wake_eventfd_epoll(benchmark::State& state) {
  const std::int64_t n = bench::count(kRoundTrips);
  for (auto _ : state) {
    EventFd to_b, to_a;
    bench::Stopwatch sw;
    std::thread other([&] {
      for (std::int64_t i = 0; i < n; ++i) {
        to_b.wait();
        to_a.signal();
      }
    });
    for (std::int64_t i = 0; i < n; ++i) {
      to_b.signal();
      to_a.wait();
    }
    other.join();
    sw.stop(state, n);
  }
}
COSELECT_BENCH(wake_eventfd_epoll)->Name("wake/floor_eventfd_epoll");

void wake_condvar(benchmark::State& state) {
  const std::int64_t n = bench::count(kRoundTrips);
  for (auto _ : state) {
    std::mutex m;
    std::condition_variable cv_a, cv_b;
    int turn = 0;  // 1: b's turn, 0: a's turn
    bench::Stopwatch sw;
    std::thread other([&] {
      for (std::int64_t i = 0; i < n; ++i) {
        std::unique_lock lock(m);
        cv_b.wait(lock, [&] { return turn == 1; });
        turn = 0;
        lock.unlock();
        cv_a.notify_one();
      }
    });
    for (std::int64_t i = 0; i < n; ++i) {
      std::unique_lock lock(m);
      turn = 1;
      lock.unlock();
      cv_b.notify_one();
      lock.lock();
      cv_a.wait(lock, [&] { return turn == 0; });
    }
    other.join();
    sw.stop(state, n);
  }
}
COSELECT_BENCH(wake_condvar)->Name("wake/floor_mutex_condvar");

// ---- Asio ----------------------------------------------------------------------------------

struct AsioPingPong {
  asio::io_context& a;
  asio::io_context& b;
  std::int64_t left;

  void ping() {
    asio::post(b, [this] { pong(); });
  }
  void pong() {
    asio::post(a, [this] {
      if (--left == 0) {
        a.stop();
        b.stop();
      } else {
        ping();
      }
    });
  }
};

void wake_asio(benchmark::State& state) {
  const std::int64_t n = bench::count(kRoundTrips);
  for (auto _ : state) {
    asio::io_context a(1), b(1);
    auto guard_a = asio::make_work_guard(a);
    auto guard_b = asio::make_work_guard(b);
    AsioPingPong game{a, b, n};
    bench::Stopwatch sw;
    std::thread other([&] { b.run(); });
    game.ping();
    a.run();
    other.join();
    sw.stop(state, n);
    if (game.left != 0) bench::fail("asio ping-pong did not finish");
  }
}
COSELECT_BENCH(wake_asio)->Name("wake/asio_post");

// ---- libuv ---------------------------------------------------------------------------------

struct UvPingPong {
  uv_loop_t loop_a{}, loop_b{};
  uv_async_t async_a{}, async_b{};  // async_a wakes loop a, async_b wakes loop b
  std::int64_t left = 0;
  std::atomic<bool> done{false};
};

void wake_libuv(benchmark::State& state) {
  const std::int64_t n = bench::count(kRoundTrips);
  for (auto _ : state) {
    UvPingPong g;
    g.left = n;
    uv_loop_init(&g.loop_a);
    uv_loop_init(&g.loop_b);
    g.async_a.data = &g;
    g.async_b.data = &g;
    uv_async_init(&g.loop_a, &g.async_a, [](uv_async_t* h) {
      auto& game = *static_cast<UvPingPong*>(h->data);
      if (--game.left == 0) {
        game.done.store(true, std::memory_order_release);
        uv_async_send(&game.async_b);
        uv_close(reinterpret_cast<uv_handle_t*>(h), nullptr);
      } else {
        uv_async_send(&game.async_b);
      }
    });
    uv_async_init(&g.loop_b, &g.async_b, [](uv_async_t* h) {
      auto& game = *static_cast<UvPingPong*>(h->data);
      if (game.done.load(std::memory_order_acquire)) {
        uv_close(reinterpret_cast<uv_handle_t*>(h), nullptr);
      } else {
        uv_async_send(&game.async_a);
      }
    });
    bench::Stopwatch sw;
    std::thread other([&] { uv_run(&g.loop_b, UV_RUN_DEFAULT); });
    uv_async_send(&g.async_b);
    uv_run(&g.loop_a, UV_RUN_DEFAULT);
    other.join();
    sw.stop(state, n);
    uv_loop_close(&g.loop_a);
    uv_loop_close(&g.loop_b);
  }
}
COSELECT_BENCH(wake_libuv)->Name("wake/libuv_async");

}  // namespace

COSELECT_BENCH_MAIN()
