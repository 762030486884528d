// A periodic status reporter: a recurring task on the wall-clock grid, blocking probes run on
// worker threads, and a clean shutdown on Ctrl-C (SIGINT) or SIGTERM.
//
//   ./example_periodic_status               # runs until Ctrl-C
//   ./example_periodic_status --self-test   # sends itself SIGINT after ~2.5 s
#include <coselect.hpp>

#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <thread>

using namespace std::chrono_literals;

namespace {

// A blocking "probe" (think: a slow device read). It runs on a pool thread, never on the loop.
int probe_temperature(int round) {
  std::this_thread::sleep_for(50ms);
  return 20 + round % 3;
}

coselect::Task<void> report(int round) {
  const int celsius =
      co_await coselect::run_in_thread([round] { return probe_temperature(round); });
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%H:%M:%S", std::localtime(&now));
  std::printf("[%s] status #%d: %d C\n", stamp, round, celsius);
}

coselect::Task<int> run_until_signalled(coselect::Scheduler& loop, coselect::SignalSet& signals) {
  int round = 0;
  // Every second at :00 of the system clock (offset 0 on the grid counted from its epoch).
  auto status = loop.tasks().call_every(1s, [&] { loop.spawn(report(++round)); });

  const int sig = co_await signals.wait();
  std::printf("caught %s: shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  status.suspend();
  co_return round;
}

}  // namespace

int main(int argc, char** argv) {
  // Handlers are installed here, explicitly, and restored when `signals` goes away.
  coselect::SignalSet signals{SIGINT, SIGTERM};

  std::thread self_test;
  if (argc > 1 && std::strcmp(argv[1], "--self-test") == 0) {
    self_test = std::thread([] {
      std::this_thread::sleep_for(2500ms);
      ::kill(::getpid(), SIGINT);
    });
  }

  coselect::Scheduler loop;
  const int rounds = loop.run(run_until_signalled(loop, signals));
  loop.run_for(200ms);  // let reports already in flight finish
  if (self_test.joinable()) self_test.join();
  std::printf("%d status rounds\n", rounds);
  return rounds >= 1 ? 0 : 1;
}
