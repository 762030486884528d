// Tests of cancellation (DESIGN.md §8): stop tokens, every built-in cancellation point,
// JoinHandle, get_stop_token, with_stop_token, with_timeout, run_in_thread's token.
//
// Sections
//   0. Helpers: the cancellation points as one enum, a fixture each can wait on
//   1. Every cancellation point: stopped before the await, during it (from the loop and from
//      another thread), racing its normal completion (bounded stress, TSan-clean)
//   2. Awaits that complete without suspending are untouched by a stop
//   3. Stop tokens flow: awaited tasks, when_all children, spawned tasks, run()'s task
//   4. JoinHandle
//   5. with_stop_token
//   6. with_timeout (real and virtual time, nested, caller's stop wins)
//   7. run_in_thread gets the token
//
// Coroutines only record; assertions follow run().

#include <atomic>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <coselect.hpp>
#include "support/fd_probe.hpp"
#include "support/fixtures.hpp"
#include "support/sanitizers.hpp"
#include "support/thread_probe.hpp"

namespace {

// =================================================================================================
// 0. Helpers
// =================================================================================================

using namespace std::chrono_literals;
using coselect::JoinHandle;
using coselect::Scheduler;
using coselect::Task;
using coselect::WaitableEvent;
using coselect_test::Pipe;

long thread_id() {
  return static_cast<long>(coselect_test::current_tid());
}

bool is_canceled(const std::system_error& e) {
  return e.code() == std::errc::operation_canceled;
}

// A pipe whose write end is full: writable() on it waits until the test drains it.
struct FullPipe : Pipe {
  FullPipe() {
    const std::string chunk(4096, 'x');
    while (coselect_test::write_some(write_end, chunk.data(), chunk.size()) > 0) {
    }
  }
  // A pipe has room once its reader took everything; a socket pair (Windows) may still hold
  // bytes in flight from the writer's buffer, so read until the writer has room.
  void drain() const {
    char buffer[4096];
    do {
      while (coselect_test::read_some(read_end, buffer, sizeof buffer) > 0) {
      }
    } while (!coselect_test::writable_now(write_end));
  }
};

// Every built-in cancellation point but TaskGroup::join (test_task_group.cpp).
enum class Point {
  event_wait,
  event_wait_timeout,
  sleep_for,
  sleep_until,
  yield_now,
  readable,
  readable_timeout,
  writable,
  writable_timeout,
  join,
};

std::string point_name(const testing::TestParamInfo<Point>& info) {
  static const char* names[] = {
      "EventWait", "EventWaitTimeout", "SleepFor", "SleepUntil",      "YieldNow",
      "Readable",  "ReadableTimeout",  "Writable", "WritableTimeout", "JoinHandleJoin"};
  return names[static_cast<int>(info.param)];
}

// What the points wait on. `target` is a task (for join) that ends when `ev` is set.
struct Things {
  WaitableEvent ev;
  Pipe silent;
  FullPipe full;
  JoinHandle target;
};

Task<void> wait_for_event(WaitableEvent& ev) {
  co_await ev.wait();
}

// Awaits the point once; `d` is the timeout or sleep where there is one.
Task<void> await_point(Point p, Things& t, Scheduler::duration d) {
  switch (p) {
    case Point::event_wait:
      co_await t.ev.wait();
      break;
    case Point::event_wait_timeout: {
      const bool set = co_await t.ev.wait(d);
      (void)set;
      break;
    }
    case Point::sleep_for:
      co_await coselect::sleep_for(d);
      break;
    case Point::sleep_until:
      co_await coselect::sleep_until(Scheduler::current()->now() + d);
      break;
    case Point::yield_now:
      co_await coselect::yield_now();
      break;
    case Point::readable:
      co_await coselect::readable(t.silent.read_end);
      break;
    case Point::readable_timeout: {
      const bool ready = co_await coselect::readable(t.silent.read_end, d);
      (void)ready;
      break;
    }
    case Point::writable:
      co_await coselect::writable(t.full.write_end);
      break;
    case Point::writable_timeout: {
      const bool ready = co_await coselect::writable(t.full.write_end, d);
      (void)ready;
      break;
    }
    case Point::join:
      co_await t.target.join();
      break;
  }
}

// Makes a pending await of `p` end normally (from any thread). Sleeps and yields end by
// themselves.
void complete(Point p, Things& t) {
  switch (p) {
    case Point::event_wait:
    case Point::event_wait_timeout:
    case Point::join:
      t.ev.set();
      break;
    case Point::readable:
    case Point::readable_timeout:
      t.silent.put();
      break;
    case Point::writable:
    case Point::writable_timeout:
      t.full.drain();
      break;
    default:
      break;
  }
}

// How one await ended.
struct Outcome {
  std::atomic<int> normal{0};
  std::atomic<int> canceled{0};
  std::atomic<int> other{0};
  std::atomic<long> tid{0};
  int resumed() const { return normal + canceled + other; }
};

Task<void> await_and_record(Point p, Things& t, Scheduler::duration d, Outcome& o) {
  try {
    co_await await_point(p, t, d);
    ++o.normal;
  } catch (const std::system_error& e) {
    ++(is_canceled(e) ? o.canceled : o.other);
  }
  o.tid = thread_id();
}

// Everything a point waits on, pending for an hour; the join target waits for `ev`.
struct PointCase {
  Scheduler& s;
  Things t;
  explicit PointCase(Scheduler& loop) : s(loop) { t.target = s.spawn(wait_for_event(t.ev)); }
};

class CancelPoint : public testing::TestWithParam<Point> {};

INSTANTIATE_TEST_SUITE_P(All, CancelPoint,
                         testing::Values(Point::event_wait, Point::event_wait_timeout,
                                         Point::sleep_for, Point::sleep_until, Point::yield_now,
                                         Point::readable, Point::readable_timeout, Point::writable,
                                         Point::writable_timeout, Point::join),
                         point_name);

// The points that stay pending until something happens (a yield resumes in the next turn).
class CancelPendingPoint : public CancelPoint {};

INSTANTIATE_TEST_SUITE_P(All, CancelPendingPoint,
                         testing::Values(Point::event_wait, Point::event_wait_timeout,
                                         Point::sleep_for, Point::sleep_until, Point::readable,
                                         Point::readable_timeout, Point::writable,
                                         Point::writable_timeout, Point::join),
                         point_name);

// =================================================================================================
// 1. Every cancellation point
// =================================================================================================

// Stopped before the await begins: it throws at once, without suspending (a task spawned after
// it, ready in the same turn, has not run yet).
TEST_P(CancelPoint, StopBeforeTheAwaitThrowsAtOnceWithoutSuspending) {
  Scheduler s;
  PointCase c(s);
  Outcome o;
  bool other_ran = false;
  bool other_ran_first = false;
  auto body = [&]() -> Task<void> {
    co_await await_and_record(GetParam(), c.t, 1h, o);
    other_ran_first = other_ran;
  };
  std::stop_source stop;
  stop.request_stop();
  auto main = [&]() -> Task<void> {
    JoinHandle h = s.spawn(coselect::with_stop_token(stop.get_token(), body()));
    s.spawn([](bool& ran) -> Task<void> {
      ran = true;
      co_return;
    }(other_ran));
    co_await h.join();
    c.t.ev.set();  // lets the join target end
  };
  s.run(main());
  EXPECT_EQ(o.canceled, 1);
  EXPECT_EQ(o.resumed(), 1);
  EXPECT_FALSE(other_ran_first) << "the await suspended before throwing";
}

// A spawned task cancelled before it first runs still starts; its first await throws.
TEST_P(CancelPoint, SpawnedTaskCancelledBeforeItStartsStillStarts) {
  Scheduler s;
  PointCase c(s);
  Outcome o;
  bool started = false;
  auto body = [&]() -> Task<void> {
    started = true;
    co_await await_and_record(GetParam(), c.t, 1h, o);
  };
  auto main = [&]() -> Task<void> {
    JoinHandle h = s.spawn(body());
    h.cancel();
    co_await h.join();
    c.t.ev.set();
  };
  s.run(main());
  EXPECT_TRUE(started);
  EXPECT_EQ(o.canceled, 1);
  EXPECT_EQ(o.resumed(), 1);
}

// Stopped from the loop thread while pending: it resumes once, cancelled, and nothing is left
// linked: afterwards the event is set, the fds become ready and the deadline passes (a waiter
// left behind in a frame that is gone would be a use-after-free under ASan).
TEST_P(CancelPoint, StopFromTheLoopWhilePending) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  PointCase c(s);
  Outcome o;
  const auto t0 = s.now();
  auto main = [&]() -> Task<void> {
    JoinHandle h = s.spawn(await_and_record(GetParam(), c.t, 1h, o));
    co_await coselect::yield_now();  // h has started and waits (a yield is queued behind us)
    h.cancel();
    co_await h.join();
  };
  s.run(main());
  EXPECT_EQ(o.canceled, 1);
  EXPECT_EQ(o.resumed(), 1);
  EXPECT_EQ(o.tid, thread_id());
  EXPECT_LT(s.now() - t0, 1h) << "nothing waited for its deadline";
  for (Point p : {Point::event_wait, Point::readable, Point::writable})
    complete(p, c.t);
  s.run_for(2h);
  EXPECT_EQ(o.resumed(), 1);
}

// Stopped from another thread while pending: the loop wakes and the waiter resumes cancelled
// on the loop's thread.
TEST_P(CancelPendingPoint, StopFromAnotherThreadWakesTheLoop) {
  Scheduler s;
  PointCase c(s);
  Outcome o;
  std::thread canceller;
  auto main = [&]() -> Task<void> {
    JoinHandle h = s.spawn(await_and_record(GetParam(), c.t, 1h, o));
    co_await coselect::yield_now();
    co_await coselect::yield_now();  // h waits now
    canceller = std::thread([h]() mutable { h.cancel(); });
    co_await h.join();
  };
  s.run(main());
  canceller.join();
  EXPECT_EQ(o.canceled, 1);
  EXPECT_EQ(o.resumed(), 1);
  EXPECT_EQ(o.tid, thread_id());
  for (Point p : {Point::event_wait, Point::readable, Point::writable})
    complete(p, c.t);
  s.run_for(10ms);
  EXPECT_EQ(o.resumed(), 1);
}

// A stop racing the normal completion (a set(), readiness, a deadline, a yield's turn) from
// two other threads: every round resumes the waiter exactly once, with one outcome.
TEST_P(CancelPoint, StopRacingNormalCompletionResumesOnce) {
  const int rounds = coselect_test::kSanitized ? 60 : 300;
  Scheduler s;
  int normal = 0;
  int canceled = 0;
  for (int i = 0; i < rounds; ++i) {
    PointCase c(s);
    Outcome o;
    std::thread canceller;
    std::thread completer;
    auto main = [&]() -> Task<void> {
      // Sleeps get a deadline that passes while the threads start.
      JoinHandle h = s.spawn(await_and_record(GetParam(), c.t, 50us, o));
      co_await coselect::yield_now();
      canceller = std::thread([h]() mutable { h.cancel(); });
      completer = std::thread([&c, p = GetParam()] { complete(p, c.t); });
      co_await h.join();
      c.t.ev.set();
      co_await c.t.target.join();
    };
    s.run(main());
    canceller.join();
    completer.join();
    ASSERT_EQ(o.resumed(), 1) << "round " << i;
    ASSERT_EQ(o.other, 0) << "round " << i;
    ASSERT_EQ(o.tid, thread_id());
    normal += o.normal;
    canceled += o.canceled;
  }
  EXPECT_EQ(normal + canceled, rounds);
  RecordProperty("normal", normal);
  RecordProperty("canceled", canceled);
}

// =================================================================================================
// 2. Awaits that complete without suspending are untouched by a stop
// =================================================================================================

TEST(CancelNoSuspend, SetEventFinishedTaskAndTokenQueriesDoNotThrow) {
  Scheduler s;
  std::stop_source stop;
  stop.request_stop();
  WaitableEvent ev;
  ev.set();
  bool finished = false;
  auto body = [&](JoinHandle done) -> Task<void> {
    co_await ev.wait();
    const bool set = co_await ev.wait(1h);
    co_await done.join();
    co_await JoinHandle().join();
    std::stop_token token = co_await coselect::get_stop_token();
    finished = set && token.stop_requested();
  };
  auto main = [&]() -> Task<void> {
    JoinHandle done = s.spawn([]() -> Task<void> { co_return; }());
    co_await done.join();
    co_await coselect::with_stop_token(stop.get_token(), body(done));
  };
  s.run(main());
  EXPECT_TRUE(finished);
}

TEST(CancelNoSuspend, WorkAlreadyDoneIsNotUndone) {
  Scheduler s;
  int steps = 0;
  auto body = [&]() -> Task<void> {
    ++steps;
    co_await coselect::yield_now();
    ++steps;  // resumed before the stop: done
    co_await coselect::yield_now();
    ++steps;  // never
  };
  auto main = [&]() -> Task<void> {
    JoinHandle h = s.spawn(body());
    co_await coselect::yield_now();
    co_await coselect::yield_now();
    h.cancel();
    co_await h.join();
  };
  s.run(main());
  EXPECT_EQ(steps, 2);
}

// A stop on the loop thread takes effect at once: a coroutine already queued to resume from
// yield_now in this turn resumes cancelled.
TEST(CancelNoSuspend, QueuedYieldResumesCancelledInTheSameTurn) {
  Scheduler s;
  JoinHandle h;
  bool canceled = false;
  auto yielder = [&]() -> Task<void> {
    try {
      co_await coselect::yield_now();
    } catch (const std::system_error& e) {
      canceled = is_canceled(e);
    }
  };
  auto main = [&]() -> Task<void> {
    h = s.spawn(yielder());
    co_await coselect::yield_now();  // the yielder runs and queues its resumption behind us
    h.cancel();
    co_await h.join();
  };
  s.run(main());
  EXPECT_TRUE(canceled);
}

// =================================================================================================
// 3. Stop tokens flow with the work
// =================================================================================================

TEST(StopToken, RunTaskHasATokenNothingStops) {
  Scheduler s;
  auto main = []() -> Task<bool> {
    std::stop_token t = co_await coselect::get_stop_token();
    co_return t.stop_possible();
  };
  EXPECT_FALSE(s.run(main()));
}

TEST(StopToken, AwaitedTasksAndWhenAllChildrenInheritIt) {
  Scheduler s;
  std::stop_source stop;
  auto token_of = []() -> Task<std::stop_token> { co_return co_await coselect::get_stop_token(); };
  auto nested = [&]() -> Task<std::stop_token> { co_return co_await token_of(); };
  std::vector<std::stop_token> seen;
  auto body = [&]() -> Task<void> {
    seen.push_back(co_await token_of());
    seen.push_back(co_await nested());
    auto [a, b] = co_await coselect::when_all(token_of(), nested());
    seen.push_back(a);
    seen.push_back(b);
    std::vector<Task<std::stop_token>> tasks;
    tasks.push_back(token_of());
    std::vector<std::stop_token> tokens = co_await coselect::when_all(std::move(tasks));
    for (auto& t : tokens)
      seen.push_back(t);
  };
  s.run(coselect::with_stop_token(stop.get_token(), body()));
  ASSERT_EQ(seen.size(), 5u);
  stop.request_stop();
  for (const auto& t : seen)
    EXPECT_TRUE(t.stop_requested());
}

TEST(StopToken, SpawnedTaskHasItsOwnTokenNotTheSpawners) {
  Scheduler s;
  std::stop_source stop;
  JoinHandle child_handle;
  std::stop_token child_token;
  auto child = [&]() -> Task<void> { child_token = co_await coselect::get_stop_token(); };
  auto body = [&]() -> Task<void> {
    child_handle = s.spawn(child());
    co_await child_handle.join();
  };
  s.run(coselect::with_stop_token(stop.get_token(), body()));
  stop.request_stop();
  EXPECT_TRUE(child_token.stop_possible());
  EXPECT_FALSE(child_token.stop_requested()) << "the spawner's stop reached a spawned task";
}

TEST(StopToken, SpawnedTaskWhoseHandleWasDroppedHasNoStoppableToken) {
  Scheduler s;
  bool possible = true;
  s.spawn([](bool& p) -> Task<void> {
    p = (co_await coselect::get_stop_token()).stop_possible();
  }(possible));
  s.run_for(0s);
  EXPECT_FALSE(possible);
}

// =================================================================================================
// 4. JoinHandle
// =================================================================================================

TEST(JoinHandle, DefaultConstructedIsEmptyAndDone) {
  JoinHandle h;
  EXPECT_TRUE(h.done());
  h.cancel();
  JoinHandle copy = h;
  EXPECT_TRUE(copy.done());
  Scheduler s;
  auto main = [](JoinHandle h) -> Task<void> { co_await h.join(); };
  s.run(main(h));  // completes at once
}

TEST(JoinHandle, DoneAfterTheTaskEndsAndCopiesAgree) {
  Scheduler s;
  WaitableEvent go;
  int destroyed = 0;
  auto task = [](WaitableEvent& go, int& destroyed) -> Task<void> {
    coselect_test::FrameProbe probe{destroyed};
    co_await go.wait();
  };
  JoinHandle h = s.spawn(task(go, destroyed));
  JoinHandle copy = h;
  s.run_for(0s);
  EXPECT_FALSE(h.done());
  EXPECT_FALSE(copy.done());
  go.set();
  s.run_for(0s);
  EXPECT_TRUE(h.done());
  EXPECT_TRUE(copy.done());
  EXPECT_EQ(destroyed, 1) << "the handle keeps nothing of the frame alive";
}

TEST(JoinHandle, HandleOutlivesItsScheduler) {
  JoinHandle h;
  int destroyed = 0;
  {
    Scheduler s;
    WaitableEvent never;
    h = s.spawn([](WaitableEvent& ev, int& destroyed) -> Task<void> {
      coselect_test::FrameProbe probe{destroyed};
      co_await ev.wait();
    }(never, destroyed));
    s.run_for(0s);
    EXPECT_FALSE(h.done());
  }
  EXPECT_EQ(destroyed, 1);
  EXPECT_TRUE(h.done());
  h.cancel();  // harmless
}

TEST(JoinHandle, CancelIsNotAFailureButOtherExceptionsAre) {
  Scheduler s;
  auto waits = []() -> Task<void> { co_await coselect::sleep_for(1h); };
  JoinHandle h = s.spawn(waits());
  s.run_for(0s);
  h.cancel();
  s.run_for(0s);  // does not rethrow
  EXPECT_TRUE(h.done());

  // operation_canceled that nobody asked for is a failure like any other.
  s.spawn([]() -> Task<void> {
    co_await coselect::yield_now();
    throw std::system_error(std::make_error_code(std::errc::operation_canceled));
  }());
  EXPECT_THROW(s.run_for(0s), std::system_error);

  // And after cancel(), an exception of another kind still is.
  JoinHandle bad = s.spawn([]() -> Task<void> {
    try {
      co_await coselect::sleep_for(1h);
    } catch (...) {
    }
    throw std::runtime_error("cleanup failed");
  }());
  s.run_for(0s);
  bad.cancel();
  EXPECT_THROW(s.run_for(0s), std::runtime_error);
}

TEST(JoinHandle, JoinFromAnotherSchedulerResumesOnTheJoinersThread) {
  Scheduler worker;
  WaitableEvent go;
  JoinHandle h = worker.spawn(wait_for_event(go));
  std::thread t([&] { worker.run(); });
  Scheduler s;
  long resumed_on = 0;
  auto main = [&]() -> Task<void> {
    go.set();
    co_await h.join();
    resumed_on = thread_id();
  };
  s.run(main());
  worker.stop();
  t.join();
  EXPECT_TRUE(h.done());
  EXPECT_EQ(resumed_on, thread_id());
}

TEST(JoinHandle, SpawnedCancelledAndJoinedFromAnotherThreadWhileTheLoopRuns) {
  Scheduler s;
  WaitableEvent spawned;
  JoinHandle h;
  bool canceled = false;
  std::thread spawner;
  auto sleeper = [&]() -> Task<void> {
    try {
      co_await coselect::sleep_for(1h);
    } catch (const std::system_error& e) {
      canceled = is_canceled(e);
    }
  };
  auto main = [&]() -> Task<void> {
    spawner = std::thread([&] {
      h = s.spawn(sleeper());
      h.cancel();
      spawned.set();
    });
    co_await spawned.wait();
    co_await h.join();
  };
  s.run(main());
  spawner.join();
  EXPECT_TRUE(canceled);
  EXPECT_TRUE(h.done());
}

TEST(JoinHandle, CancelFromManyThreadsAtOnce) {
  Scheduler s;
  JoinHandle h = s.spawn([]() -> Task<void> { co_await coselect::sleep_for(1h); }());
  std::vector<std::thread> threads;
  auto main = [&]() -> Task<void> {
    co_await coselect::yield_now();
    for (int i = 0; i < 4; ++i)
      threads.emplace_back([h]() mutable {
        JoinHandle mine = h;
        mine.cancel();
      });
    co_await h.join();
  };
  s.run(main());
  for (auto& t : threads)
    t.join();
  EXPECT_TRUE(h.done());
}

// =================================================================================================
// 5. with_stop_token
// =================================================================================================

TEST(WithStopToken, ReturnsTheResultAndStopsOnEitherToken) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  std::stop_source given;
  std::stop_source caller;
  int value = 0;
  bool by_given = false;
  bool by_caller = false;
  auto main = [&]() -> Task<void> {
    value = co_await coselect::with_stop_token(given.get_token(), []() -> Task<int> {
      co_await coselect::sleep_for(1min);
      co_return 42;
    }());
    s.tasks().call_later(1min, [&] { given.request_stop(); });
    try {
      co_await coselect::with_stop_token(given.get_token(), coselect::sleep_for(1h));
    } catch (const std::system_error& e) {
      by_given = is_canceled(e);
    }
  };
  s.run(main());
  auto outer = [&]() -> Task<void> {
    s.tasks().call_later(1min, [&] { caller.request_stop(); });
    try {
      std::stop_source unrelated;
      co_await coselect::with_stop_token(unrelated.get_token(), coselect::sleep_for(1h));
    } catch (const std::system_error& e) {
      by_caller = is_canceled(e);
    }
  };
  s.run(coselect::with_stop_token(caller.get_token(), outer()));
  EXPECT_EQ(value, 42);
  EXPECT_TRUE(by_given);
  EXPECT_TRUE(by_caller);
}

// The inner await begins at once, in the caller's turn: it queues on the event in program order.
TEST(WithStopToken, InnerAwaitBeginsInTheCallersTurn) {
  Scheduler s;
  WaitableEvent ev;
  std::vector<int> order;
  auto waiter = [&](int id, bool wrapped) -> Task<void> {
    if (wrapped) {
      co_await coselect::with_stop_token(std::stop_token{}, ev.wait());
    } else {
      co_await ev.wait();
    }
    order.push_back(id);
  };
  auto main = [&]() -> Task<void> {
    co_await coselect::when_all(waiter(1, true), waiter(2, false), waiter(3, true),
                                [&]() -> Task<void> {
                                  ev.set();
                                  co_return;
                                }());
  };
  s.run(main());
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
}

// =================================================================================================
// 6. with_timeout
// =================================================================================================

TEST(WithTimeout, ValueBeforeTheDeadlineNulloptAfterIt) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  auto value_after = [](Scheduler::duration d, int v) -> Task<int> {
    co_await coselect::sleep_for(d);
    co_return v;
  };
  auto main = [&]() -> Task<std::tuple<std::optional<int>, std::optional<int>, bool, bool>> {
    auto fast = co_await coselect::with_timeout(2s, value_after(1s, 7));
    auto slow = co_await coselect::with_timeout(1s, value_after(2s, 8));
    WaitableEvent ev;
    bool timed_out = co_await coselect::with_timeout(1s, ev.wait());
    ev.set();
    bool set = co_await coselect::with_timeout(1s, ev.wait());
    co_return std::make_tuple(fast, slow, timed_out, set);
  };
  const auto t0 = s.now();
  auto [fast, slow, timed_out, set] = s.run(main());
  EXPECT_EQ(fast, 7);
  EXPECT_EQ(slow, std::nullopt);
  EXPECT_FALSE(timed_out);
  EXPECT_TRUE(set);
  EXPECT_EQ(s.now() - t0, 3s);
}

// Under a TimeMachine a 10-minute deadline passes in (much) less than a second of real time.
TEST(WithTimeout, TenMinuteDeadlineUnderVirtualTime) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  const auto real0 = std::chrono::steady_clock::now();
  const auto t0 = s.now();
  auto main = []() -> Task<bool> {
    WaitableEvent never;
    co_return co_await coselect::with_timeout(10min, never.wait());
  };
  EXPECT_FALSE(s.run(main()));
  EXPECT_EQ(s.now() - t0, 10min);
  EXPECT_LT(std::chrono::steady_clock::now() - real0, 5s);
}

// A result produced after the deadline (the awaitable ignored the stop) is returned; with_timeout
// returns only once the awaitable has ended.
TEST(WithTimeout, ResultProducedAfterTheDeadlineIsKept) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  auto stubborn = []() -> Task<int> {
    const bool stopped = co_await coselect_test::wind_down_slowly(1h, 0s);
    co_return stopped ? 5 : 0;
  };
  auto main = [&]() -> Task<std::optional<int>> {
    co_return co_await coselect::with_timeout(1s, stubborn());
  };
  EXPECT_EQ(s.run(main()), 5);
}

TEST(WithTimeout, NestedTimeoutsCompose) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  bool outer_expired = false;
  bool inner_propagated = false;
  std::optional<int> inner_result;
  auto main = [&]() -> Task<void> {
    // Outer 1 s around inner 1 h: the outer deadline passes; the inner propagates it.
    auto outer = co_await coselect::with_timeout(1s, [&]() -> Task<int> {
      try {
        co_return (co_await coselect::with_timeout(1h, coselect::sleep_for(2h))) ? 1 : 2;
      } catch (const std::system_error& e) {
        inner_propagated = is_canceled(e);
        throw;
      }
    }());
    outer_expired = !outer.has_value();
    // Outer 1 h around inner 1 s: the inner deadline passes; the outer gets its nullopt.
    inner_result = co_await coselect::with_timeout(1h, [&]() -> Task<int> {
      auto inner = co_await coselect::with_timeout(1s, coselect::sleep_for(2h));
      co_return inner ? 1 : 2;
    }());
  };
  s.run(main());
  EXPECT_TRUE(outer_expired);
  EXPECT_TRUE(inner_propagated);
  EXPECT_EQ(inner_result, 2);
}

// The deadline and the caller's stop both fire: the caller's wins (it propagates).
TEST(WithTimeout, CallersStopWinsOverTheDeadline) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  std::stop_source caller;
  bool propagated = false;
  auto body = [&]() -> Task<void> {
    s.tasks().call_later(1s, [&] { caller.request_stop(); });
    try {
      co_await coselect::with_timeout(1s, coselect::sleep_for(1h));
    } catch (const std::system_error& e) {
      propagated = is_canceled(e);
    }
  };
  s.run(coselect::with_stop_token(caller.get_token(), body()));
  EXPECT_TRUE(propagated);
}

TEST(WithTimeout, OtherExceptionsPropagate) {
  Scheduler s;
  auto fails = []() -> Task<int> {
    co_await coselect::yield_now();
    throw std::runtime_error("boom");
  };
  auto main = [&]() -> Task<std::optional<int>> {
    co_return co_await coselect::with_timeout(1h, fails());
  };
  EXPECT_THROW(s.run(main()), std::runtime_error);
}

TEST(WithTimeout, RealTimeDeadlineOnARealFd) {
  Scheduler s;
  Pipe p;
  auto main = [&]() -> Task<bool> {
    co_return co_await coselect::with_timeout(20ms, coselect::readable(p.read_end));
  };
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(s.run(main()));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 20ms);
  p.put();
  EXPECT_TRUE(s.run(main()));
}

TEST(WithTimeout, NeedsAScheduler) {
  auto t = coselect::with_timeout(1s, coselect::sleep_for(1s));
  auto driver = [](Task<bool> t) -> Task<bool> { co_return co_await t; };
  auto d = driver(std::move(t));
  // Resume by hand, on no scheduler: the logic_error lands in the task.
  d.handle().resume();
  ASSERT_TRUE(d.done());
  EXPECT_THROW(d.handle().promise().take(), std::logic_error);
}

// =================================================================================================
// 7. run_in_thread gets the token
// =================================================================================================

TEST(RunInThreadToken, JobReceivesTheAwaitingTasksTokenAndRunsToItsEnd) {
  Scheduler s;
  std::atomic<bool> job_started{false};
  int job_result = 0;
  auto job = [&](std::stop_token token) {
    job_started = true;
    while (!token.stop_requested())
      std::this_thread::yield();
    return 9;
  };
  auto body = [&]() -> Task<void> { job_result = co_await coselect::run_in_thread(job); };
  auto main = [&]() -> Task<void> {
    JoinHandle h = s.spawn(body());
    while (!job_started) {
      co_await coselect::sleep_for(1ms);
    }
    h.cancel();
    co_await h.join();
  };
  s.run(main());
  EXPECT_EQ(job_result, 9) << "run_in_thread is not a cancellation point";
}

TEST(RunInThreadToken, WithoutAStoppableTokenTheJobGetsAnEmptyOne) {
  Scheduler s;
  auto main = []() -> Task<bool> {
    co_return co_await coselect::run_in_thread(
        [](std::stop_token token) { return token.stop_possible(); });
  };
  EXPECT_FALSE(s.run(main()));
}

}  // namespace
