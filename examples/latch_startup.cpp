// Services start on their own threads; a coroutine and a plain thread wait, with one Latch,
// until every service is ready.
//
// Each service counts the latch down once it is up. The coroutine's co_await ready.wait()
// suspends without blocking the loop (a ticker keeps running meanwhile) and resumes on the loop
// thread; the monitor thread blocks in wait_blocking(). Both see everything the services wrote
// before their count_down().
#include <coselect.hpp>

#include <array>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

int main() {
  std::array<std::string, 3> names{"database", "cache", "queue"};
  std::array<bool, 3> up{};
  coselect::Latch ready(static_cast<std::ptrdiff_t>(names.size()));

  std::thread monitor([&] {
    ready.wait_blocking();
    std::printf("[monitor] all services up\n");
  });
  std::vector<std::thread> services;
  for (std::size_t i = 0; i < names.size(); ++i) {
    services.emplace_back([&, i] {
      std::this_thread::sleep_for(10ms * static_cast<int>(i + 1));  // stands in for start-up
      up[i] = true;
      ready.count_down();
    });
  }

  coselect::Scheduler loop;
  int ticks = 0;
  auto ticker = loop.tasks().call_every(5ms, [&ticks] { ++ticks; });
  auto main_task = [&]() -> coselect::Task<bool> {
    co_await ready.wait();  // the loop keeps ticking meanwhile
    bool all = true;
    for (std::size_t i = 0; i < names.size(); ++i) {
      std::printf("[loop] %s is %s\n", names[i].c_str(), up[i] ? "up" : "DOWN");
      all = all && up[i];
    }
    co_return all;
  };
  const bool all_up = loop.run(main_task());
  ticker.suspend();
  for (std::thread& s : services)
    s.join();
  monitor.join();
  std::printf("the loop ticked %d times while waiting\n", ticks);
  return all_up ? 0 : 1;
}
