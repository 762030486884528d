// Tests of coselect::Latch (DESIGN.md §9): counting down from any thread, misuse, releasing
// every coroutine and blocked thread at zero, the zero fast path, and cancellation
// (support/primitive_waits.hpp). Coroutines only record; assertions follow run().

#include <atomic>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <coselect.hpp>
#include "support/fixtures.hpp"
#include "support/primitive_waits.hpp"
#include "support/thread_probe.hpp"

namespace {

using namespace std::chrono_literals;
using coselect::Latch;
using coselect::Scheduler;
using coselect::Task;
using coselect_test::Blocked;
using coselect_test::BlockedCase;
using coselect_test::PrimitiveWait;

// A latch at one: wait() waits; serve() counts it down to zero.
class LatchAtOne : public Blocked {
 public:
  LatchAtOne() { l_.emplace(1); }
  Task<void> wait() override { co_await l_->wait(); }
  void serve() override { l_->count_down(); }
  void check(bool) override {
    // A cancelled wait took nothing: the count reached zero either way, exactly once.
    EXPECT_TRUE(l_->try_wait());
    EXPECT_THROW(l_->count_down(), std::invalid_argument);
  }
  void destroy() override { l_.reset(); }

 private:
  std::optional<Latch> l_;
};

INSTANTIATE_TEST_SUITE_P(Latch, PrimitiveWait,
                         testing::Values(BlockedCase{
                             "Wait", [] { return std::make_unique<LatchAtOne>(); }}),
                         coselect_test::blocked_case_name);

TEST(Latch, MisuseThrowsInvalidArgumentAndChangesNothing) {
  EXPECT_THROW(Latch(-1), std::invalid_argument);
  Latch l(3);
  EXPECT_THROW(l.count_down(0), std::invalid_argument);
  EXPECT_THROW(l.count_down(-1), std::invalid_argument);
  EXPECT_THROW(l.count_down(4), std::invalid_argument);
  l.count_down(2);
  EXPECT_FALSE(l.try_wait()) << "a rejected count_down counted";
  l.count_down();
  EXPECT_TRUE(l.try_wait());
  EXPECT_THROW(l.count_down(), std::invalid_argument) << "below zero";
}

TEST(Latch, WaitAtZeroDoesNotSuspendEvenWhenStopped) {
  Scheduler s;
  Latch l(0);
  std::stop_source stop;
  stop.request_stop();
  bool passed = false;
  auto body = [&]() -> Task<void> {
    co_await l.wait();
    passed = true;
  };
  s.run(coselect::with_stop_token(stop.get_token(), body()));
  EXPECT_TRUE(passed);
  l.wait_blocking();  // at zero: returns at once
}

// Reaching zero releases every waiter: coroutines on two schedulers (oldest first on each, on
// their own threads) and blocked threads; count_down from plain threads; writes made before
// the last count_down are visible to all of them.
TEST(Latch, ZeroReleasesEveryCoroutineAndThread) {
  constexpr int kCoroutines = 4;
  constexpr int kThreads = 3;
  Latch l(kThreads);
  Latch ready(2 * kCoroutines + kThreads);  // everyone is about to wait
  int payload = 0;                          // written before the count_downs, read after
  std::atomic<int> saw_payload{0};
  std::atomic<int> wrong_thread{0};
  std::vector<std::vector<int>> orders(2);
  auto loop = [&](int index) {
    Scheduler s;
    const long tid = coselect_test::primitive_test_tid();
    auto waiter = [&](int id) -> Task<void> {
      ready.count_down();
      co_await l.wait();
      orders[index].push_back(id);
      if (payload == 42) ++saw_payload;
      if (coselect_test::primitive_test_tid() != tid) ++wrong_thread;
    };
    std::vector<Task<void>> tasks;
    for (int i = 0; i < kCoroutines; ++i)
      tasks.push_back(waiter(i));
    EXPECT_EQ(coselect_test::run_all_within(s, 60s, std::move(tasks)), 0u);
  };
  std::vector<std::thread> threads;
  threads.emplace_back(loop, 0);
  threads.emplace_back(loop, 1);
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      ready.count_down();
      l.wait_blocking();
      if (payload == 42) ++saw_payload;
    });
  }
  ready.wait_blocking();
  payload = 42;
  std::vector<std::thread> counters;
  for (int i = 0; i < kThreads; ++i)
    counters.emplace_back([&] { l.count_down(); });
  for (auto& t : counters)
    t.join();
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(saw_payload, 2 * kCoroutines + kThreads);
  EXPECT_EQ(wrong_thread, 0);
  for (const auto& order : orders)
    EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3}));
}

// A blocked thread really sleeps (observed in futex(), not slept on) and wakes at zero.
TEST(Latch, WaitBlockingSleepsUntilZero) {
  Latch l(1);
  std::atomic<pid_t> tid{0};
  std::atomic<bool> returned{false};
  std::thread t([&] {
    tid = static_cast<pid_t>(coselect_test::primitive_test_tid());
    l.wait_blocking();
    returned = true;
  });
  while (tid == 0)
    std::this_thread::yield();
  long nr = -1;
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!coselect_test::read_task_syscall(tid, nr) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::yield();
  EXPECT_FALSE(returned);
  l.count_down();
  t.join();
  EXPECT_TRUE(returned);
}

// A coroutine resumed by count_down on its own loop thread resumes later in the loop, not
// inside count_down.
TEST(Latch, CountDownOnTheLoopNeverResumesInline) {
  Scheduler s;
  Latch l(1);
  bool counting = false;
  bool inline_resume = false;
  auto waiter = [&]() -> Task<void> {
    co_await l.wait();
    inline_resume = counting;
  };
  auto main = [&]() -> Task<void> {
    auto h = s.spawn(waiter());
    co_await coselect::yield_now();
    counting = true;
    l.count_down();
    counting = false;
    co_await h.join();
  };
  s.run(main());
  EXPECT_FALSE(inline_resume);
}

}  // namespace
