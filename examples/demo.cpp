// The coselect demo: one WaitableEvent, three ways to wait for it.
//
//   1. a plain thread blocks in wait_blocking();
//   2. coroutines on a Scheduler co_await it, while the loop also runs a timer;
//   3. a worker thread sets it — the sleeping loop wakes up through select(), and every waiter,
//      blocking or coroutine, is released by that one set().
#include <coselect.hpp>

#include <chrono>
#include <cstdio>
#include <thread>

using namespace std::chrono_literals;

namespace {

coselect::Task<void> waiter(const char* name, coselect::WaitableEvent& ready) {
  std::printf("[loop]    %s waits\n", name);
  co_await ready.wait();  // suspends; resumes on the loop's thread after set()
  std::printf("[loop]    %s released\n", name);
}

coselect::Task<int> demo(coselect::WaitableEvent& ready) {
  // A timer keeps ticking while the waiters sleep: the loop is not blocked by them.
  auto ticker = coselect::Scheduler::current()->tasks().call_every(
      20ms, [] { std::printf("[loop]    tick\n"); });

  // Run two waiters concurrently; when_all resumes us once both are released.
  co_await coselect::when_all(waiter("coroutine A", ready), waiter("coroutine B", ready));
  ticker.suspend();

  // With a timeout: the event is still set, so this returns true at once.
  const bool still_set = co_await ready.wait(100ms);
  ready.clear();
  const bool timed_out = !co_await ready.wait(30ms);
  co_return still_set&& timed_out ? 0 : 1;
}

}  // namespace

int main() {
  coselect::WaitableEvent ready;

  std::thread blocked([&] {
    std::printf("[thread]  blocks in wait_blocking()\n");
    ready.wait_blocking();
    std::printf("[thread]  released\n");
  });

  std::thread worker([&] {
    std::this_thread::sleep_for(70ms);  // "work"; the loop idles in select() meanwhile
    std::printf("[worker]  set()\n");
    ready.set();
  });

  coselect::Scheduler loop;
  const int status = loop.run(demo(ready));

  worker.join();
  blocked.join();
  std::printf("demo %s\n", status == 0 ? "finished" : "FAILED");
  return status;
}
