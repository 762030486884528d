// Virtual time: TimeMachine and the scheduler's auto-advance rule (DESIGN §5).
#include <gtest/gtest.h>
#include <unistd.h>
#include <coselect.hpp>
#include "support/fixtures.hpp"

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using coselect::Scheduler;
using coselect::Task;
using coselect::TimeMachine;
using coselect_test::Pipe;

// Virtual seconds since the system clock's epoch.
double seconds(Scheduler::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

// ---- TimeMachine ------------------------------------------------------------------------------

TEST(TimeMachine, StartsAtTheSystemClockEpochByDefault) {
  TimeMachine tm;
  EXPECT_EQ(tm.wall_now(), std::chrono::system_clock::time_point{});
  EXPECT_EQ(tm.now().time_since_epoch(), Scheduler::duration::zero());
}

TEST(TimeMachine, PretendsToStartAtTheGivenWallTime) {
  const auto start = std::chrono::system_clock::time_point(1'700'000'000s);
  TimeMachine tm(start);
  EXPECT_EQ(tm.wall_now(), start);
  EXPECT_EQ(tm.now().time_since_epoch(), 1'700'000'000s);
}

TEST(TimeMachine, NeverMovesBackwards) {
  TimeMachine tm;
  tm.advance_to(Scheduler::time_point(10s));
  tm.advance_to(Scheduler::time_point(3s));
  EXPECT_EQ(tm.now(), Scheduler::time_point(10s));
}

TEST(TimeMachine, SchedulerReadsItsClock) {
  TimeMachine tm(std::chrono::system_clock::time_point(42s));
  Scheduler s(tm);
  EXPECT_TRUE(s.is_virtual_time());
  EXPECT_EQ(s.now(), tm.now());
  Scheduler real;
  EXPECT_FALSE(real.is_virtual_time());
}

// ---- auto-advance -----------------------------------------------------------------------------

TEST(VirtualTime, HourLongSleepFinishesAtOnceAndExactly) {
  TimeMachine tm;
  Scheduler s(tm);
  const auto real_start = std::chrono::steady_clock::now();
  Scheduler::time_point woke{};
  s.run([](Scheduler& s, Scheduler::time_point& woke) -> Task<void> {
    co_await coselect::sleep_for(1h);
    woke = s.now();
  }(s, woke));
  EXPECT_EQ(woke, Scheduler::time_point(1h));
  EXPECT_LT(std::chrono::steady_clock::now() - real_start, 1s);
}

TEST(VirtualTime, TimeoutsFireAtTheirVirtualDeadline) {
  TimeMachine tm;
  Scheduler s(tm);
  coselect::WaitableEvent never;
  Pipe silent;
  bool event_result = true;
  bool fd_result = true;
  s.run([](coselect::WaitableEvent& ev, int fd, bool& e, bool& f) -> Task<void> {
    e = co_await ev.wait(10min);
    f = co_await coselect::readable(fd, 30s);
  }(never, silent.read_end, event_result, fd_result));
  EXPECT_FALSE(event_result);
  EXPECT_FALSE(fd_result);
  EXPECT_EQ(s.now(), Scheduler::time_point(10min + 30s));
}

TEST(VirtualTime, DoesNotMoveWhileCoroutinesAreReady) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<Scheduler::time_point> seen;
  s.spawn([](Scheduler& s, std::vector<Scheduler::time_point>& seen) -> Task<void> {
    for (int i = 0; i < 100; ++i) {
      seen.push_back(s.now());
      co_await coselect::yield_now();
    }
  }(s, seen));
  s.tasks().call_later(1s, [] {});
  s.run_for(2s);
  ASSERT_EQ(seen.size(), 100u);
  for (auto t : seen)
    EXPECT_EQ(t, Scheduler::time_point{});
  EXPECT_EQ(s.now(), Scheduler::time_point(2s));
}

TEST(VirtualTime, FdsAreCheckedBeforeTimeJumps) {
  TimeMachine tm;
  Scheduler s(tm);
  Pipe p;
  p.put();
  bool ready = false;
  Scheduler::time_point when{};
  s.run([](Scheduler& s, int fd, bool& ready, Scheduler::time_point& when) -> Task<void> {
    ready = co_await coselect::readable(fd, 1h);
    when = s.now();
  }(s, p.read_end, ready, when));
  EXPECT_TRUE(ready);
  EXPECT_EQ(when, Scheduler::time_point{});
}

TEST(VirtualTime, WithNoDeadlineItBlocksOnFdsLikeTheRealLoop) {
  TimeMachine tm;
  Scheduler s(tm);
  Pipe p;
  std::thread writer([&] {
    // Give the loop time to block first; the result does not depend on it.
    std::this_thread::sleep_for(20ms);
    p.put();
  });
  bool woke = false;
  s.run([](int fd, bool& woke) -> Task<void> {
    co_await coselect::readable(fd);
    woke = true;
  }(p.read_end, woke));
  writer.join();
  EXPECT_TRUE(woke);
  EXPECT_EQ(s.now(), Scheduler::time_point{});
}

TEST(VirtualTime, DoesNotRaceAheadOfAThreadDoingRealWork) {
  TimeMachine tm;
  Scheduler s(tm);
  Scheduler::time_point job_started{}, job_ended{}, sleeper_woke{};
  std::atomic<bool> job_done{false};
  bool sleeper_saw_job_done = false;
  s.spawn([](Scheduler& s, Scheduler::time_point& woke, std::atomic<bool>& done,
             bool& saw) -> Task<void> {
    co_await coselect::sleep_for(1h);
    woke = s.now();
    saw = done.load();
  }(s, sleeper_woke, job_done, sleeper_saw_job_done));
  s.run([](Scheduler& s, Scheduler::time_point& started, Scheduler::time_point& ended,
           std::atomic<bool>& done) -> Task<void> {
    co_await coselect::run_in_thread([&] {
      started = s.now();
      std::this_thread::sleep_for(50ms);  // real work that takes real time
      ended = s.now();
      done = true;
    });
  }(s, job_started, job_ended, job_done));
  EXPECT_EQ(job_started, job_ended) << "virtual time jumped while a thread worked for the loop";
  s.run_for(2h);
  EXPECT_TRUE(sleeper_saw_job_done);
  EXPECT_EQ(sleeper_woke, Scheduler::time_point(1h));
}

TEST(VirtualTime, WorkPostedFromAnotherThreadIsRunBeforeTimeJumps) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<Scheduler::time_point> ran_at;
  std::thread poster([&] {
    for (int i = 0; i < 10; ++i)
      s.tasks().call_soon([&] { ran_at.push_back(s.now()); });
  });
  poster.join();
  s.tasks().call_later(1h, [] {});
  s.run_for(30min);
  ASSERT_EQ(ran_at.size(), 10u);
  for (auto t : ran_at)
    EXPECT_EQ(t, Scheduler::time_point{});
}

// ---- run_for / run_until --------------------------------------------------------------------

TEST(VirtualTime, RunForLimitIsInclusive) {
  TimeMachine tm;
  Scheduler s(tm);
  bool at_limit = false, after_limit = false;
  s.tasks().call_at(Scheduler::time_point(1s), [&] { at_limit = true; });
  s.tasks().call_at(Scheduler::time_point(1s + 1ns), [&] { after_limit = true; });
  s.run_for(1s);
  EXPECT_TRUE(at_limit);
  EXPECT_FALSE(after_limit);
  EXPECT_EQ(s.now(), Scheduler::time_point(1s));
  s.run_for(1ns);
  EXPECT_TRUE(after_limit);
}

TEST(VirtualTime, RunUntilReachesTheLimitEvenWithNothingToDo) {
  TimeMachine tm;
  Scheduler s(tm);
  s.run_until(Scheduler::time_point(5min));
  EXPECT_EQ(s.now(), Scheduler::time_point(5min));
}

TEST(VirtualTime, CoroutinesResumedAtTheLimitRunBeforeRunForReturns) {
  TimeMachine tm;
  Scheduler s(tm);
  bool resumed = false;
  s.spawn([](bool& resumed) -> Task<void> {
    co_await coselect::sleep_for(1s);
    resumed = true;
  }(resumed));
  s.run_for(1s);
  EXPECT_TRUE(resumed);
}

TEST(VirtualTime, RealClockRunForIsNeverEarly) {
  Scheduler s;
  const auto start = std::chrono::steady_clock::now();
  s.run_for(50ms);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took, 50ms);
  EXPECT_LT(took, 2s);
}

// ---- BACpypes' time-machine cases -------------------------------------------------------------

std::vector<double> recurring_runs(std::chrono::milliseconds interval,
                                   std::chrono::milliseconds offset,
                                   std::chrono::system_clock::time_point start,
                                   std::chrono::milliseconds run_time) {
  TimeMachine tm(start);
  Scheduler s(tm);
  std::vector<double> runs;
  s.tasks().call_every(
      interval, [&] { runs.push_back(seconds(s.now())); }, offset);
  s.run_for(run_time);
  return runs;
}

TEST(BacpypesTimeMachine, RecurringIntervals) {
  EXPECT_EQ(recurring_runs(1000ms, 0ms, {}, 10s).size(), 10u);  // 1..10, the limit inclusive
  const auto runs = recurring_runs(1500ms, 0ms, {}, 10s);
  EXPECT_EQ(runs, (std::vector<double>{1.5, 3.0, 4.5, 6.0, 7.5, 9.0}));
}

TEST(BacpypesTimeMachine, RecurringOffsets) {
  EXPECT_EQ(recurring_runs(1000ms, 100ms, {}, 3s), (std::vector<double>{0.1, 1.1, 2.1}));
  EXPECT_EQ(recurring_runs(1000ms, -100ms, {}, 3s), (std::vector<double>{0.9, 1.9, 2.9}));
  EXPECT_EQ(recurring_runs(1000ms, 2500ms, {}, 3s), (std::vector<double>{0.5, 1.5, 2.5}));
}

TEST(BacpypesTimeMachine, StartTimeAlignsToTheGrid) {
  const auto start = std::chrono::system_clock::time_point(300ms);
  EXPECT_EQ(recurring_runs(1000ms, 0ms, start, 2700ms), (std::vector<double>{1.0, 2.0, 3.0}));
}

TEST(BacpypesTimeMachine, EqualTimesRunInInstallOrder) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<int> order;
  for (int i = 0; i < 20; ++i) {
    s.tasks().call_at(Scheduler::time_point(1s), [&order, i] { order.push_back(i); });
  }
  s.run_for(1s);
  ASSERT_EQ(order.size(), 20u);
  for (int i = 0; i < 20; ++i)
    EXPECT_EQ(order[i], i);
}

TEST(BacpypesTimeMachine, TasksInstalledAtTheSameInstantRunAtThatInstant) {
  TimeMachine tm;
  Scheduler s(tm);
  std::vector<std::pair<char, double>> runs;
  s.tasks().call_at(Scheduler::time_point(1s), [&] {
    runs.emplace_back('a', seconds(s.now()));
    s.tasks().call_at(s.now(), [&] {
      runs.emplace_back('b', seconds(s.now()));
      s.tasks().call_soon([&] { runs.emplace_back('c', seconds(s.now())); });
    });
  });
  s.tasks().call_at(Scheduler::time_point(2s), [&] { runs.emplace_back('d', seconds(s.now())); });
  s.run_for(3s);
  using run = std::pair<char, double>;
  EXPECT_EQ(runs, (std::vector<run>{{'a', 1.0}, {'b', 1.0}, {'c', 1.0}, {'d', 2.0}}));
}

TEST(BacpypesTimeMachine, APastDueTaskRunsNowAndTimeDoesNotGoBack) {
  TimeMachine tm;
  Scheduler s(tm);
  s.run_for(10s);
  double ran_at = -1;
  s.tasks().call_at(Scheduler::time_point(2s), [&] { ran_at = seconds(s.now()); });
  s.run_for(1s);
  EXPECT_EQ(ran_at, 10.0);
  EXPECT_EQ(s.now(), Scheduler::time_point(11s));
}

// "Retry every 30 s, give up after 10 min": the test takes milliseconds.
TEST(VirtualTime, RetryLoopRunsInMilliseconds) {
  TimeMachine tm;
  Scheduler s(tm);
  int attempts = 0;
  const auto real_start = std::chrono::steady_clock::now();
  const bool gave_up = s.run([](Scheduler& s, int& attempts) -> Task<bool> {
    const auto deadline = s.now() + 10min;
    while (s.now() < deadline) {
      ++attempts;  // an attempt that fails
      co_await coselect::sleep_for(30s);
    }
    co_return true;
  }(s, attempts));
  EXPECT_TRUE(gave_up);
  EXPECT_EQ(attempts, 20);
  EXPECT_EQ(s.now(), Scheduler::time_point(10min));
  EXPECT_LT(std::chrono::steady_clock::now() - real_start, 1s);
}

}  // namespace
