// Tests of coselect::Mutex (DESIGN.md §9): the fast path, try_lock/unlock from plain threads,
// misuse, the guard, FIFO hand-over, mutual exclusion across schedulers, and cancellation
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
#include "support/sanitizers.hpp"

namespace {

using namespace std::chrono_literals;
using coselect::Mutex;
using coselect::MutexGuard;
using coselect::Scheduler;
using coselect::Task;
using coselect_test::Blocked;
using coselect_test::BlockedCase;
using coselect_test::PrimitiveWait;

// ---- cancellation rules, shared with the other primitives -----------------------------------

// A mutex held by the test: lock() waits; serve() unlocks (handing over to the waiter, if any).
class LockedMutex : public Blocked {
 public:
  LockedMutex() {
    m_.emplace();
    EXPECT_TRUE(m_->try_lock());
  }
  Task<void> wait() override { [[maybe_unused]] MutexGuard g = co_await m_->lock(); }
  void serve() override { m_->unlock(); }
  void check(bool) override {
    // Served or not, the lock came back: neither kept by a cancelled waiter nor lost.
    EXPECT_TRUE(m_->try_lock()) << "the lock was lost";
    m_->unlock();
  }
  void destroy() override { m_.reset(); }

 private:
  std::optional<Mutex> m_;
};

INSTANTIATE_TEST_SUITE_P(Mutex, PrimitiveWait,
                         testing::Values(BlockedCase{
                             "Lock", [] { return std::make_unique<LockedMutex>(); }}),
                         coselect_test::blocked_case_name);

// ---- the fast path, plain threads, misuse ------------------------------------------------------

TEST(Mutex, FreeMutexIsTakenWithoutSuspendingEvenWhenStopped) {
  Scheduler s;
  Mutex m;
  std::stop_source stop;
  stop.request_stop();
  bool held = false;
  bool other_ran_first = true;
  bool other_ran = false;
  auto body = [&]() -> Task<void> {
    MutexGuard g = co_await m.lock();
    held = g.owns_lock() && !m.try_lock();
    other_ran_first = other_ran;
  };
  auto main = [&]() -> Task<void> {
    auto h = s.spawn(coselect::with_stop_token(stop.get_token(), body()));
    s.spawn([](bool& ran) -> Task<void> {
      ran = true;
      co_return;
    }(other_ran));
    co_await h.join();
  };
  s.run(main());
  EXPECT_TRUE(held);
  EXPECT_FALSE(other_ran_first) << "lock() of a free mutex suspended";
  EXPECT_TRUE(m.try_lock()) << "the guard did not unlock";
}

TEST(Mutex, TryLockAndUnlockFromPlainThreads) {
  Mutex m;
  EXPECT_TRUE(m.try_lock());
  EXPECT_FALSE(m.try_lock()) << "not recursive";
  bool other_thread_got_it = true;
  std::thread([&] { other_thread_got_it = m.try_lock(); }).join();
  EXPECT_FALSE(other_thread_got_it);
  std::thread([&] { m.unlock(); }).join();  // not bound to the thread that locked it
  EXPECT_TRUE(m.try_lock());
  m.unlock();
}

TEST(Mutex, UnlockOfAnUnlockedMutexThrowsLogicError) {
  Mutex m;
  EXPECT_THROW(m.unlock(), std::logic_error);
  ASSERT_TRUE(m.try_lock());
  m.unlock();
  EXPECT_THROW(m.unlock(), std::logic_error);
  EXPECT_TRUE(m.try_lock()) << "a failed unlock changed the state";
  m.unlock();
}

TEST(Mutex, LockWhereNoSchedulerRunsThrowsLogicError) {
  Mutex m;
  auto awaiter = m.lock();
  EXPECT_THROW((void)awaiter.await_ready(), std::logic_error);
  EXPECT_TRUE(m.try_lock()) << "the failed await took the lock";
}

// ---- the guard -----------------------------------------------------------------------------

TEST(Mutex, GuardUnlocksExactlyOnce) {
  Scheduler s;
  Mutex m;
  std::vector<bool> free_after;  // m.try_lock() at each step (then unlocked again)
  auto probe = [&] {
    const bool got = m.try_lock();
    free_after.push_back(got);
    if (got) m.unlock();
  };
  auto main = [&]() -> Task<void> {
    MutexGuard a = co_await m.lock();
    probe();                      // held: false
    MutexGuard b = std::move(a);  // moves ownership
    a.unlock();                   // moved-from: nothing
    probe();                      // still held: false
    b.unlock();                   // unlocks
    probe();                      // free: true
    b.unlock();                   // again: nothing (no logic_error)
    MutexGuard c = co_await m.lock();
    MutexGuard d;
    d = std::move(c);  // assignment moves too
    probe();           // held: false
    d = MutexGuard();  // assigning over an owning guard unlocks
    probe();           // free: true
  };
  s.run(main());
  EXPECT_EQ(free_after, (std::vector<bool>{false, false, true, false, true}));
  EXPECT_TRUE(m.try_lock()) << "a destroyed guard unlocked twice or not at all";
  EXPECT_THROW(
      {
        m.unlock();
        m.unlock();
      },
      std::logic_error);
}

// ---- FIFO hand-over ---------------------------------------------------------------------------

// Waiters get the lock in the order they began waiting; unlock() hands it over, so a try_lock
// in between cannot barge in; and nobody resumes inside unlock().
TEST(Mutex, WaitersGetTheLockInFifoOrderByHandOver) {
  Scheduler s;
  Mutex m;
  std::vector<int> order;
  bool barged = false;
  bool resumed_inside_unlock = false;
  bool unlocking = false;
  auto waiter = [&](int id) -> Task<void> {
    MutexGuard g = co_await m.lock();
    resumed_inside_unlock = resumed_inside_unlock || unlocking;
    order.push_back(id);
    co_await coselect::yield_now();  // hold it across a turn
  };
  auto main = [&]() -> Task<void> {
    MutexGuard g = co_await m.lock();
    std::vector<coselect::JoinHandle> hs;
    for (int i = 0; i < 5; ++i)
      hs.push_back(s.spawn(waiter(i)));
    co_await coselect::yield_now();
    unlocking = true;
    g.unlock();
    unlocking = false;
    barged = m.try_lock();
    for (auto& h : hs)
      co_await h.join();
  };
  s.run(main());
  EXPECT_FALSE(barged) << "try_lock took a lock that was handed over";
  EXPECT_FALSE(resumed_inside_unlock);
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_TRUE(m.try_lock());
}

// A cancelled waiter in the middle of the queue is skipped; the others keep their order.
TEST(Mutex, CancelledWaiterLeavesTheQueueInOrder) {
  Scheduler s;
  Mutex m;
  std::vector<int> order;
  int canceled = 0;
  auto waiter = [&](int id) -> Task<void> {
    try {
      MutexGuard g = co_await m.lock();
      order.push_back(id);
    } catch (const std::system_error&) {
      ++canceled;
    }
  };
  auto main = [&]() -> Task<void> {
    MutexGuard g = co_await m.lock();
    std::vector<coselect::JoinHandle> hs;
    for (int i = 0; i < 4; ++i)
      hs.push_back(s.spawn(waiter(i)));
    co_await coselect::yield_now();
    hs[1].cancel();
    hs[2].cancel();
    g.unlock();
    for (auto& h : hs)
      co_await h.join();
  };
  s.run(main());
  EXPECT_EQ(order, (std::vector<int>{0, 3}));
  EXPECT_EQ(canceled, 2);
  EXPECT_TRUE(m.try_lock());
}

// ---- mutual exclusion across threads --------------------------------------------------------

// Coroutines on two schedulers (threads) and a plain thread spinning on try_lock increment a
// plain int under the lock, yielding while they hold it: no increment is lost (and TSan sees
// every access ordered by the lock).
TEST(Mutex, ExcludesAcrossSchedulersAndThreads) {
  const int per_coroutine = coselect_test::kSanitized ? 200 : 2000;
  constexpr int kCoroutinesPerLoop = 3;
  Mutex m;
  int counter = 0;
  int inside = 0;
  std::atomic<bool> overlap{false};
  auto worker = [&]() -> Task<void> {
    for (int i = 0; i < per_coroutine; ++i) {
      MutexGuard g = co_await m.lock();
      if (++inside != 1) overlap = true;
      const int seen = counter;
      if (i % 8 == 0) {
        co_await coselect::yield_now();
      }
      counter = seen + 1;
      --inside;
    }
  };
  auto loop = [&] {
    Scheduler s;
    std::vector<Task<void>> tasks;
    for (int i = 0; i < kCoroutinesPerLoop; ++i)
      tasks.push_back(worker());
    EXPECT_EQ(coselect_test::run_all_within(s, 60s, std::move(tasks)), 0u);
  };
  std::thread a(loop);
  std::thread b(loop);
  std::thread plain([&] {
    for (int i = 0; i < per_coroutine;) {
      if (!m.try_lock()) {
        std::this_thread::yield();
        continue;
      }
      if (++inside != 1) overlap = true;
      ++counter;
      --inside;
      m.unlock();
      ++i;
    }
  });
  a.join();
  b.join();
  plain.join();
  EXPECT_FALSE(overlap);
  EXPECT_EQ(counter, per_coroutine * (2 * kCoroutinesPerLoop + 1));
  EXPECT_TRUE(m.try_lock());
}

// A waiter on another scheduler is handed the lock by an unlock on this one and resumes on its
// own thread.
TEST(Mutex, HandOverToAnotherSchedulerResumesThere) {
  Mutex m;
  ASSERT_TRUE(m.try_lock());
  std::atomic<long> waiter_tid{0};
  long resumed_tid = 0;
  std::thread t([&] {
    Scheduler s;
    auto main = [&]() -> Task<void> {
      waiter_tid = coselect_test::primitive_test_tid();
      MutexGuard g = co_await m.lock();
      resumed_tid = coselect_test::primitive_test_tid();
    };
    s.run(main());
  });
  while (waiter_tid == 0)
    std::this_thread::yield();
  m.unlock();  // before or after the waiter queued: either way it ends up with the lock
  t.join();
  EXPECT_EQ(resumed_tid, waiter_tid);
  EXPECT_TRUE(m.try_lock());
}

}  // namespace
