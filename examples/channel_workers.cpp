// A pool of worker threads feeds a coroutine through a Channel, with back-pressure and a clean
// shutdown by close().
//
// The channel holds at most 4 results: a worker that finds it full blocks in send_blocking()
// until the coroutine has taken one, so fast workers cannot run ahead of a slow consumer. When
// the last worker is done it closes the channel; the coroutine drains what was sent and then
// sees std::nullopt. It resumes on the loop thread, so it needs no lock for its own state.
#include <coselect.hpp>

#include <atomic>
#include <cstdio>
#include <optional>
#include <thread>
#include <vector>

namespace {

struct Result {
  int worker;
  int job;
  long value;
};

long slow_square(int n) {
  std::this_thread::yield();  // stands in for blocking work
  return static_cast<long>(n) * n;
}

coselect::Task<long> consume(coselect::Channel<Result>& results) {
  long total = 0;
  int count = 0;
  for (;;) {
    // Bind the result first: GCC 12 miscompiles co_await inside an if/while condition.
    std::optional<Result> r = co_await results.receive();
    if (!r) break;  // closed and drained
    total += r->value;
    if (++count % 25 == 0) std::printf("[loop] %d results so far\n", count);
  }
  std::printf("[loop] channel closed after %d results\n", count);
  co_return total;
}

}  // namespace

int main() {
  constexpr int kWorkers = 4;
  constexpr int kJobsPerWorker = 25;
  coselect::Channel<Result> results(4);  // capacity 4: the back-pressure
  std::atomic<int> running{kWorkers};

  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&results, &running, w] {
      for (int j = 0; j < kJobsPerWorker; ++j) {
        const int n = w * kJobsPerWorker + j;
        // Blocks while the channel is full; false once it is closed.
        if (!results.send_blocking(Result{w, j, slow_square(n)})) return;
      }
      if (--running == 0) results.close();  // the last worker shuts the channel
    });
  }

  coselect::Scheduler loop;
  const long total = loop.run(consume(results));
  for (std::thread& w : workers)
    w.join();

  long expected = 0;
  for (int n = 0; n < kWorkers * kJobsPerWorker; ++n)
    expected += static_cast<long>(n) * n;
  std::printf("total %ld (expected %ld)\n", total, expected);
  return total == expected ? 0 : 1;
}
