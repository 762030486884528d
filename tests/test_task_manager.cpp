// Tests of coselect::TaskManager and coselect::TaskHandle (DESIGN.md §2 "TaskManager", "Fine
// print", §5; BACpypes task semantics in BACPYPES.md §1.3-1.4).
//
// Sections
//   0. Helpers
//   1. call_soon / call_later / call_at: thread, ordering, timing
//   2. TaskHandle: empty, copies, suspend / resume / reschedule, scheduled()
//   3. call_every: the BACpypes grid, offsets, overruns, self-suspension
//   4. Cross-thread: stress, wake-up latency, TaskManager::resume
//   5. Failures: a throwing callback drops nothing
//   6. Work posted while nothing runs; a scheduler destroyed with tasks installed
//   7. Known library bugs (own suites, last: see the BUG comments)
//
// Exact timing uses virtual time (TimeMachine): deterministic. Real-clock timing assertions are
// one-sided and generous: never early, late by at most a wide margin. No sleep synchronises
// anything; where a test needs the loop to be asleep in select() it observes that through
// /proc/self/task/<tid>/syscall.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <cstdio>
#include <latch>
#include <memory>
#include <semaphore>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>

#include <coselect.hpp>
#include "support/sanitizers.hpp"
#include "support/sync.hpp"
#include "support/thread_probe.hpp"

namespace {

// =================================================================================================
// 0. Helpers
// =================================================================================================

using coselect::Scheduler;
using coselect::Task;
using coselect::TaskHandle;
using coselect::TimeMachine;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

using coselect_test::kSanitized;

// Scheduler time as a plain count of nanoseconds since the clock's epoch (virtual time starts
// at the system clock's epoch, so these are "seconds since 1970" in the BACpypes examples).
std::int64_t ns(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}
std::int64_t now_ns(const Scheduler& s) {
  return ns(s.now().time_since_epoch());
}
Clock::time_point at(Clock::duration since_epoch) {
  return Clock::time_point(since_epoch);
}

std::vector<std::int64_t> ns_list(std::initializer_list<Clock::duration> ds) {
  std::vector<std::int64_t> out;
  for (auto d : ds)
    out.push_back(ns(d));
  return out;
}

// Runs every callback that is due now under virtual time, then returns (time does not move).
void drain(Scheduler& s) {
  s.run_for(0s);
}

// Installs a real-clock backstop: if a test's own stop condition never comes, the loop stops
// anyway after `limit` and the test fails on its assertions instead of hanging.
TaskHandle backstop(Scheduler& s, bool& fired, Clock::duration limit = 20s) {
  return s.tasks().call_later(limit, [&s, &fired] {
    fired = true;
    s.stop();
  });
}

using coselect_test::is_reactor_wait;
using coselect_test::proc_syscall_readable;
using coselect_test::wait_until_in_reactor;

// =================================================================================================
// 1. call_soon / call_later / call_at
// =================================================================================================

TEST(CallSoon, RunsOnTheLoopThread) {
  Scheduler s;
  std::thread::id ran_on;
  std::thread loop([&] { s.run(); });
  const std::thread::id loop_id = loop.get_id();
  s.tasks().call_soon([&] {
    ran_on = std::this_thread::get_id();
    s.stop();
  });
  loop.join();
  EXPECT_EQ(ran_on, loop_id);
  EXPECT_NE(ran_on, std::this_thread::get_id());
}

TEST(CallSoon, NeverRunsInsideTheCallThatInstallsIt) {
  Scheduler s;
  bool ran = false;
  bool ran_during_call = true;
  int turns = 0;
  auto body = [&]() -> Task<void> {
    s.tasks().call_soon([&] { ran = true; });
    ran_during_call = ran;
    while (!ran && turns < 1000) {
      ++turns;
      co_await coselect::yield_now();
    }
  };
  s.run(body());
  EXPECT_FALSE(ran_during_call);
  EXPECT_TRUE(ran);
  // From a plain thread with no loop running: queued, not run inline either.
  bool ran_outside = false;
  s.tasks().call_soon([&] { ran_outside = true; });
  EXPECT_FALSE(ran_outside);
}

TEST(CallSoon, RunsInFifoOrderAndWorkPostedByACallbackGoesLast) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<int> order;
  constexpr int kCount = 500;
  for (int i = 0; i < kCount; ++i) {
    s.tasks().call_soon([&, i] {
      order.push_back(i);
      if (i == 0) s.tasks().call_soon([&] { order.push_back(-1); });
    });
  }
  drain(s);
  ASSERT_EQ(order.size(), static_cast<std::size_t>(kCount + 1));
  for (int i = 0; i < kCount; ++i)
    EXPECT_EQ(order[static_cast<std::size_t>(i)], i);
  EXPECT_EQ(order.back(), -1);  // deferred during the drain: after the work already queued
}

TEST(CallAt, EqualDueTimesRunInInstallOrder) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<int> order;
  constexpr int kCount = 200;
  for (int i = 0; i < kCount; ++i)
    s.tasks().call_at(at(5s), [&, i] { order.push_back(i); });
  s.run_for(10s);
  ASSERT_EQ(order.size(), static_cast<std::size_t>(kCount));
  for (int i = 0; i < kCount; ++i)
    EXPECT_EQ(order[static_cast<std::size_t>(i)], i);
}

TEST(CallAt, MixedDueTimesRunAsAStableSortByTime) {
  TimeMachine tm;
  Scheduler s(tm);
  struct Entry {
    int id;
    Clock::duration due;
  };
  std::vector<Entry> installed;
  std::vector<int> order;
  std::vector<std::int64_t> ran_at;
  for (int i = 0; i < 300; ++i) {
    const Clock::duration due = std::chrono::seconds((i * 7919) % 5 + 1);
    installed.push_back({i, due});
    s.tasks().call_at(at(due), [&, i] {
      order.push_back(i);
      ran_at.push_back(now_ns(s));
    });
  }
  s.run_for(10s);
  std::stable_sort(installed.begin(), installed.end(),
                   [](const Entry& a, const Entry& b) { return a.due < b.due; });
  ASSERT_EQ(order.size(), installed.size());
  for (std::size_t i = 0; i < installed.size(); ++i) {
    EXPECT_EQ(order[i], installed[i].id) << "position " << i;
    EXPECT_EQ(ran_at[i], ns(installed[i].due)) << "position " << i;
  }
}

TEST(CallLater, NeverEarlyOnTheRealClock) {
  Scheduler s;
  const std::vector<Clock::duration> delays = {0ms, 1ms, 10ms, 30ms, 100ms};
  std::vector<Clock::duration> elapsed(delays.size(), Clock::duration::min());
  std::size_t done = 0;
  bool timed_out = false;
  backstop(s, timed_out);
  for (std::size_t i = 0; i < delays.size(); ++i) {
    const auto start = Clock::now();
    s.tasks().call_later(delays[i], [&, i, start] {
      elapsed[i] = Clock::now() - start;
      if (++done == delays.size()) s.stop();
    });
  }
  s.run();
  EXPECT_FALSE(timed_out);
  for (std::size_t i = 0; i < delays.size(); ++i) {
    EXPECT_GE(elapsed[i], delays[i]) << "delay #" << i << " fired early";
    EXPECT_LE(elapsed[i], delays[i] + 2s) << "delay #" << i << " fired far too late";
  }
}

TEST(CallLater, ExactUnderVirtualTime) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<std::int64_t> ran;
  s.tasks().call_later(1500ms, [&] {
    ran.push_back(now_ns(s));
    s.tasks().call_later(250ms, [&] { ran.push_back(now_ns(s)); });
  });
  // Any duration type is accepted: a double-based quarter second, and microseconds.
  s.tasks().call_later(std::chrono::duration<double>(0.25), [&] { ran.push_back(now_ns(s)); });
  s.tasks().call_later(std::chrono::microseconds(1'000'001), [&] { ran.push_back(now_ns(s)); });
  s.run_for(1499ms);
  EXPECT_EQ(ran, ns_list({250ms, 1'000'001us}));
  s.run_for(1ms);
  EXPECT_EQ(ran, ns_list({250ms, 1'000'001us, 1500ms}));
  s.run_for(1s);
  EXPECT_EQ(ran, ns_list({250ms, 1'000'001us, 1500ms, 1750ms}));
  EXPECT_EQ(now_ns(s), ns(2500ms));
}

TEST(CallAt, PastDueRunsAtOnce) {
  TimeMachine tm(std::chrono::system_clock::time_point(10s));
  Scheduler s(tm);
  std::vector<std::int64_t> ran;
  s.tasks().call_at(at(5s), [&] { ran.push_back(now_ns(s)); });
  s.tasks().call_at(Clock::time_point::min(), [&] { ran.push_back(now_ns(s)); });
  s.tasks().call_later(-1h, [&] { ran.push_back(now_ns(s)); });
  drain(s);
  EXPECT_EQ(ran, ns_list({10s, 10s, 10s}));  // at once, and time did not move

  // The real clock too: a due time an hour ago runs on the first turn.
  Scheduler real;
  bool ran_real = false;
  real.tasks().call_at(Clock::now() - 1h, [&] { ran_real = true; });
  real.run_for(0ms);
  EXPECT_TRUE(ran_real);
}

// =================================================================================================
// 2. TaskHandle
// =================================================================================================

TEST(TaskHandle, DefaultConstructedIsEmptyAndInert) {
  TaskHandle h;
  EXPECT_TRUE(h.empty());
  EXPECT_FALSE(static_cast<bool>(h));
  EXPECT_FALSE(h.scheduled());
  h.suspend();
  h.resume();
  h.reschedule_at(Clock::now());
  h.reschedule_after(1s);
  EXPECT_FALSE(h.scheduled());
  EXPECT_EQ(h, TaskHandle{});
}

TEST(TaskHandle, CopiesReferToTheSameTask) {
  TimeMachine tm;
  Scheduler s(tm);
  int runs = 0;
  TaskHandle a = s.tasks().call_at(at(1s), [&] { ++runs; });
  TaskHandle b = a;  // copy
  TaskHandle c;
  c = b;  // copy-assign
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, c);
  EXPECT_TRUE(a.scheduled() && b.scheduled() && c.scheduled());
  c.suspend();
  EXPECT_FALSE(a.scheduled());
  EXPECT_FALSE(b.scheduled());
  s.run_for(2s);
  EXPECT_EQ(runs, 0);
  b.resume();  // past due now: runs at once
  EXPECT_TRUE(a.scheduled());
  drain(s);
  EXPECT_EQ(runs, 1);
  // Two different tasks have different handles.
  TaskHandle other = s.tasks().call_soon([] {});
  EXPECT_NE(a, other);
}

TEST(TaskHandle, DroppingItDoesNotCancel) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<std::int64_t> ran;
  {
    (void)s.tasks().call_at(at(1s), [&] { ran.push_back(now_ns(s)); });
  }
  {
    TaskHandle h = s.tasks().call_every(2s, [&] { ran.push_back(now_ns(s)); });
  }
  s.tasks().call_soon([&] { ran.push_back(now_ns(s)); });
  s.run_for(4s);
  EXPECT_EQ(ran, ns_list({0s, 1s, 2s, 4s}));
  EXPECT_EQ(s.tasks().pending(), 1u);  // the recurring one, still on its grid
}

TEST(TaskHandle, SuspendedTasksDoNotPileUpUntilTheirOldDeadline) {
  // A suspended task leaves its old place in the queue behind; those places must not keep
  // their callables alive until the old deadline comes (here: never within the run).
  TimeMachine tm;
  Scheduler s(tm);
  auto captured = std::make_shared<int>(0);
  s.tasks().call_later(30min, [] {});  // earlier than all of them: they never surface
  s.tasks().call_soon([&] {
    for (int i = 0; i < 10'000; ++i) {
      TaskHandle h = s.tasks().call_later(1h, [captured] {});
      h.suspend();
    }
  });
  s.run_for(1s);
  EXPECT_EQ(s.tasks().pending(), 1u);
  EXPECT_LT(captured.use_count(), 200);
}

TEST(TaskHandle, SuspendUnschedulesAndIsANoOpWhenNotScheduled) {
  TimeMachine tm;
  Scheduler s(tm);
  int runs = 0;
  TaskHandle h = s.tasks().call_at(at(1s), [&] { ++runs; });
  EXPECT_TRUE(h.scheduled());
  h.suspend();
  EXPECT_FALSE(h.scheduled());
  EXPECT_EQ(s.tasks().pending(), 0u);
  h.suspend();  // already unscheduled: nothing happens
  EXPECT_FALSE(h.scheduled());
  s.run_for(5s);
  EXPECT_EQ(runs, 0);

  // Suspending a one-shot that already ran is a no-op as well.
  TaskHandle done = s.tasks().call_soon([&] { ++runs; });
  drain(s);
  EXPECT_EQ(runs, 1);
  done.suspend();
  EXPECT_FALSE(done.scheduled());
  s.run_for(1s);
  EXPECT_EQ(runs, 1);
}

TEST(TaskHandle, SuspendedCallSoonDoesNotRun) {
  Scheduler s;  // real clock: the queued deferred work is simply withdrawn
  int runs = 0;
  TaskHandle h = s.tasks().call_soon([&] { ++runs; });
  s.tasks().call_soon([&] { ++runs; });
  h.suspend();
  s.tasks().call_soon([&] { s.stop(); });
  s.run();
  EXPECT_EQ(runs, 1);
}

TEST(TaskHandle, ResumeReinstallsAtTheStoredDueTime) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<std::int64_t> future_runs;
  std::vector<std::int64_t> past_runs;
  TaskHandle future = s.tasks().call_at(at(5s), [&] { future_runs.push_back(now_ns(s)); });
  TaskHandle past = s.tasks().call_at(at(1s), [&] { past_runs.push_back(now_ns(s)); });
  future.suspend();
  past.suspend();
  s.run_for(3s);
  EXPECT_TRUE(future_runs.empty());
  EXPECT_TRUE(past_runs.empty());

  future.resume();
  past.resume();
  EXPECT_TRUE(future.scheduled());
  EXPECT_TRUE(past.scheduled());
  drain(s);
  EXPECT_EQ(past_runs, ns_list({3s}));  // its due time (1 s) is past: at once
  EXPECT_TRUE(future_runs.empty());
  s.run_for(5s);
  EXPECT_EQ(future_runs, ns_list({5s}));  // at its stored time, exactly
  EXPECT_EQ(past_runs, ns_list({3s}));
}

TEST(TaskHandle, ResumeOfAScheduledTaskNeitherMovesNorDuplicatesIt) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<std::int64_t> ran;
  TaskHandle h = s.tasks().call_at(at(5s), [&] { ran.push_back(now_ns(s)); });
  h.resume();
  h.resume();
  EXPECT_EQ(s.tasks().pending(), 1u);
  s.run_for(10s);
  EXPECT_EQ(ran, ns_list({5s}));
}

TEST(TaskHandle, RescheduleMovesAScheduledTask) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<std::int64_t> earlier, later, after;
  TaskHandle a = s.tasks().call_at(at(5s), [&] { earlier.push_back(now_ns(s)); });
  TaskHandle b = s.tasks().call_at(at(1s), [&] { later.push_back(now_ns(s)); });
  TaskHandle c = s.tasks().call_at(at(2s), [&] { after.push_back(now_ns(s)); });
  a.reschedule_at(at(2s));
  b.reschedule_at(at(4s));
  EXPECT_EQ(s.tasks().pending(), 3u);  // moved, not duplicated
  s.run_for(1s);
  c.reschedule_after(3s);  // from now = 1 s
  EXPECT_EQ(s.tasks().pending(), 3u);
  s.run_for(10s);
  EXPECT_EQ(earlier, ns_list({2s}));
  EXPECT_EQ(later, ns_list({4s}));
  EXPECT_EQ(after, ns_list({4s}));
}

TEST(TaskHandle, RescheduleAfterAOneShotRanRunsItAgain) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<std::int64_t> ran;
  TaskHandle h = s.tasks().call_at(at(1s), [&] { ran.push_back(now_ns(s)); });
  s.run_for(2s);
  EXPECT_EQ(ran, ns_list({1s}));
  EXPECT_FALSE(h.scheduled());
  h.reschedule_after(1s);
  EXPECT_TRUE(h.scheduled());
  s.run_for(2s);
  EXPECT_EQ(ran, ns_list({1s, 3s}));
}

TEST(TaskHandle, RescheduleOfARecurringTaskRunsThenReturnsToItsGrid) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<std::int64_t> ran;
  TaskHandle h = s.tasks().call_every(1s, [&] { ran.push_back(now_ns(s)); });
  h.reschedule_at(at(2500ms));
  s.run_for(4s);
  EXPECT_EQ(ran, ns_list({2500ms, 3s, 4s}));
  h.suspend();
}

TEST(TaskHandle, ACallbackMayRescheduleOrSuspendATaskDueInTheSameBatch) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<std::int64_t> moved_runs;
  std::vector<std::int64_t> resumed_runs;
  int suspended_runs = 0;
  TaskHandle moved, resumed, suspended;
  s.tasks().call_at(at(1s), [&] {
    moved.reschedule_at(at(3s));
    resumed.resume();  // scheduled (taken for this batch): a no-op
    suspended.suspend();
  });
  moved = s.tasks().call_at(at(1s), [&] { moved_runs.push_back(now_ns(s)); });
  resumed = s.tasks().call_at(at(1s), [&] { resumed_runs.push_back(now_ns(s)); });
  suspended = s.tasks().call_at(at(1s), [&] { ++suspended_runs; });
  s.run_for(5s);
  EXPECT_EQ(moved_runs, ns_list({3s}));
  EXPECT_EQ(resumed_runs, ns_list({1s}));
  EXPECT_EQ(suspended_runs, 0);
}

TEST(TaskHandle, HugeDelaysAndIntervalsDoNotOverflow) {
  TimeMachine tm(std::chrono::system_clock::time_point(1000h));
  Scheduler s(tm);
  int runs = 0;
  auto count = [&] { ++runs; };
  s.tasks().call_later(std::chrono::hours::max(), count);
  s.tasks().call_later(std::chrono::nanoseconds::max(), count);
  s.tasks().call_at(Clock::time_point::max(), count);
  TaskHandle a = s.tasks().call_every(std::chrono::hours::max(), count);
  TaskHandle b = s.tasks().call_every(std::chrono::nanoseconds::max(), count, 1s);
  TaskHandle c = s.tasks().call_every(std::chrono::nanoseconds::max(), count, -1s);
  TaskHandle d = s.tasks().call_soon(count);
  d.reschedule_after(std::chrono::hours::max());
  for (const TaskHandle* h : {&a, &b, &c, &d})
    EXPECT_GT(h->due(), s.now());
  s.run_for(24h);
  EXPECT_EQ(runs, 0);
  EXPECT_EQ(s.tasks().pending(), 7u);
}

TEST(TaskHandle, ScheduledTracksTheTaskState) {
  TimeMachine tm;
  Scheduler s(tm);
  TaskHandle once;
  TaskHandle every;
  bool once_inside = true;
  bool every_inside = false;
  once = s.tasks().call_at(at(1s), [&] { once_inside = once.scheduled(); });
  every = s.tasks().call_every(1s, [&] { every_inside = every.scheduled(); });
  TaskHandle soon = s.tasks().call_soon([] {});
  EXPECT_TRUE(once.scheduled());
  EXPECT_TRUE(every.scheduled());
  EXPECT_TRUE(soon.scheduled());  // queued while nothing runs
  drain(s);
  EXPECT_FALSE(soon.scheduled());
  s.run_for(1s);
  EXPECT_FALSE(once_inside);  // a running one-shot is no longer waiting to run
  EXPECT_TRUE(every_inside);  // a running recurring task will run again
  EXPECT_FALSE(once.scheduled());
  EXPECT_TRUE(every.scheduled());
  every.suspend();
  EXPECT_FALSE(every.scheduled());
  EXPECT_EQ(s.tasks().pending(), 0u);
}

// =================================================================================================
// 3. call_every (BACpypes worked values, BACPYPES.md §1.3)
// =================================================================================================

std::vector<std::int64_t> every_runs(TimeMachine& tm, Clock::duration interval,
                                     Clock::duration offset, Clock::duration window) {
  Scheduler s(tm);
  std::vector<std::int64_t> ran;
  TaskHandle h = s.tasks().call_every(
      interval, [&] { ran.push_back(now_ns(s)); }, offset);
  s.run_for(window);
  h.suspend();
  return ran;
}

TEST(CallEvery, RunsOnTheGridFromTheEpochNotAtInstall) {
  TimeMachine tm;
  EXPECT_EQ(every_runs(tm, 1s, 0ms, 3s), ns_list({1s, 2s, 3s}));
}

TEST(CallEvery, PositiveOffset) {
  TimeMachine tm;
  EXPECT_EQ(every_runs(tm, 1s, 100ms, 2500ms), ns_list({100ms, 1100ms, 2100ms}));
}

TEST(CallEvery, NegativeOffset) {
  TimeMachine tm;
  EXPECT_EQ(every_runs(tm, 1s, -100ms, 2s), ns_list({900ms, 1900ms}));
}

TEST(CallEvery, OffsetBeyondTheIntervalWrapsAround) {
  TimeMachine tm;
  EXPECT_EQ(every_runs(tm, 1s, 2500ms, 2s), ns_list({500ms, 1500ms}));
}

TEST(CallEvery, FirstRunIsTheNextGridPointAfterNow) {
  TimeMachine tm(std::chrono::system_clock::time_point(300ms));
  EXPECT_EQ(every_runs(tm, 1s, 0ms, 2s), ns_list({1s, 2s}));

  // "Every 15 minutes at :00", installed at 10:07 (on 1 January 1970): first at 10:15.
  TimeMachine morning(std::chrono::system_clock::time_point(10h + 7min));
  EXPECT_EQ(every_runs(morning, 15min, 0ms, 35min), ns_list({10h + 15min, 10h + 30min}));

  // Exactly on a grid point: the next one, not now.
  TimeMachine on_grid(std::chrono::system_clock::time_point(2s));
  EXPECT_EQ(every_runs(on_grid, 1s, 0ms, 1s), ns_list({3s}));
}

TEST(CallEvery, CountsOverTenSeconds) {
  TimeMachine a;
  EXPECT_EQ(every_runs(a, 1000ms, 0ms, 10s).size(), 10u);  // 1, 2, ..., 10 (inclusive limit)
  TimeMachine b;
  const auto runs = every_runs(b, 1500ms, 0ms, 10s);
  EXPECT_EQ(runs, ns_list({1500ms, 3s, 4500ms, 6s, 7500ms, 9s}));
}

TEST(CallEvery, NonPositiveIntervalThrowsAndInstallsNothing) {
  TimeMachine tm;
  Scheduler s(tm);
  auto f = [] {};
  EXPECT_THROW(s.tasks().call_every(0s, f), std::invalid_argument);
  EXPECT_THROW(s.tasks().call_every(-1s, f), std::invalid_argument);
  EXPECT_THROW(s.tasks().call_every(-1ns, f), std::invalid_argument);
  EXPECT_THROW(s.tasks().call_every(0ms, f, 100ms), std::invalid_argument);
  EXPECT_THROW(s.tasks().call_every(std::chrono::duration<double>(0.0), f), std::invalid_argument);
  EXPECT_EQ(s.tasks().pending(), 0u);
  EXPECT_NO_THROW(s.tasks().call_every(1ns, f).suspend());
}

TEST(CallEvery, OverrunUnderVirtualTimeSkipsMissedTicks) {
  // The first run takes 2.5 s of virtual time (it moves the TimeMachine itself): the ticks at
  // 2 s and 3 s are skipped, with no catch-up burst and no drift off the grid.
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<std::int64_t> ran;
  TaskHandle h = s.tasks().call_every(1s, [&] {
    ran.push_back(now_ns(s));
    if (ran.size() == 1) tm.advance_to(s.now() + 2500ms);
  });
  s.run_for(6s);
  h.suspend();
  EXPECT_EQ(ran, ns_list({1s, 4s, 5s, 6s}));
}

TEST(CallEvery, OverrunOnTheRealClockSkipsMissedTicks) {
  Scheduler s;
  constexpr auto kInterval = 50ms;
  constexpr auto kTolerance = 5ms;  // the grid is on the wall clock, timers on steady_clock
  struct Run {
    Clock::time_point due, start, end;
  };
  std::vector<Run> runs;
  bool timed_out = false;
  backstop(s, timed_out);
  TaskHandle h;
  h = s.tasks().call_every(kInterval, [&] {
    Run r{h.due(), Clock::now(), {}};
    if (runs.empty()) {
      while (Clock::now() - r.start < 120ms) {  // overrun: busy for 2.4 intervals
      }
    }
    r.end = Clock::now();
    runs.push_back(r);
    if (runs.size() == 6) s.stop();
  });
  s.run();
  h.suspend();
  ASSERT_FALSE(timed_out);
  ASSERT_EQ(runs.size(), 6u);
  for (std::size_t i = 0; i < runs.size(); ++i) {
    EXPECT_GE(runs[i].start, runs[i].due) << "run " << i << " was early";
    EXPECT_LE(runs[i].start - runs[i].due, 2s) << "run " << i << " was far too late";
  }
  // No catch-up: the run after the overrun was due only after the overrun ended, at the next
  // grid point (not at the missed ticks, which were already past).
  EXPECT_GT(runs[1].due, runs[0].end);
  EXPECT_LE(runs[1].due - runs[0].end, kInterval + kTolerance);
  EXPECT_GE(runs[1].due - runs[0].due, 3 * kInterval - kTolerance);
  // No drift: every run is due a whole number (>= 1) of intervals after the previous one.
  for (std::size_t i = 1; i < runs.size(); ++i) {
    const auto step = runs[i].due - runs[i - 1].due;
    EXPECT_GE(step, kInterval - kTolerance) << "runs " << i - 1 << " and " << i;
    const auto off_grid = step % kInterval;
    EXPECT_TRUE(off_grid <= kTolerance || off_grid >= kInterval - kTolerance)
        << "run " << i << " is " << ns(off_grid) << " ns off the grid";
  }
  // Real time agrees: no burst, the four runs after the overrun's successor did not come
  // sooner than four intervals after that successor was due.
  EXPECT_GE(runs[5].start - runs[1].due, 4 * kInterval - kTolerance);
}

TEST(CallEvery, SelfSuspendedTaskStaysSuspendedUntilResumed) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<std::int64_t> ran;
  TaskHandle h;
  bool scheduled_after_suspend = true;
  h = s.tasks().call_every(1s, [&] {
    ran.push_back(now_ns(s));
    if (ran.size() == 2) {
      h.suspend();
      scheduled_after_suspend = h.scheduled();
    }
  });
  s.run_for(5s);
  EXPECT_EQ(ran, ns_list({1s, 2s}));
  EXPECT_FALSE(scheduled_after_suspend);
  EXPECT_FALSE(h.scheduled());
  EXPECT_EQ(s.tasks().pending(), 0u);

  // resume() re-installs it at its stored due time (2 s, past: at once), then on its grid.
  h.resume();
  EXPECT_TRUE(h.scheduled());
  s.run_for(2s);
  EXPECT_EQ(ran, ns_list({1s, 2s, 5s, 6s, 7s}));
  h.suspend();
}

TEST(CallEvery, SuspendThenResumeFromOutsideBeforeItsTime) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<std::int64_t> ran;
  TaskHandle h = s.tasks().call_every(1s, [&] { ran.push_back(now_ns(s)); });
  s.run_for(1500ms);
  h.suspend();
  h.resume();  // due at 2 s, still ahead: back on the grid unchanged
  s.run_for(1500ms);
  EXPECT_EQ(ran, ns_list({1s, 2s, 3s}));
  h.suspend();
}

// =================================================================================================
// 4. Cross-thread
// =================================================================================================

TEST(CrossThread, ManyThreadsCallSoonEachRunsExactlyOnceOnTheLoop) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = kSanitized ? 2'000 : 10'000;
  constexpr int kTotal = kThreads * kPerThread;
  Scheduler s;
  const std::thread::id loop_id = std::this_thread::get_id();
  std::vector<int> counts(kTotal, 0);  // loop thread only
  int total = 0;
  int off_loop = 0;
  bool timed_out = false;
  backstop(s, timed_out, kSanitized ? 60s : 20s);

  coselect_test::latch go(kThreads + 1);
  std::vector<std::thread> posters;
  for (int t = 0; t < kThreads; ++t) {
    posters.emplace_back([&, t] {
      go.arrive_and_wait();
      for (int i = 0; i < kPerThread; ++i) {
        const int id = t * kPerThread + i;
        s.tasks().call_soon([&, id] {
          if (std::this_thread::get_id() != loop_id) ++off_loop;
          ++counts[static_cast<std::size_t>(id)];
          if (++total == kTotal) s.stop();
        });
      }
    });
  }
  go.arrive_and_wait();
  s.run();
  for (auto& p : posters)
    p.join();
  EXPECT_FALSE(timed_out);
  EXPECT_EQ(total, kTotal);
  EXPECT_EQ(off_loop, 0);
  int wrong = 0;
  for (int i = 0; i < kTotal; ++i) {
    if (counts[static_cast<std::size_t>(i)] != 1 && ++wrong <= 5) {
      ADD_FAILURE() << "callback " << i << " ran " << counts[static_cast<std::size_t>(i)]
                    << " times";
    }
  }
  EXPECT_EQ(wrong, 0);
}

TEST(CrossThread, CallSoonWakesALoopIdlingOnAFarTimer) {
  Scheduler s;
  s.tasks().call_later(1h, [] {});  // the loop sleeps towards this
  std::atomic<pid_t> loop_tid{0};
  std::thread loop([&] {
    loop_tid = coselect_test::current_tid();
    s.run();
  });
  while (loop_tid.load() == 0)
    std::this_thread::yield();

  constexpr int kPosts = 100;
  std::vector<Clock::duration> latency;
  std::binary_semaphore ran(0);
  Clock::time_point run_at;
  int seen_asleep = 0;
  bool lost = false;
  for (int i = 0; i < kPosts && !lost; ++i) {
    if (wait_until_in_reactor(loop_tid.load(), 2s)) ++seen_asleep;
    const auto posted = Clock::now();
    s.tasks().call_soon([&] {
      run_at = Clock::now();
      ran.release();
    });
    if (!ran.try_acquire_for(5s)) {
      lost = true;
      break;
    }
    latency.push_back(run_at - posted);
  }
  s.stop();
  loop.join();
  ASSERT_FALSE(lost) << "a call_soon did not wake the idle loop within 5 s";
  std::sort(latency.begin(), latency.end());
  const auto median = latency[latency.size() / 2];
  const auto worst = latency.back();
  EXPECT_LT(worst, 1s);
  const double median_us = std::chrono::duration<double, std::micro>(median).count();
  const double worst_us = std::chrono::duration<double, std::micro>(worst).count();
  std::printf(
      "[ latency  ] call_soon -> idle loop: median %.1f us, max %.1f us over %d posts "
      "(%d observed asleep in select)\n",
      median_us, worst_us, kPosts, seen_asleep);
  testing::Test::RecordProperty("wake_latency_median_us", std::to_string(median_us));
}

TEST(CrossThread, AnEarlierTimerFromAnotherThreadWakesTheLoop) {
  Scheduler s;
  s.tasks().call_later(1h, [] {});
  Clock::duration elapsed{};
  std::thread loop([&] { s.run(); });
  const auto start = Clock::now();
  s.tasks().call_later(20ms, [&] {
    elapsed = Clock::now() - start;
    s.stop();
  });
  loop.join();
  EXPECT_GE(elapsed, 20ms);
  EXPECT_LT(elapsed, 20ms + 2s);
}

// Suspends the awaiting coroutine and publishes its handle for another thread.
struct publish_handle {
  std::atomic<void*>& slot;
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) noexcept {
    slot.store(h.address(), std::memory_order_release);
    slot.notify_all();
  }
  void await_resume() const noexcept {}
};

TEST(CrossThread, TaskManagerResumeFromAnotherThreadResumesOnTheLoop) {
  Scheduler s;
  std::atomic<void*> slot{nullptr};
  std::thread::id resumed_on;
  Scheduler* current_after = nullptr;
  std::thread::id helper_id;
  std::thread helper([&] {
    coselect_test::wait_while_equal<void*>(slot, nullptr, std::memory_order_acquire);
    s.tasks().resume(std::coroutine_handle<>::from_address(slot.load()));
  });
  helper_id = helper.get_id();
  auto body = [&]() -> Task<int> {
    co_await publish_handle{slot};
    resumed_on = std::this_thread::get_id();
    current_after = Scheduler::current();
    co_return 5;
  };
  EXPECT_EQ(s.run(body()), 5);
  helper.join();
  EXPECT_EQ(resumed_on, std::this_thread::get_id());
  EXPECT_NE(resumed_on, helper_id);
  EXPECT_EQ(current_after, &s);
}

TEST(CrossThread, TaskManagerResumeOnTheLoopThreadIsNeverInline) {
  Scheduler s;
  std::atomic<void*> slot{nullptr};
  bool resumed = false;
  bool resumed_inside_call = true;
  auto sleeper = [&]() -> Task<void> {
    co_await publish_handle{slot};
    resumed = true;
  };
  auto body = [&]() -> Task<void> {
    s.spawn(sleeper());
    for (int i = 0; i < 100 && slot.load() == nullptr; ++i)
      co_await coselect::yield_now();
    s.tasks().resume(std::coroutine_handle<>::from_address(slot.load()));
    resumed_inside_call = resumed;
    for (int i = 0; i < 100 && !resumed; ++i)
      co_await coselect::yield_now();
  };
  s.run(body());
  EXPECT_FALSE(resumed_inside_call);
  EXPECT_TRUE(resumed);
}

// =================================================================================================
// 5. Failures
// =================================================================================================

TEST(Failures, ThrowingCallbackIsRethrownAndTheRestStayQueued) {
  Scheduler s;
  std::vector<char> order;
  s.tasks().call_soon([&] { order.push_back('a'); });
  s.tasks().call_soon([&] {
    order.push_back('X');
    throw std::runtime_error("boom");
  });
  s.tasks().call_soon([&] { order.push_back('b'); });
  s.tasks().call_soon([&] { order.push_back('c'); });
  s.tasks().call_soon([&] {
    order.push_back('d');
    s.stop();
  });
  try {
    s.run();
    ADD_FAILURE() << "run() returned instead of rethrowing";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "boom");
  }
  EXPECT_EQ(order, (std::vector<char>{'a', 'X'}));
  s.run();  // the rest ran on the next run(), in order, none dropped
  EXPECT_EQ(order, (std::vector<char>{'a', 'X', 'b', 'c', 'd'}));
}

TEST(Failures, ThrowingTimedCallbackUnderVirtualTimeKeepsItsBatch) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<int> order;
  for (int i = 0; i < 5; ++i) {
    s.tasks().call_at(at(1s), [&, i] {
      order.push_back(i);
      if (i == 1) throw std::logic_error("one");
    });
  }
  EXPECT_THROW(s.run_for(2s), std::logic_error);
  EXPECT_EQ(order, (std::vector<int>{0, 1}));
  s.run_for(1s);
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(Failures, ExceptionHandlerKeepsTheLoopRunning) {
  Scheduler s;
  std::vector<std::string> caught;
  s.set_exception_handler([&](std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      caught.emplace_back(x.what());
    }
  });
  std::vector<char> order;
  s.tasks().call_soon([&] { order.push_back('a'); });
  s.tasks().call_soon([&] {
    order.push_back('X');
    throw std::runtime_error("first");
  });
  s.tasks().call_soon([&] { order.push_back('b'); });
  s.tasks().call_soon([&] {
    order.push_back('Y');
    throw std::runtime_error("second");
  });
  s.tasks().call_soon([&] {
    order.push_back('c');
    s.stop();
  });
  EXPECT_NO_THROW(s.run());
  EXPECT_EQ(order, (std::vector<char>{'a', 'X', 'b', 'Y', 'c'}));
  EXPECT_EQ(caught, (std::vector<std::string>{"first", "second"}));
}

TEST(Failures, AnExceptionHandlerThatThrowsMakesRunRethrow) {
  Scheduler s;
  s.set_exception_handler([](std::exception_ptr) { throw std::out_of_range("from handler"); });
  bool later_ran = false;
  s.tasks().call_soon([] { throw std::runtime_error("original"); });
  s.tasks().call_soon([&] {
    later_ran = true;
    s.stop();
  });
  EXPECT_THROW(s.run(), std::out_of_range);
  s.run();
  EXPECT_TRUE(later_ran);
}

// =================================================================================================
// 6. Nothing running; destruction
// =================================================================================================

TEST(NotRunning, WorkPostedBeforeTheFirstRunWaitsForIt) {
  Scheduler s;
  std::atomic<int> ran{0};
  s.tasks().call_soon([&] { ran.fetch_add(1); });
  std::thread other([&] {
    s.tasks().call_soon([&] { ran.fetch_add(10); });
    s.tasks().call_later(0ms, [&] { ran.fetch_add(100); });
  });
  other.join();
  EXPECT_EQ(ran.load(), 0);
  s.tasks().call_soon([&] { s.stop(); });
  s.run();
  EXPECT_EQ(ran.load(), 111);
}

TEST(NotRunning, WorkPostedBetweenRunsWaitsForTheNextRun) {
  TimeMachine tm;
  Scheduler s(tm);
  std::atomic<int> ran{0};
  s.tasks().call_soon([&] { ran.fetch_add(1); });
  drain(s);
  EXPECT_EQ(ran.load(), 1);
  s.tasks().call_soon([&] { ran.fetch_add(10); });
  std::thread other([&] {
    s.tasks().call_soon([&] { ran.fetch_add(100); });
    s.tasks().call_at(s.now(), [&] { ran.fetch_add(1000); });
  });
  other.join();
  EXPECT_EQ(ran.load(), 1);  // nothing runs them until the next run*
  EXPECT_EQ(s.tasks().pending(), 3u);
  drain(s);
  EXPECT_EQ(ran.load(), 1111);
}

TEST(Destruction, SchedulerDestroyedWithTasksInstalledLeavesInertHandles) {
  auto held = std::make_shared<int>(0);
  auto unheld = std::make_shared<int>(0);
  TaskHandle later, every, soon, suspended, ran;
  {
    // A scoped Scheduler, not std::unique_ptr/std::optional<Scheduler>: clang -Wall rejects
    // those (-Wdelete-non-abstract-non-virtual-dtor; Scheduler has virtual functions, no
    // virtual destructor and is not final). Reported as a library issue.
    Scheduler s;
    ran = s.tasks().call_soon([held] {});
    s.tasks().call_soon([&s] { s.stop(); });
    s.run();
    later = s.tasks().call_later(1h, [held] {});
    every = s.tasks().call_every(1h, [held] {});
    soon = s.tasks().call_soon([held] {});
    suspended = s.tasks().call_later(2h, [held] {});
    suspended.suspend();
    s.tasks().call_later(1h, [unheld] {});  // no handle kept
    s.tasks().call_soon([unheld] {});
  }
  // The scheduler released what only it held.
  EXPECT_EQ(unheld.use_count(), 1);
  for (TaskHandle* h : {&later, &every, &soon, &suspended, &ran}) {
    EXPECT_FALSE(h->scheduled());
    h->suspend();
    h->resume();
    h->reschedule_at(Clock::now());
    h->reschedule_after(1s);
    EXPECT_FALSE(h->scheduled());
    (void)h->due();
  }
  later = every = soon = suspended = ran = TaskHandle{};
  EXPECT_EQ(held.use_count(), 1);  // dropping the last handles released the callables
}

TEST(Destruction, MoveOnlyCallablesAreAccepted) {
  TimeMachine tm;
  Scheduler s(tm);
  auto value = std::make_unique<int>(41);
  int seen = 0;
  s.tasks().call_soon([v = std::move(value), &seen] { seen = *v + 1; });
  s.tasks().call_later(1s, [v = std::make_unique<int>(2), &seen] { seen += *v; });
  s.run_for(1s);
  EXPECT_EQ(seen, 44);
}

// =================================================================================================
// 7. Known library bugs (kept last, in their own suites, so that a sanitizer abort here does not
//    hide the results of the tests above)
// =================================================================================================

TEST(TaskHandleLifetime, SuspendingAndDroppingATaskDueInTheSameBatchIsSafe) {
  // BUG: run_due() keeps raw task_record pointers for the whole batch. suspend() on a task that
  // is "taken" releases the queue's reference; if the last handle goes too, the record is freed
  // while the batch still points at it, and run_due() reads r->state from freed memory
  // (AddressSanitizer: heap-use-after-free). See the report for the proposed fix.
  TimeMachine tm;
  Scheduler s(tm);
  int victim_runs = 0;
  auto victim = std::make_unique<TaskHandle>();
  s.tasks().call_at(at(1s), [&] {
    victim->suspend();
    victim.reset();  // the last reference to the victim's task
  });
  *victim = s.tasks().call_at(at(1s), [&] { ++victim_runs; });
  s.run_for(2s);
  EXPECT_EQ(victim_runs, 0);
  EXPECT_EQ(s.tasks().pending(), 0u);
}

TEST(SchedulerOwnership, CanBeHeldByUniquePtrUnderClangWall) {
  // BUG: Scheduler has virtual functions (from its private bases loop_hooks, task_host,
  // task_owner) but neither a virtual destructor nor `final`, so clang -Wall
  // (-Wdelete-non-abstract-non-virtual-dtor) rejects std::unique_ptr<Scheduler>,
  // std::optional<Scheduler> and friends under -Werror. Fix: declare `class Scheduler final`.
  EXPECT_TRUE(std::is_final_v<Scheduler> || std::has_virtual_destructor_v<Scheduler>);
}

}  // namespace
