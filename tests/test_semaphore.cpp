// Tests of coselect::Semaphore (DESIGN.md §9): counting, try_acquire, release(n) from any thread,
// misuse, FIFO service without barging, and cancellation (support/primitive_waits.hpp).
// Coroutines only record; assertions follow run().

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
#include "support/sanitizers.hpp"

namespace {

using namespace std::chrono_literals;
using coselect::Scheduler;
using coselect::Semaphore;
using coselect::Task;
using coselect_test::Blocked;
using coselect_test::BlockedCase;
using coselect_test::PrimitiveWait;

// A semaphore with no unit free: acquire() waits; serve() releases one unit.
class EmptySemaphore : public Blocked {
 public:
  EmptySemaphore() { s_.emplace(0); }
  Task<void> wait() override { co_await s_->acquire(); }  // keeps the unit
  void serve() override { s_->release(); }
  void check(bool served) override {
    // The unit went to the waiter, or it is still free: never both, never neither.
    EXPECT_EQ(s_->available(), served ? 0 : 1);
  }
  void destroy() override { s_.reset(); }

 private:
  std::optional<Semaphore> s_;
};

INSTANTIATE_TEST_SUITE_P(Semaphore, PrimitiveWait,
                         testing::Values(BlockedCase{
                             "Acquire", [] { return std::make_unique<EmptySemaphore>(); }}),
                         coselect_test::blocked_case_name);

TEST(Semaphore, CountsUnits) {
  Semaphore s(2);
  EXPECT_EQ(s.available(), 2);
  EXPECT_TRUE(s.try_acquire());
  EXPECT_TRUE(s.try_acquire());
  EXPECT_FALSE(s.try_acquire());
  s.release(3);
  EXPECT_EQ(s.available(), 3);
  std::thread([&] { s.release(); }).join();  // plain threads too
  EXPECT_EQ(s.available(), 4);
}

TEST(Semaphore, MisuseThrowsInvalidArgument) {
  EXPECT_THROW(Semaphore(-1), std::invalid_argument);
  Semaphore s(1);
  EXPECT_THROW(s.release(0), std::invalid_argument);
  EXPECT_THROW(s.release(-2), std::invalid_argument);
  EXPECT_EQ(s.available(), 1) << "a rejected release changed the count";
}

TEST(Semaphore, AcquireWithAUnitFreeDoesNotSuspendEvenWhenStopped) {
  Scheduler sched;
  Semaphore s(1);
  std::stop_source stop;
  stop.request_stop();
  bool acquired = false;
  auto body = [&]() -> Task<void> {
    co_await s.acquire();
    acquired = true;
  };
  sched.run(coselect::with_stop_token(stop.get_token(), body()));
  EXPECT_TRUE(acquired);
  EXPECT_EQ(s.available(), 0);
}

// release(n) serves the n oldest waiters, in the order they began waiting, and no try_acquire
// can take a unit meant for them; the rest of n goes to the count.
TEST(Semaphore, ReleaseServesTheOldestWaitersFirstWithoutBarging) {
  Scheduler sched;
  Semaphore s(0);
  std::vector<int> order;
  bool barged = true;
  auto waiter = [&](int id) -> Task<void> {
    co_await s.acquire();
    order.push_back(id);
  };
  auto main = [&]() -> Task<void> {
    std::vector<coselect::JoinHandle> hs;
    for (int i = 0; i < 5; ++i)
      hs.push_back(sched.spawn(waiter(i)));
    co_await coselect::yield_now();
    s.release(3);
    barged = s.try_acquire();
    co_await coselect::yield_now();
    s.release(4);  // two for the waiters left, two for the count
    for (auto& h : hs)
      co_await h.join();
  };
  sched.run(main());
  EXPECT_FALSE(barged);
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_EQ(s.available(), 2);
}

// A plain thread's release resumes a coroutine on its scheduler's thread, never inline.
TEST(Semaphore, ReleaseFromAPlainThreadResumesOnTheLoop) {
  Scheduler sched;
  Semaphore s(0);
  long resumed_on = 0;
  std::thread releaser;
  auto main = [&]() -> Task<void> {
    releaser = std::thread([&] { s.release(); });
    co_await s.acquire();
    resumed_on = coselect_test::primitive_test_tid();
  };
  sched.run(main());
  releaser.join();
  EXPECT_EQ(resumed_on, coselect_test::primitive_test_tid());
}

// Units are conserved under contention: coroutines on two schedulers acquire and release
// while plain threads do the same with try_acquire; at most `limit` hold a unit at once, and
// all units are back at the end.
TEST(Semaphore, BoundsConcurrencyAcrossThreads) {
  const int rounds = coselect_test::kSanitized ? 200 : 2000;
  constexpr int kLimit = 3;
  Semaphore s(kLimit);
  std::atomic<int> holding{0};
  std::atomic<int> most{0};
  auto enter = [&] {
    const int now = ++holding;
    int seen = most.load();
    while (now > seen && !most.compare_exchange_weak(seen, now)) {
    }
  };
  auto worker = [&]() -> Task<void> {
    for (int i = 0; i < rounds; ++i) {
      co_await s.acquire();
      enter();
      if (i % 4 == 0) {
        co_await coselect::yield_now();
      }
      --holding;
      s.release();
    }
  };
  auto loop = [&] {
    Scheduler sched;
    EXPECT_EQ(coselect_test::run_all_within(sched, 60s, worker(), worker(), worker()), 0u);
  };
  std::thread a(loop);
  std::thread b(loop);
  std::thread plain([&] {
    for (int i = 0; i < rounds;) {
      if (!s.try_acquire()) {
        std::this_thread::yield();
        continue;
      }
      enter();
      --holding;
      s.release();
      ++i;
    }
  });
  a.join();
  b.join();
  plain.join();
  EXPECT_LE(most.load(), kLimit);
  EXPECT_EQ(s.available(), kLimit);
}

}  // namespace
