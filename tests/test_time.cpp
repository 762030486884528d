// Tests of the time awaitables sleep_for, sleep_until and yield_now (DESIGN.md §1, §2, §5 and
// "Fine print": fairness).
//
// Sections
//   0. Helpers (anonymous namespace)
//   1. sleep_for / sleep_until on the real clock: never early, late only within a wide margin
//   2. Zero, negative and huge durations
//   3. Ordering: deadline order, FIFO for equal deadlines (virtual time: exact and deterministic)
//   4. yield_now: round robin, no starvation of timers and I/O
//   5. Virtual time: long sleeps cost no real time; misuse and lifetime
//
// Rules followed here: coroutines only record what they see; assertions run after the loop has
// returned. No sleep is used as synchronisation. Real-time bounds are one-sided and generous.

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <ratio>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <coselect.hpp>
#include "support/fixtures.hpp"

namespace {

// =================================================================================================
// 0. Helpers
// =================================================================================================

using namespace std::chrono_literals;
using coselect::Scheduler;
using coselect::sleep_for;
using coselect::sleep_until;
using coselect::Task;
using coselect::yield_now;
using Clock = std::chrono::steady_clock;
using coselect_test::FrameProbe;
using coselect_test::list;
using coselect_test::run_all;
using coselect_test::run_all_within;

// How late a real-time wake-up may be on a shared, noisy machine.
constexpr auto kLate = 2s;

// =================================================================================================
// 1. Real clock
// =================================================================================================

// Measures one sleep_for on both the steady clock and the scheduler's clock.
struct Slept {
  Clock::duration real{};
  Scheduler::duration loop{};
};

template <class Rep, class Period>
Task<void> timed_sleep(Scheduler& s, std::chrono::duration<Rep, Period> d, Slept& out) {
  const auto real_start = Clock::now();
  const auto loop_start = s.now();
  co_await sleep_for(d);
  out.real = Clock::now() - real_start;
  out.loop = s.now() - loop_start;
}

TEST(SleepFor, NeverEarlyOnTheRealClock) {
  using fractional_ms = std::chrono::duration<double, std::milli>;
  Scheduler s;
  Slept a, b, c, d;
  EXPECT_EQ(run_all(s, timed_sleep(s, 1ms, a), timed_sleep(s, 20ms, b), timed_sleep(s, 50ms, c),
                    timed_sleep(s, fractional_ms(33.3), d)),
            0u);
  EXPECT_GE(a.real, 1ms);
  EXPECT_GE(b.real, 20ms);
  EXPECT_GE(c.real, 50ms);
  EXPECT_GE(d.real, fractional_ms(33.3));
  EXPECT_GE(a.loop, 1ms);
  EXPECT_GE(b.loop, 20ms);
  EXPECT_GE(c.loop, 50ms);
  EXPECT_LT(a.real, 1ms + kLate);
  EXPECT_LT(b.real, 20ms + kLate);
  EXPECT_LT(c.real, 50ms + kLate);
  EXPECT_LT(d.real, 34ms + kLate);
}

TEST(SleepUntil, NeverEarlyOnTheRealClock) {
  Scheduler s;
  Scheduler::time_point deadline = s.now() + 40ms;
  Scheduler::time_point woke{};
  auto sleeper = [](Scheduler& s, Scheduler::time_point t,
                    Scheduler::time_point& woke) -> Task<void> {
    co_await sleep_until(t);
    woke = s.now();
  };
  EXPECT_EQ(run_all(s, sleeper(s, deadline, woke)), 0u);
  EXPECT_GE(woke, deadline);
  EXPECT_LT(woke, deadline + kLate);
}

// Different deadlines on the real clock fire in deadline order, however late the loop is: they
// leave the timer heap earliest first.
TEST(SleepFor, RealClockWakesInDeadlineOrder) {
  Scheduler s;
  std::vector<int> order;
  std::vector<Task<void>> tasks;
  const std::vector<int> ms = {30, 5, 20, 0, 25, 10, 15, 1};
  for (std::size_t i = 0; i < ms.size(); ++i) {
    tasks.push_back([](std::chrono::milliseconds d, int i, std::vector<int>& order) -> Task<void> {
      co_await sleep_for(d);
      order.push_back(i);
    }(std::chrono::milliseconds(ms[i]), static_cast<int>(i), order));
  }
  EXPECT_EQ(run_all_within(s, 10s, std::move(tasks)), 0u);
  std::vector<int> expected(ms.size());
  std::iota(expected.begin(), expected.end(), 0);
  std::stable_sort(expected.begin(), expected.end(), [&](int a, int b) {
    return ms[static_cast<std::size_t>(a)] < ms[static_cast<std::size_t>(b)];
  });
  EXPECT_EQ(order, expected);
}

// =================================================================================================
// 2. Zero, negative and huge durations
// =================================================================================================

// sleep_for(d <= 0) still suspends and lets the loop turn: a coroutine spawned after the sleeper
// runs before the sleeper continues.
template <class Duration>
void expect_turn_before_return_on(Scheduler& s, Duration d, const std::string& what) {
  const auto t0 = s.now();
  std::vector<std::string> log;
  auto sleeper = [](Duration d, std::vector<std::string>& log) -> Task<void> {
    co_await sleep_for(d);
    log.push_back("sleeper");
  };
  auto other = [](std::vector<std::string>& log) -> Task<void> {
    log.push_back("other");
    co_return;
  };
  EXPECT_EQ(run_all(s, sleeper(d, log), other(log)), 0u) << what;
  EXPECT_EQ(log, (std::vector<std::string>{"other", "sleeper"})) << what;
  if (s.is_virtual_time()) {
    EXPECT_EQ(s.now(), t0) << what << ": virtual time moved";
  }
}

template <class Duration>
void expect_turn_before_return(Duration d, const std::string& what) {
  {
    Scheduler s;
    expect_turn_before_return_on(s, d, what + " (real time)");
  }
  {
    coselect::TimeMachine tm;
    Scheduler s(tm);
    expect_turn_before_return_on(s, d, what + " (virtual time)");
  }
}

TEST(SleepFor, ZeroReturnsAfterALoopTurn) {
  expect_turn_before_return(0ms, "0ms");
  expect_turn_before_return(std::chrono::duration<double>(0.0), "0.0s");
}

TEST(SleepFor, NegativeReturnsAfterALoopTurn) {
  expect_turn_before_return(-1ms, "-1ms");
  expect_turn_before_return(-24h, "-24h");
  expect_turn_before_return(std::chrono::hours::min(), "hours::min()");
  expect_turn_before_return(std::chrono::nanoseconds::min(), "nanoseconds::min()");
}

TEST(SleepUntil, PastDeadlineReturnsAfterALoopTurn) {
  Scheduler s;
  std::vector<std::string> log;
  auto sleeper = [](Scheduler::time_point t, std::vector<std::string>& log) -> Task<void> {
    co_await sleep_until(t);
    log.push_back("sleeper");
  };
  auto other = [](std::vector<std::string>& log) -> Task<void> {
    log.push_back("other");
    co_return;
  };
  EXPECT_EQ(run_all(s, sleeper(s.now() - 1h, log), sleeper(Scheduler::time_point::min(), log),
                    other(log)),
            0u);
  EXPECT_EQ(log, (std::vector<std::string>{"other", "sleeper", "sleeper"}));
}

// A huge sleep must mean "practically forever", not wrap around to a past deadline. Under
// virtual time, a thousand hours pass and it has not fired; destroying the scheduler then frees
// the sleeping frames.
TEST(SleepFor, HugeDurationDoesNotOverflowVirtualTime) {
  int destroyed = 0;
  int fired = 0;
  for (auto start : {std::chrono::system_clock::time_point{}, std::chrono::system_clock::now()}) {
    coselect::TimeMachine tm(start);
    {
      Scheduler s(tm);
      const auto t0 = s.now();
      auto huge = [](auto d, int& destroyed, int& fired) -> Task<void> {
        FrameProbe probe{destroyed};
        co_await sleep_for(d);
        ++fired;
      };
      s.spawn(huge(std::chrono::hours::max(), destroyed, fired));
      s.spawn(huge(std::chrono::nanoseconds::max(), destroyed, fired));
      s.spawn(huge(std::chrono::duration<double>(1e300), destroyed, fired));
      s.spawn([](Scheduler::time_point t, int& destroyed, int& fired) -> Task<void> {
        FrameProbe probe{destroyed};
        co_await sleep_until(t);
        ++fired;
      }(Scheduler::time_point::max(), destroyed, fired));
      s.run_for(1000h);
      EXPECT_EQ(s.now() - t0, 1000h);
      EXPECT_EQ(fired, 0);
    }
  }
  EXPECT_EQ(destroyed, 8);
}

// The same on the real clock: an overflowed deadline would lie in the past and fire at once.
TEST(SleepFor, HugeDurationDoesNotOverflowRealTime) {
  int destroyed = 0;
  int fired = 0;
  {
    Scheduler s;
    auto huge = [](auto d, int& destroyed, int& fired) -> Task<void> {
      FrameProbe probe{destroyed};
      co_await sleep_for(d);
      ++fired;
    };
    s.spawn(huge(std::chrono::hours::max(), destroyed, fired));
    s.spawn(huge(std::chrono::nanoseconds::max(), destroyed, fired));
    s.spawn(huge(std::chrono::years::max(), destroyed, fired));
    s.run_for(30ms);
    EXPECT_EQ(fired, 0);
  }
  EXPECT_EQ(destroyed, 3);
}

// =================================================================================================
// 3. Ordering (virtual time)
// =================================================================================================

// Many sleepers with random deadlines, many of them equal, half through sleep_until and half
// through sleep_for (all starting at the same virtual instant): they wake in deadline order,
// equal deadlines in the order the sleeps began, each exactly at its deadline.
TEST(SleepOrdering, RandomDeadlinesWakeInOrderFifoForTies) {
  constexpr int kSleepers = 500;
  const auto seed = static_cast<std::uint32_t>(std::random_device{}());
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> pick(0, 40);

  coselect::TimeMachine tm;
  Scheduler s(tm);
  const auto t0 = s.now();
  std::vector<Scheduler::duration> offset(kSleepers);
  struct Woke {
    int index;
    Scheduler::time_point at;
  };
  std::vector<Woke> woke;
  std::vector<Task<void>> tasks;
  for (int i = 0; i < kSleepers; ++i) {
    offset[static_cast<std::size_t>(i)] = std::chrono::milliseconds(pick(rng));
    const auto d = offset[static_cast<std::size_t>(i)];
    if (i % 2 == 0) {
      tasks.push_back(
          [](Scheduler& s, Scheduler::time_point t, int i, std::vector<Woke>& woke) -> Task<void> {
            co_await sleep_until(t);
            woke.push_back({i, s.now()});
          }(s, t0 + d, i, woke));
    } else {
      tasks.push_back(
          [](Scheduler& s, Scheduler::duration d, int i, std::vector<Woke>& woke) -> Task<void> {
            co_await sleep_for(d);
            woke.push_back({i, s.now()});
          }(s, d, i, woke));
    }
  }
  EXPECT_EQ(run_all_within(s, 10h, std::move(tasks)), 0u);

  std::vector<int> expected(kSleepers);
  std::iota(expected.begin(), expected.end(), 0);
  std::stable_sort(expected.begin(), expected.end(), [&](int a, int b) {
    return offset[static_cast<std::size_t>(a)] < offset[static_cast<std::size_t>(b)];
  });
  ASSERT_EQ(woke.size(), expected.size());
  for (std::size_t k = 0; k < woke.size(); ++k) {
    EXPECT_EQ(woke[k].index, expected[k]) << "position " << k;
    EXPECT_EQ((woke[k].at - t0).count(), offset[static_cast<std::size_t>(woke[k].index)].count())
        << "sleeper " << woke[k].index << " woke at the wrong virtual time";
  }
}

// Sleeps that begin at different virtual times: the deadline counts from when each sleep began.
TEST(SleepOrdering, ChainedSleepsAccumulateExactly) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  const auto t0 = s.now();
  std::vector<std::pair<char, Scheduler::duration>> log;
  auto a = [](Scheduler& s, Scheduler::time_point t0, auto& log) -> Task<void> {
    co_await sleep_for(10min);  // +10
    log.emplace_back('a', s.now() - t0);
    co_await sleep_for(30min);  // +40
    log.emplace_back('a', s.now() - t0);
  };
  auto b = [](Scheduler& s, Scheduler::time_point t0, auto& log) -> Task<void> {
    co_await sleep_for(20min);  // +20
    log.emplace_back('b', s.now() - t0);
    co_await sleep_until(t0 + 40min);  // ties with a's second sleep, which began earlier
    log.emplace_back('b', s.now() - t0);
    co_await sleep_for(1ns);
    log.emplace_back('b', s.now() - t0);
  };
  EXPECT_EQ(run_all_within(s, 10h, list(a(s, t0, log), b(s, t0, log))), 0u);
  const std::vector<std::pair<char, Scheduler::duration>> expected = {
      {'a', 10min}, {'b', 20min}, {'a', 40min}, {'b', 40min}, {'b', 40min + 1ns}};
  EXPECT_EQ(log, expected);
}

// Sub-nanosecond durations round up: never early, even by a fraction.
TEST(SleepFor, FractionalDurationsRoundUpOnVirtualTime) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  Scheduler::duration slept{};
  auto sleeper = [](Scheduler& s, Scheduler::duration& slept) -> Task<void> {
    const auto start = s.now();
    co_await sleep_for(std::chrono::duration<double, std::nano>(0.25));
    slept = s.now() - start;
  };
  EXPECT_EQ(run_all_within(s, 1h, list(sleeper(s, slept))), 0u);
  EXPECT_EQ(slept, 1ns);
}

// =================================================================================================
// 4. yield_now
// =================================================================================================

TEST(YieldNow, ReadyCoroutinesTakeTurnsRoundRobin) {
  Scheduler s;
  std::vector<int> order;
  auto worker = [](int id, std::vector<int>& order) -> Task<void> {
    for (int round = 0; round < 4; ++round) {
      order.push_back(id);
      co_await yield_now();
    }
  };
  EXPECT_EQ(run_all(s, worker(0, order), worker(1, order), worker(2, order)), 0u);
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2}));
}

// A coroutine that loops on yield_now() cannot starve a timer or an fd waiter: both complete
// while it spins, and it stops spinning once they have.
TEST(YieldNow, SpinningCoroutineDoesNotStarveTimersOrIo) {
  Scheduler s;
  const coselect_test::Pipe pipe;
  pipe.put();
  bool timer_done = false;
  bool io_done = false;
  long spins = 0;
  auto spinner = [](const bool& timer_done, const bool& io_done, long& spins) -> Task<void> {
    const auto give_up = Clock::now() + 5s;  // a starved loop fails instead of hanging
    while (!(timer_done && io_done) && Clock::now() < give_up) {
      ++spins;
      co_await yield_now();
    }
  };
  auto sleeper = [](bool& done) -> Task<void> {
    co_await sleep_for(5ms);
    done = true;
  };
  auto reader = [](coselect::native_handle fd, bool& done) -> Task<void> {
    co_await coselect::readable(fd);
    done = true;
  };
  EXPECT_EQ(run_all(s, spinner(timer_done, io_done, spins), sleeper(timer_done),
                    reader(pipe.read_end, io_done)),
            0u);
  EXPECT_TRUE(timer_done) << "a yield_now() loop starved the timers";
  EXPECT_TRUE(io_done) << "a yield_now() loop starved fd waiters";
  EXPECT_GT(spins, 0);
}

TEST(YieldNow, DoesNotMoveVirtualTime) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  const auto t0 = s.now();
  Scheduler::time_point after{};
  auto yielder = [](Scheduler& s, Scheduler::time_point& after) -> Task<void> {
    for (int i = 0; i < 100; ++i)
      co_await yield_now();
    after = s.now();
  };
  EXPECT_EQ(run_all_within(s, 1h, list(yielder(s, after))), 0u);
  EXPECT_EQ(after, t0);
}

// =================================================================================================
// 5. Virtual time, misuse, lifetime
// =================================================================================================

TEST(VirtualTime, HourLongSleepsTakeWellUnderASecond) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  const auto t0 = s.now();
  const auto real_start = Clock::now();
  std::vector<Task<void>> tasks;
  int finished = 0;
  for (int i = 1; i <= 100; ++i) {
    tasks.push_back([](int hours, int& finished) -> Task<void> {
      co_await sleep_for(std::chrono::hours(hours));
      co_await sleep_for(1h);
      ++finished;
    }(i, finished));
  }
  EXPECT_EQ(run_all_within(s, 1000h, std::move(tasks)), 0u);
  const auto real = Clock::now() - real_start;
  EXPECT_EQ(finished, 100);
  EXPECT_EQ(s.now() - t0, 101h);
  EXPECT_LT(real, 1s);
}

// A virtual clock may start at any wall time, also late in the range of the clock's 64-bit
// nanoseconds (which ends in 2262): sleeps there still last as long as asked, and huge ones still
// mean "practically forever".
// BUG: fails today. detail::saturating_add clamps every deadline to max/2 ns (year ~2116), not to
// the end of the range: on a clock already past that point, now + 1h is "clamped" to a time in
// the past and every sleep, timeout and call_later fires at once. Proposed fix: saturate at the
// representable end of the range (`base > max - step ? max : base + step`, and symmetrically for
// negative steps), or clamp relative to `now` rather than to a fixed max/2.
TEST(VirtualTime, ClockStartingInTheFarFutureStillSleeps) {
  using namespace std::chrono;
  coselect::TimeMachine tm(sys_days{year(2200) / January / 1});
  Scheduler s(tm);
  const auto t0 = s.now();
  Scheduler::duration slept{};
  bool huge_fired = false;
  s.spawn([](Scheduler& s, Scheduler::duration& slept) -> Task<void> {
    const auto start = s.now();
    co_await sleep_for(1h);
    slept = s.now() - start;
  }(s, slept));
  s.spawn([](bool& fired) -> Task<void> {
    co_await sleep_for(hours::max());
    fired = true;
  }(huge_fired));
  s.run_for(2h);
  EXPECT_EQ(slept, 1h);
  EXPECT_FALSE(huge_fired);
  EXPECT_EQ(s.now() - t0, 2h);
}

// run_for limits are inclusive: a sleep due exactly at the limit has run when run_for returns.
TEST(VirtualTime, SleepDueAtTheRunForLimitRuns) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  bool at_limit = false;
  bool after_limit = false;
  s.spawn([](bool& done) -> Task<void> {
    co_await sleep_for(1h);
    done = true;
  }(at_limit));
  s.spawn([](bool& done) -> Task<void> {
    co_await sleep_for(1h + 1ns);
    done = true;
  }(after_limit));
  s.run_for(1h);
  EXPECT_TRUE(at_limit);
  EXPECT_FALSE(after_limit);
  s.run_for(1ns);
  EXPECT_TRUE(after_limit);
}

TEST(TimeMisuse, AwaitingWithoutSchedulerThrowsLogicError) {
  std::vector<std::string> messages;
  auto t = [](std::vector<std::string>& messages) -> Task<void> {
    try {
      co_await sleep_for(1ms);
    } catch (const std::logic_error& e) {
      messages.emplace_back(e.what());
    }
    try {
      co_await sleep_until(Clock::now());
    } catch (const std::logic_error& e) {
      messages.emplace_back(e.what());
    }
    try {
      co_await yield_now();
    } catch (const std::logic_error& e) {
      messages.emplace_back(e.what());
    }
  }(messages);
  t.handle().resume();  // driven by hand: no scheduler runs on this thread
  EXPECT_TRUE(t.done());
  ASSERT_EQ(messages.size(), 3u);
  for (const std::string& m : messages)
    EXPECT_FALSE(m.empty());
}

// Destroying the scheduler while coroutines sleep destroys their frames and timers (ASan: no
// use after free, no leak); a fresh scheduler on the same TimeMachine sees none of them.
TEST(TimeLifetime, DestroyingSchedulerWhileSleepingFreesSleepers) {
  coselect::TimeMachine tm;
  int destroyed = 0;
  int fired = 0;
  {
    Scheduler s(tm);
    for (int i = 0; i < 10; ++i) {
      s.spawn([](int i, int& destroyed, int& fired) -> Task<void> {
        FrameProbe probe{destroyed};
        co_await sleep_for(std::chrono::minutes(10 + i));
        ++fired;
      }(i, destroyed, fired));
    }
    s.run_for(1min);
  }
  EXPECT_EQ(destroyed, 10);
  Scheduler again(tm);
  again.run_for(2h);
  EXPECT_EQ(fired, 0);
}

}  // namespace
