// The cross-thread wake round trip of bench_wake.cpp's wake/coselect (two Schedulers on two
// threads, coroutines ping-ponging two WaitableEvents), plus the same game between two plain
// threads blocked in wait_blocking(), without Google Benchmark, so that it also builds for
// Windows and runs under wine next to the Linux figures:
//
//   g++ -std=c++20 -O2 -Iinclude bench/wake_roundtrip.cpp -o /tmp/wake -pthread
//   x86_64-w64-mingw32-g++-posix -std=c++20 -O2 -Iinclude -D_GLIBCXX_USE_POSIX_SEMAPHORE=1
//       bench/wake_roundtrip.cpp -o /tmp/wake.exe -static -lws2_32 -lsynchronization
//   /tmp/wake [round_trips]        WINEDEBUG=-all wine64 /tmp/wake.exe [round_trips]
//
// Prints one line per game: the median over 5 runs of the time per round trip (each round trip
// wakes a sleeping thread twice). The floor is the same game on the platform's own parts: two
// threads, each blocked in select() on its end of a channel (the library's pipe, or its socket
// pair on Windows), answering with one byte.
#include <coselect.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Game {
  coselect::WaitableEvent ping, pong;
  std::atomic<bool> stop{false};
};

coselect::Task<void> side_a(Game& g, long rounds) {
  for (long i = 0; i < rounds; ++i) {
    g.ping.set();
    co_await g.pong.wait();
    g.pong.clear();
  }
  g.stop.store(true, std::memory_order_relaxed);
  g.ping.set();
}

coselect::Task<void> side_b(Game& g) {
  for (;;) {
    co_await g.ping.wait();
    g.ping.clear();
    if (g.stop.load(std::memory_order_relaxed)) co_return;
    g.pong.set();
  }
}

double loops_ns(long rounds) {
  Game g;
  coselect::Scheduler a, b;
  const auto start = Clock::now();
  std::thread other([&] { b.run(side_b(g)); });
  a.run(side_a(g, rounds));
  other.join();
  return std::chrono::duration<double, std::nano>(Clock::now() - start).count() /
         static_cast<double>(rounds);
}

double threads_ns(long rounds) {
  Game g;
  const auto start = Clock::now();
  std::thread other([&] {
    for (;;) {
      g.ping.wait_blocking();
      g.ping.clear();
      if (g.stop.load(std::memory_order_relaxed)) return;
      g.pong.set();
    }
  });
  for (long i = 0; i < rounds; ++i) {
    g.ping.set();
    g.pong.wait_blocking();
    g.pong.clear();
  }
  g.stop.store(true, std::memory_order_relaxed);
  g.ping.set();
  other.join();
  return std::chrono::duration<double, std::nano>(Clock::now() - start).count() /
         static_cast<double>(rounds);
}

// Blocks in select() until h is readable (one handle, no timeout).
void select_readable(coselect::native_handle h) {
  fd_set set;
  FD_ZERO(&set);
  FD_SET(h, &set);
#if defined(_WIN32)
  ::select(0, &set, nullptr, nullptr, nullptr);
#else
  ::select(h + 1, &set, nullptr, nullptr, nullptr);
#endif
}

double floor_ns(long rounds) {
  const auto ping = coselect::detail::make_pipe_or_throw("ping");
  const auto pong = coselect::detail::make_pipe_or_throw("pong");
  const auto start = Clock::now();
  std::thread other([&] {
    for (long i = 0; i < rounds; ++i) {
      select_readable(ping.read_end);
      coselect::detail::drain(ping.read_end);
      coselect::detail::write_byte(pong.write_end);
    }
  });
  for (long i = 0; i < rounds; ++i) {
    coselect::detail::write_byte(ping.write_end);
    select_readable(pong.read_end);
    coselect::detail::drain(pong.read_end);
  }
  other.join();
  const double ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count() /
                    static_cast<double>(rounds);
  for (auto h : {ping.read_end, ping.write_end, pong.read_end, pong.write_end})
    coselect::detail::close_fd(h);
  return ns;
}

template <class F>
double median_of_5(F f, long rounds) {
  std::vector<double> runs;
  for (int i = 0; i < 5; ++i)
    runs.push_back(f(rounds));
  std::sort(runs.begin(), runs.end());
  return runs[2];
}

}  // namespace

int main(int argc, char** argv) {
  const long rounds = argc > 1 ? std::atol(argv[1]) : 20'000;
  std::printf("wake round trip, median of 5 runs of %ld:\n", rounds);
  std::printf("  two Schedulers (coroutines, co_await ev.wait()): %9.0f ns\n",
              median_of_5(loops_ns, rounds));
  std::printf("  two plain threads (ev.wait_blocking()):          %9.0f ns\n",
              median_of_5(threads_ns, rounds));
  std::printf("  floor: two threads, select() on a pipe/socket:   %9.0f ns\n",
              median_of_5(floor_ns, rounds));
}
