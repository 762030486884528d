// Cross-thread wake round trip: two threads ping-pong up to N times (default 200,000; each run
// stops early after --max_seconds, default 20, and reports over the round trips it did). Each
// round trip wakes a sleeping thread twice, so this measures the kernel's wake-up path plus
// what each mechanism adds to it.
//
//   coselect   two Schedulers on two threads, coroutines awaiting each other's WaitableEvent
//   floors     pipe + select(), eventfd + epoll_wait(), std::mutex + std::condition_variable
//   peers      asio::post between two io_contexts, libuv uv_async_send between two loops
//
// Side A starts every round trip and decides when to stop; it then sends B a "stop" message
// in place of the ping.
//
// Each runs twice: pinned:0 lets the kernel place the two threads; pinned:1 pins both to one
// CPU, as a busy machine often does, so that every wake-up is also a context switch there.
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <coselect.hpp>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "common.hpp"

namespace {

constexpr std::int64_t kRoundTrips = 200'000;

void check(bool ok, const char* what) {
  if (!ok) bench::fail(what);
}

// With `one_cpu`, pins the calling thread (and so the threads it starts) to the first CPU it may
// run on, until destroyed.
class Pin {
 public:
  explicit Pin(bool one_cpu) : active_(one_cpu) {
    if (!active_) return;
    check(pthread_getaffinity_np(pthread_self(), sizeof saved_, &saved_) == 0, "getaffinity");
    cpu_set_t one;
    CPU_ZERO(&one);
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &saved_)) {
        CPU_SET(cpu, &one);
        break;
      }
    }
    check(pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0, "setaffinity");
  }
  ~Pin() {
    if (active_) pthread_setaffinity_np(pthread_self(), sizeof saved_, &saved_);
  }
  Pin(const Pin&) = delete;
  Pin& operator=(const Pin&) = delete;

 private:
  bool active_;
  cpu_set_t saved_{};
};

void wake_args(benchmark::internal::Benchmark* b) {
  bench::configure(b);
  b->ArgName("pinned")->Arg(0)->Arg(1);
}

// ---- coselect ------------------------------------------------------------------------------

struct CoselectGame {
  coselect::WaitableEvent ping, pong;
  std::atomic<bool> stop{false};
  std::int64_t done = 0;
};

coselect::Task<void> side_a(CoselectGame& g, const bench::Budget& budget) {
  for (std::int64_t i = 0;; ++i) {
    if (!budget.more(i)) {
      g.stop.store(true, std::memory_order_relaxed);
      g.ping.set();  // the set() publishes `stop`
      co_return;
    }
    g.ping.set();
    co_await g.pong.wait();
    g.pong.clear();
    ++g.done;
  }
}

coselect::Task<void> side_b(CoselectGame& g) {
  for (;;) {
    co_await g.ping.wait();
    g.ping.clear();
    if (g.stop.load(std::memory_order_relaxed)) co_return;
    g.pong.set();
  }
}

void wake_coselect(benchmark::State& state) {
  for (auto _ : state) {
    const Pin pin(state.range(0) == 1);
    CoselectGame g;
    coselect::Scheduler a, b;
    bench::Stopwatch sw;
    const bench::Budget budget(bench::count(kRoundTrips));
    std::thread other([&] { b.run(side_b(g)); });
    a.run(side_a(g, budget));
    other.join();
    sw.stop(state, g.done);
  }
}
BENCHMARK(wake_coselect)->Name("wake/coselect")->Apply(wake_args);

// ---- coselect with many fds open -------------------------------------------------------------
//
// DESIGN §6: no latency cliff with any number of fds open. `fds_open` descriptors (/dev/null)
// are opened before the Schedulers and events, so every pipe of theirs is numbered above them
// (above FD_SETSIZE at 2,000). Each round trip is timed on its own: p50, p99 and the worst.
// The same source also builds against older include/ trees (bench/wake_before_after.sh), so the
// backend variants exist only where <coselect/backend.hpp> does.

class OpenFds {
 public:
  explicit OpenFds(std::int64_t n) {
    rlimit rl{};
    check(::getrlimit(RLIMIT_NOFILE, &rl) == 0, "getrlimit");
    rl.rlim_cur = rl.rlim_max;
    check(::setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit");
    for (std::int64_t i = 0; i < n; ++i) {
      const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      check(fd >= 0, "open(/dev/null)");
      fds_.push_back(fd);
    }
  }
  ~OpenFds() {
    for (int fd : fds_)
      ::close(fd);
  }
  OpenFds(const OpenFds&) = delete;
  OpenFds& operator=(const OpenFds&) = delete;

 private:
  std::vector<int> fds_;
};

coselect::Task<void> side_a_timed(CoselectGame& g, const bench::Budget& budget,
                                  std::vector<std::int64_t>& samples) {
  for (std::int64_t i = 0;; ++i) {
    if (!budget.more(i)) {
      g.stop.store(true, std::memory_order_relaxed);
      g.ping.set();
      co_return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    g.ping.set();
    co_await g.pong.wait();
    g.pong.clear();
    samples.push_back(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0)
            .count());
    ++g.done;
  }
}

template <class... BackendArg>
void wake_fds_open(benchmark::State& state, BackendArg... backend) {
  for (auto _ : state) {
    const OpenFds filler(state.range(0));
    CoselectGame g;  // after the filler: the events' pipes are numbered above it
    coselect::Scheduler a(backend...), b(backend...);
    std::vector<std::int64_t> samples;
    samples.reserve(static_cast<std::size_t>(bench::count(kRoundTrips)));
    bench::Stopwatch sw;
    const bench::Budget budget(bench::count(kRoundTrips));
    std::thread other([&] { b.run(side_b(g)); });
    a.run(side_a_timed(g, budget, samples));
    other.join();
    sw.stop(state, g.done);
    check(!samples.empty(), "no round trip");
    std::sort(samples.begin(), samples.end());
    auto at = [&](double q) {
      const auto i = static_cast<std::size_t>(q * static_cast<double>(samples.size() - 1));
      return static_cast<double>(samples[i]);
    };
    state.counters["p50_ns"] = at(0.50);
    state.counters["p99_ns"] = at(0.99);
    state.counters["max_ns"] = static_cast<double>(samples.back());
  }
}

void fds_args(benchmark::internal::Benchmark* b) {
  bench::configure(b);
  b->ArgName("fds_open")->Arg(0)->Arg(2000);
}

void wake_fds_default(benchmark::State& state) {
  wake_fds_open(state);
}
BENCHMARK(wake_fds_default)->Name("wake/coselect_fds")->Apply(fds_args);

#if __has_include(<coselect/backend.hpp>)
void wake_fds_epoll(benchmark::State& state) {
  wake_fds_open(state, coselect::Backend::epoll);
}
BENCHMARK(wake_fds_epoll)->Name("wake/coselect_epoll_fds")->Apply(fds_args);
#endif

// ---- floors --------------------------------------------------------------------------------

struct Pipe {
  int r = -1, w = -1;
  Pipe() {
    int fds[2];
    check(::pipe(fds) == 0, "pipe");
    r = fds[0];
    w = fds[1];
  }
  ~Pipe() {
    ::close(r);
    ::close(w);
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;

  void send(char c) const { check(::write(w, &c, 1) == 1, "write"); }
  char receive() const {
    fd_set set;
    FD_ZERO(&set);
    FD_SET(r, &set);
    check(::select(r + 1, &set, nullptr, nullptr, nullptr) == 1, "select");
    char c;
    check(::read(r, &c, 1) == 1, "read");
    return c;
  }
};

void wake_pipe_select(benchmark::State& state) {
  for (auto _ : state) {
    const Pin pin(state.range(0) == 1);
    Pipe to_b, to_a;
    std::int64_t done = 0;
    bench::Stopwatch sw;
    const bench::Budget budget(bench::count(kRoundTrips));
    std::thread other([&] {
      while (to_b.receive() != 0)
        to_a.send(1);
    });
    for (std::int64_t i = 0; budget.more(i); ++i, ++done) {
      to_b.send(1);
      to_a.receive();
    }
    to_b.send(0);
    other.join();
    sw.stop(state, done);
  }
}
BENCHMARK(wake_pipe_select)->Name("wake/floor_pipe_select")->Apply(wake_args);

struct EventFd {
  int fd = -1, ep = -1;
  EventFd() {
    fd = ::eventfd(0, EFD_CLOEXEC);
    ep = ::epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    check(fd >= 0 && ep >= 0 && ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "eventfd");
  }
  ~EventFd() {
    ::close(fd);
    ::close(ep);
  }
  EventFd(const EventFd&) = delete;
  EventFd& operator=(const EventFd&) = delete;

  void send(std::uint64_t value) const {
    check(::write(fd, &value, sizeof value) == sizeof value, "eventfd write");
  }
  std::uint64_t receive() const {
    epoll_event ev{};
    while (::epoll_wait(ep, &ev, 1, -1) != 1) {
    }
    std::uint64_t value;
    check(::read(fd, &value, sizeof value) == sizeof value, "eventfd read");
    return value;
  }
};

void wake_eventfd_epoll(benchmark::State& state) {
  for (auto _ : state) {
    const Pin pin(state.range(0) == 1);
    EventFd to_b, to_a;
    std::int64_t done = 0;
    bench::Stopwatch sw;
    const bench::Budget budget(bench::count(kRoundTrips));
    std::thread other([&] {
      while (to_b.receive() == 1)
        to_a.send(1);
    });
    for (std::int64_t i = 0; budget.more(i); ++i, ++done) {
      to_b.send(1);
      to_a.receive();
    }
    to_b.send(2);  // stop
    other.join();
    sw.stop(state, done);
  }
}
BENCHMARK(wake_eventfd_epoll)->Name("wake/floor_eventfd_epoll")->Apply(wake_args);

void wake_condvar(benchmark::State& state) {
  for (auto _ : state) {
    const Pin pin(state.range(0) == 1);
    std::mutex m;
    std::condition_variable cv_a, cv_b;
    int turn = 0;  // 0: a's turn, 1: b's turn, 2: b must stop
    std::int64_t done = 0;
    bench::Stopwatch sw;
    const bench::Budget budget(bench::count(kRoundTrips));
    std::thread other([&] {
      for (;;) {
        std::unique_lock lock(m);
        cv_b.wait(lock, [&] { return turn != 0; });
        if (turn == 2) return;
        turn = 0;
        lock.unlock();
        cv_a.notify_one();
      }
    });
    for (std::int64_t i = 0;; ++i) {
      const bool more = budget.more(i);
      std::unique_lock lock(m);
      turn = more ? 1 : 2;
      lock.unlock();
      cv_b.notify_one();
      if (!more) break;
      lock.lock();
      cv_a.wait(lock, [&] { return turn == 0; });
      ++done;
    }
    other.join();
    sw.stop(state, done);
  }
}
BENCHMARK(wake_condvar)->Name("wake/floor_mutex_condvar")->Apply(wake_args);

// ---- Asio ----------------------------------------------------------------------------------

struct AsioGame {
  asio::io_context& a;
  asio::io_context& b;
  const bench::Budget& budget;
  std::int64_t done = 0;

  void ping() {
    if (!budget.more(done)) {
      a.stop();
      b.stop();
      return;
    }
    asio::post(b, [this] { pong(); });
  }
  void pong() {
    asio::post(a, [this] {
      ++done;
      ping();
    });
  }
};

void wake_asio(benchmark::State& state) {
  for (auto _ : state) {
    const Pin pin(state.range(0) == 1);
    asio::io_context a(1), b(1);
    auto guard_a = asio::make_work_guard(a);
    auto guard_b = asio::make_work_guard(b);
    bench::Stopwatch sw;
    const bench::Budget budget(bench::count(kRoundTrips));
    AsioGame game{a, b, budget};
    std::thread other([&] { b.run(); });
    asio::post(a, [&] { game.ping(); });
    a.run();
    other.join();
    sw.stop(state, game.done);
  }
}
BENCHMARK(wake_asio)->Name("wake/asio_post")->Apply(wake_args);

// ---- libuv ---------------------------------------------------------------------------------

struct UvGame {
  uv_loop_t loop_a{}, loop_b{};
  uv_async_t async_a{}, async_b{};  // async_a wakes loop a, async_b wakes loop b
  const bench::Budget* budget = nullptr;
  std::int64_t done = 0;
  std::atomic<bool> stop{false};
};

void wake_libuv(benchmark::State& state) {
  for (auto _ : state) {
    const Pin pin(state.range(0) == 1);
    UvGame g;
    uv_loop_init(&g.loop_a);
    uv_loop_init(&g.loop_b);
    g.async_a.data = &g;
    g.async_b.data = &g;
    uv_async_init(&g.loop_a, &g.async_a, [](uv_async_t* h) {
      auto& game = *static_cast<UvGame*>(h->data);
      if (!game.budget->more(++game.done)) {
        game.stop.store(true, std::memory_order_release);
        uv_close(reinterpret_cast<uv_handle_t*>(h), nullptr);
      }
      uv_async_send(&game.async_b);
    });
    uv_async_init(&g.loop_b, &g.async_b, [](uv_async_t* h) {
      auto& game = *static_cast<UvGame*>(h->data);
      if (game.stop.load(std::memory_order_acquire)) {
        uv_close(reinterpret_cast<uv_handle_t*>(h), nullptr);
      } else {
        uv_async_send(&game.async_a);
      }
    });
    bench::Stopwatch sw;
    const bench::Budget budget(bench::count(kRoundTrips));
    g.budget = &budget;
    std::thread other([&] { uv_run(&g.loop_b, UV_RUN_DEFAULT); });
    uv_async_send(&g.async_b);
    uv_run(&g.loop_a, UV_RUN_DEFAULT);
    other.join();
    sw.stop(state, g.done);
    uv_loop_close(&g.loop_a);
    uv_loop_close(&g.loop_b);
  }
}
BENCHMARK(wake_libuv)->Name("wake/libuv_async")->Apply(wake_args);

}  // namespace

COSELECT_BENCH_MAIN()
