// Test support: the cancellation rules every awaitable of the coordination primitives obeys
// (DESIGN.md §8, §9), written once and instantiated by each primitive's test file.
//
// A Blocked is a primitive in a state where its awaitable under test waits: wait() awaits it
// once, serve() (from any thread) lets one pending wait complete, and check(served) proves that
// nothing was lost or doubled, given whether the waiter got what serve() handed out.
//
// Tests: a stop before the await throws at once without suspending; a stop from the loop or
// from another thread ends a pending wait with operation_canceled on the loop's thread and
// leaves the primitive as it was; a stop racing serve() from two other threads resumes the
// waiter exactly once, and whatever serve() handed out went to the waiter or stayed behind;
// destroying the primitive resumes its waiters with operation_canceled. Coroutines only
// record; assertions follow run().
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <ostream>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include <gtest/gtest.h>
#include <coselect.hpp>
#include "sanitizers.hpp"
#include "thread_probe.hpp"

namespace coselect_test {

class Blocked {
 public:
  virtual ~Blocked() = default;
  // Awaits the awaitable once (it suspends until serve()); what it got, it gives back.
  virtual coselect::Task<void> wait() = 0;
  // Any thread: lets one pending wait complete (or leaves what it hands out behind).
  virtual void serve() = 0;
  // After the round: EXPECTs that what serve() handed out went to the waiter iff `served`.
  virtual void check(bool served) = 0;
  // Destroys the primitive (its waiters resume with operation_canceled).
  virtual void destroy() = 0;
};

// A name and a factory, the parameter of the PrimitiveWait suite.
struct BlockedCase {
  std::string name;
  std::function<std::unique_ptr<Blocked>()> make;
};

inline void PrintTo(const BlockedCase& c, std::ostream* os) {
  *os << c.name;
}

inline std::string blocked_case_name(const testing::TestParamInfo<BlockedCase>& info) {
  return info.param.name;
}

inline long primitive_test_tid() {
  return static_cast<long>(current_tid());
}

// How one wait ended.
struct WaitOutcome {
  std::atomic<int> normal{0};
  std::atomic<int> canceled{0};
  std::atomic<int> other{0};
  std::atomic<long> tid{0};
  int resumed() const { return normal + canceled + other; }
};

inline coselect::Task<void> wait_and_record(Blocked& b, WaitOutcome& o) {
  try {
    co_await b.wait();
    ++o.normal;
  } catch (const std::system_error& e) {
    ++(e.code() == std::errc::operation_canceled ? o.canceled : o.other);
  }
  o.tid = primitive_test_tid();
}

class PrimitiveWait : public testing::TestWithParam<BlockedCase> {};

// A stop requested before the await: it throws at once, without suspending (a task spawned
// after it, ready in the same turn, has not run yet), and takes nothing.
TEST_P(PrimitiveWait, StopBeforeTheAwaitThrowsAtOnce) {
  auto b = GetParam().make();
  coselect::Scheduler s;
  WaitOutcome o;
  bool other_ran = false;
  bool other_ran_first = true;
  std::stop_source stop;
  stop.request_stop();
  auto body = [&]() -> coselect::Task<void> {
    co_await wait_and_record(*b, o);
    other_ran_first = other_ran;
  };
  auto main = [&]() -> coselect::Task<void> {
    coselect::JoinHandle h = s.spawn(coselect::with_stop_token(stop.get_token(), body()));
    s.spawn([](bool& ran) -> coselect::Task<void> {
      ran = true;
      co_return;
    }(other_ran));
    co_await h.join();
  };
  s.run(main());
  EXPECT_EQ(o.canceled, 1);
  EXPECT_EQ(o.resumed(), 1);
  EXPECT_FALSE(other_ran_first) << "the await suspended before throwing";
  b->serve();
  b->check(false);
}

// A stop from the loop thread while the wait pends: it resumes once, cancelled, on the loop;
// what serve() hands out afterwards stays in the primitive.
TEST_P(PrimitiveWait, StopFromTheLoopWhilePending) {
  auto b = GetParam().make();
  coselect::Scheduler s;
  WaitOutcome o;
  auto main = [&]() -> coselect::Task<void> {
    coselect::JoinHandle h = s.spawn(wait_and_record(*b, o));
    co_await coselect::yield_now();  // h waits now
    h.cancel();
    co_await h.join();
  };
  s.run(main());
  EXPECT_EQ(o.canceled, 1);
  EXPECT_EQ(o.resumed(), 1);
  EXPECT_EQ(o.tid, primitive_test_tid());
  b->serve();
  s.run_for(std::chrono::milliseconds(1));
  EXPECT_EQ(o.resumed(), 1);
  b->check(false);
}

// A stop from another thread: the loop wakes and the waiter resumes cancelled on its thread.
TEST_P(PrimitiveWait, StopFromAnotherThreadWakesTheLoop) {
  auto b = GetParam().make();
  coselect::Scheduler s;
  WaitOutcome o;
  std::thread canceller;
  auto main = [&]() -> coselect::Task<void> {
    coselect::JoinHandle h = s.spawn(wait_and_record(*b, o));
    co_await coselect::yield_now();
    canceller = std::thread([h]() mutable { h.cancel(); });
    co_await h.join();
  };
  s.run(main());
  canceller.join();
  EXPECT_EQ(o.canceled, 1);
  EXPECT_EQ(o.resumed(), 1);
  EXPECT_EQ(o.tid, primitive_test_tid());
  b->serve();
  b->check(false);
}

// serve() from another thread ends the wait normally, on the loop's thread.
TEST_P(PrimitiveWait, ServedFromAnotherThreadResumesOnTheLoop) {
  auto b = GetParam().make();
  coselect::Scheduler s;
  WaitOutcome o;
  std::thread server;
  auto main = [&]() -> coselect::Task<void> {
    coselect::JoinHandle h = s.spawn(wait_and_record(*b, o));
    co_await coselect::yield_now();
    server = std::thread([&b] { b->serve(); });
    co_await h.join();
  };
  s.run(main());
  server.join();
  EXPECT_EQ(o.normal, 1);
  EXPECT_EQ(o.resumed(), 1);
  EXPECT_EQ(o.tid, primitive_test_tid());
  b->check(true);
}

// A stop racing serve(), each from a thread of its own: every round resumes the waiter exactly
// once, and what serve() handed out is neither lost nor doubled.
TEST_P(PrimitiveWait, StopRacingServeResolvesEachRoundOnce) {
  const int rounds = kSanitized ? 60 : 400;
  coselect::Scheduler s;
  int normal = 0;
  int canceled = 0;
  for (int i = 0; i < rounds; ++i) {
    auto b = GetParam().make();
    WaitOutcome o;
    std::thread canceller;
    std::thread server;
    auto main = [&]() -> coselect::Task<void> {
      coselect::JoinHandle h = s.spawn(wait_and_record(*b, o));
      co_await coselect::yield_now();
      canceller = std::thread([h]() mutable { h.cancel(); });
      server = std::thread([&b] { b->serve(); });
      co_await h.join();
    };
    s.run(main());
    canceller.join();
    server.join();
    ASSERT_EQ(o.resumed(), 1) << "round " << i;
    ASSERT_EQ(o.other, 0) << "round " << i;
    ASSERT_EQ(o.tid, primitive_test_tid());
    b->check(o.normal == 1);
    if (HasFailure()) return;
    normal += o.normal;
    canceled += o.canceled;
  }
  EXPECT_EQ(normal + canceled, rounds);
  RecordProperty("normal", normal);
  RecordProperty("canceled", canceled);
}

// with_timeout around the awaitable: the deadline cancels the wait (nullopt / false) and
// leaves nothing behind.
TEST_P(PrimitiveWait, WithTimeoutGivesUpAndLeavesNothingBehind) {
  auto b = GetParam().make();
  coselect::TimeMachine tm;
  coselect::Scheduler s(tm);
  bool completed = true;
  auto main = [&]() -> coselect::Task<void> {
    completed = co_await coselect::with_timeout(std::chrono::seconds(5), b->wait());
  };
  s.run(main());
  EXPECT_FALSE(completed);
  b->serve();
  b->check(false);
}

// A scheduler destroyed while one of its coroutines waits destroys the frame, which leaves the
// queue: serving afterwards touches nothing that is gone (ASan) and hands out nothing to it.
TEST_P(PrimitiveWait, SchedulerDestroyedWhileWaitingTakesTheWaiterOut) {
  auto b = GetParam().make();
  WaitOutcome o;
  {
    coselect::Scheduler s;
    s.spawn(wait_and_record(*b, o));
    s.run_for(std::chrono::seconds(0));
  }
  EXPECT_EQ(o.resumed(), 0);
  b->serve();
  b->check(false);
}

// Destroying the primitive while a coroutine of this thread's scheduler waits on it resumes the
// coroutine with operation_canceled.
TEST_P(PrimitiveWait, DestroyingThePrimitiveResumesItsWaitersCancelled) {
  auto b = GetParam().make();
  coselect::Scheduler s;
  WaitOutcome first;
  WaitOutcome second;
  auto main = [&]() -> coselect::Task<void> {
    coselect::JoinHandle h1 = s.spawn(wait_and_record(*b, first));
    coselect::JoinHandle h2 = s.spawn(wait_and_record(*b, second));
    co_await coselect::yield_now();
    b->destroy();
    co_await h1.join();
    co_await h2.join();
  };
  s.run(main());
  EXPECT_EQ(first.canceled, 1);
  EXPECT_EQ(second.canceled, 1);
  EXPECT_EQ(first.resumed() + second.resumed(), 2);
}

}  // namespace coselect_test
