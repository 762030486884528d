// WaitableEvent, coroutine side: co_await ev.wait() / ev.wait(timeout) on a Scheduler.
// (The thread and fd side is in test_waitable_event.cpp.)
#include <gtest/gtest.h>
#include <coselect.hpp>
#include "support/fd_probe.hpp"
#include "support/portable.hpp"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>
// =================================================================================================
// Coroutine side: co_await ev.wait() / ev.wait(timeout) on a Scheduler.
// =================================================================================================

namespace coro {

using namespace std::chrono_literals;
using coselect::Scheduler;
using coselect::Task;
using coselect::TimeMachine;
using coselect::WaitableEvent;

// Bytes waiting in the event's pipe, read without marking it exported (white box: fileno() would
// change the event's behaviour by asking the pipe to mirror the flag).
int pending_bytes(const WaitableEvent& ev) {
  return static_cast<int>(
      coselect_test::bytes_pending(coselect::detail::event_access::read_fd(ev)));
}

Task<void> record_after_wait(WaitableEvent& ev, std::vector<int>& log, int id) {
  co_await ev.wait();
  log.push_back(id);
}

TEST(WaitableEventAwait, AlreadySetDoesNotSuspend) {
  Scheduler s;
  WaitableEvent ev;
  ev.set();
  std::vector<std::string> log;
  s.spawn([](WaitableEvent& ev, std::vector<std::string>& log) -> Task<void> {
    log.push_back("a1");
    co_await ev.wait();
    log.push_back("a2");
    const bool set = co_await ev.wait(1h);
    log.push_back(set ? "a3" : "timeout");
  }(ev, log));
  s.spawn([](std::vector<std::string>& log) -> Task<void> {
    log.push_back("b");
    co_return;
  }(log));
  s.run_for(0ms);
  EXPECT_EQ(log, (std::vector<std::string>{"a1", "a2", "a3", "b"}));
}

TEST(WaitableEventAwait, SetOnTheLoopResumesWaitersInOrderAfterSetReturnsWithoutThePipe) {
  Scheduler s;
  WaitableEvent ev;
  std::vector<int> log;
  for (int id = 1; id <= 5; ++id)
    s.spawn(record_after_wait(ev, log, id));
  int bytes_after_set = -1;
  s.spawn([](WaitableEvent& ev, std::vector<int>& log, int& bytes) -> Task<void> {
    co_await coselect::yield_now();  // the waiters are waiting now
    ev.set();
    log.push_back(0);  // set() returned before any waiter ran
    bytes = pending_bytes(ev);
  }(ev, log, bytes_after_set));
  s.run_for(0ms);
  EXPECT_EQ(log, (std::vector<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(bytes_after_set, 0) << "an in-loop hand-off should not write the pipe";
}

TEST(WaitableEventAwait, PulseOnTheLoopReleasesEveryWaiter) {
  Scheduler s;
  WaitableEvent ev;
  std::vector<int> log;
  for (int id = 1; id <= 3; ++id)
    s.spawn(record_after_wait(ev, log, id));
  s.spawn([](WaitableEvent& ev) -> Task<void> {
    co_await coselect::yield_now();
    ev.set();
    ev.clear();
  }(ev));
  s.run_for(0ms);
  EXPECT_EQ(log, (std::vector<int>{1, 2, 3}));
  EXPECT_FALSE(ev.is_set());
}

TEST(WaitableEventAwait, PulseFromAnotherThreadWakesTheBlockedLoopAndReleasesAll) {
  Scheduler s;
  WaitableEvent ev;
  WaitableEvent all_released;
  std::vector<int> log;
  std::vector<std::thread::id> resumed_on;
  constexpr int kWaiters = 8;
  for (int id = 0; id < kWaiters; ++id) {
    s.spawn([](WaitableEvent& ev, WaitableEvent& all, std::vector<int>& log,
               std::vector<std::thread::id>& where, int id) -> Task<void> {
      co_await ev.wait();
      log.push_back(id);
      where.push_back(std::this_thread::get_id());
      if (log.size() == kWaiters) all.set();
    }(ev, all_released, log, resumed_on, id));
  }
  std::thread pulser;
  s.run([](WaitableEvent& ev, WaitableEvent& all, std::thread& pulser) -> Task<void> {
    co_await coselect::yield_now();  // the spawned waiters ran first and are waiting now
    // The loop sleeps in select() on the event's pipe while the thread pulses: the pulse must
    // release every waiter even though the event is clear again when the loop looks.
    pulser = std::thread([&ev] {
      ev.set();
      ev.clear();
    });
    co_await all.wait();
  }(ev, all_released, pulser));
  pulser.join();
  ASSERT_EQ(log.size(), static_cast<std::size_t>(kWaiters));
  for (int id = 0; id < kWaiters; ++id)
    EXPECT_EQ(log[id], id) << "FIFO";
  for (auto id : resumed_on)
    EXPECT_EQ(id, std::this_thread::get_id());
  EXPECT_FALSE(ev.is_set());
  EXPECT_EQ(pending_bytes(ev), 0) << "a cleared event must leave its pipe empty at rest";
}

TEST(WaitableEventAwait, WritesBeforeSetAreVisibleAfterResume) {
  Scheduler s;
  WaitableEvent ev;
  std::vector<int> data;  // plain memory: TSan checks the happens-before edge
  std::thread writer;
  const std::size_t seen = s.run(
      [](WaitableEvent& ev, std::vector<int>& data, std::thread& writer) -> Task<std::size_t> {
        writer = std::thread([&] {
          data.assign(1000, 7);
          ev.set();
        });
        co_await ev.wait();
        std::size_t sum = 0;
        for (int x : data)
          sum += static_cast<std::size_t>(x);
        co_return sum;
      }(ev, data, writer));
  writer.join();
  EXPECT_EQ(seen, 7000u);
}

TEST(WaitableEventAwait, TimeoutIsNeverEarlyAndSetWins) {
  Scheduler s;
  WaitableEvent ev;
  const auto start = std::chrono::steady_clock::now();
  const bool first =
      s.run([](WaitableEvent& ev) -> Task<bool> { co_return co_await ev.wait(30ms); }(ev));
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_FALSE(first);
  EXPECT_GE(took, 30ms);
  EXPECT_LT(took, 2s);
  std::thread setter;
  const bool second = s.run([](WaitableEvent& ev, std::thread& setter) -> Task<bool> {
    setter = std::thread([&ev] { ev.set(); });
    co_return co_await ev.wait(std::chrono::hours::max());  // huge: must not overflow
  }(ev, setter));
  setter.join();
  EXPECT_TRUE(second);
}

TEST(WaitableEventAwait, NonPositiveTimeoutPollsWithoutSuspending) {
  Scheduler s;
  WaitableEvent ev;
  std::vector<std::string> log;
  s.spawn([](WaitableEvent& ev, std::vector<std::string>& log) -> Task<void> {
    const bool a = co_await ev.wait(0ms);
    const bool b = co_await ev.wait(-5s);
    ev.set();
    const bool c = co_await ev.wait(std::chrono::duration<double>(-1.0));
    log.push_back(std::string(a ? "T" : "F") + (b ? "T" : "F") + (c ? "T" : "F"));
  }(ev, log));
  s.spawn([](std::vector<std::string>& log) -> Task<void> {
    log.push_back("other");
    co_return;
  }(log));
  s.run_for(0ms);
  EXPECT_EQ(log, (std::vector<std::string>{"FFT", "other"}));
}

TEST(WaitableEventAwait, SetAndTimeoutInTheSameTurnResumeOnce) {
  TimeMachine tm;
  Scheduler s(tm);
  WaitableEvent ev;
  int resumptions = 0;
  s.tasks().call_at(Scheduler::time_point(10s), [&] { ev.set(); });
  s.spawn([](WaitableEvent& ev, int& resumptions) -> Task<void> {
    (void)co_await ev.wait(10s);
    ++resumptions;
  }(ev, resumptions));
  s.run_for(1min);
  EXPECT_EQ(resumptions, 1);
}

TEST(WaitableEventAwait, VirtualTimeoutFiresAtItsDeadline) {
  TimeMachine tm;
  Scheduler s(tm);
  WaitableEvent ev;
  Scheduler::time_point when{};
  const bool got =
      s.run([](Scheduler& s, WaitableEvent& ev, Scheduler::time_point& when) -> Task<bool> {
        const bool r = co_await ev.wait(90s);
        when = s.now();
        co_return r;
      }(s, ev, when));
  EXPECT_FALSE(got);
  EXPECT_EQ(when, Scheduler::time_point(90s));
}

TEST(WaitableEventAwait, DestroyingTheEventCancelsItsCoroutineWaiters) {
  Scheduler s;
  auto ev = std::make_unique<WaitableEvent>();
  std::vector<std::string> outcomes;
  for (int i = 0; i < 3; ++i) {
    s.spawn([](WaitableEvent& ev, std::vector<std::string>& out, bool timed) -> Task<void> {
      try {
        if (timed) {
          (void)co_await ev.wait(1h);
        } else {
          co_await ev.wait();
        }
        out.push_back("released");
      } catch (const std::system_error& e) {
        out.push_back(e.code() == std::errc::operation_canceled ? "canceled" : "other error");
      }
    }(*ev, outcomes, i == 1));
  }
  s.spawn([](std::unique_ptr<WaitableEvent>& ev) -> Task<void> {
    co_await coselect::yield_now();
    ev.reset();  // on the loop thread, while three coroutines wait on it
  }(ev));
  s.run_for(100ms);
  EXPECT_EQ(outcomes, (std::vector<std::string>{"canceled", "canceled", "canceled"}));
}

TEST(WaitableEventAwait, DestroyingTheEventWhileItsSchedulerIdlesCancelsOnTheNextRun) {
  Scheduler s;
  auto ev = std::make_unique<WaitableEvent>();
  std::string outcome;
  s.spawn([](WaitableEvent& ev, std::string& out) -> Task<void> {
    try {
      co_await ev.wait();
      out = "released";
    } catch (const std::system_error& e) {
      out = e.code() == std::errc::operation_canceled ? "canceled" : "other";
    }
  }(*ev, outcome));
  s.run_for(0ms);
  ev.reset();  // the scheduler is not running
  s.run_for(0ms);
  EXPECT_EQ(outcome, "canceled");
}

TEST(WaitableEventAwait, AwaitingWithNoSchedulerThrowsLogicError) {
  WaitableEvent ev;
  std::string message;
  auto probe = [](WaitableEvent& ev, std::string& message) -> Task<void> {
    try {
      co_await ev.wait();
    } catch (const std::logic_error& e) {
      message = e.what();
    }
  }(ev, message);
  probe.handle().resume();  // driven by hand: no scheduler on this thread
  EXPECT_TRUE(probe.done());
  EXPECT_NE(message.find("Scheduler"), std::string::npos) << message;
}

TEST(WaitableEventAwait, APulseReleasesWaitersOfSeveralIdleSchedulers) {
  WaitableEvent ev;
  Scheduler a, b;  // a claims the event's built-in watch, b gets a watch of its own
  std::vector<int> log;
  a.spawn(record_after_wait(ev, log, 1));
  a.run_for(0ms);
  b.spawn(record_after_wait(ev, log, 2));
  b.run_for(0ms);
  ev.set();
  ev.clear();
  b.run_for(0ms);
  a.run_for(0ms);
  EXPECT_EQ(log, (std::vector<int>{2, 1}));
}

TEST(WaitableEventAwait, APulseFromAnotherThreadWakesASecondScheduler) {
  WaitableEvent ev;
  WaitableEvent b_done;
  Scheduler a, b;
  std::vector<int> log;
  a.spawn(record_after_wait(ev, log, 1));
  a.run_for(0ms);  // a owns the built-in watch and is idle
  b.spawn([](WaitableEvent& ev, WaitableEvent& done, std::vector<int>& log) -> Task<void> {
    co_await ev.wait();  // b sleeps in select() on the pipe until the pulse
    log.push_back(2);
    done.set();
  }(ev, b_done, log));
  std::thread pulser;
  b.run([](WaitableEvent& ev, WaitableEvent& done, std::thread& pulser) -> Task<void> {
    co_await coselect::yield_now();  // the spawned waiter ran first and is waiting now
    pulser = std::thread([&ev] {
      ev.set();
      ev.clear();
    });
    co_await done.wait();
  }(ev, b_done, pulser));
  pulser.join();
  a.run_for(0ms);
  EXPECT_EQ(log, (std::vector<int>{2, 1}));
}

// A loop keeps an event's built-in watch after its last waiter left (so that waiting again is
// cheap). That must not outlive the loop in any visible way, nor keep other loops from waiting.
TEST(WaitableEventAwait, AnEventOutlivesTheSchedulersThatWaitedOnIt) {
  WaitableEvent ev;
  std::vector<int> log;
  for (int round = 0; round < 3; ++round) {
    Scheduler s;
    s.spawn(record_after_wait(ev, log, round));
    s.run_for(0ms);
    ev.set();
    s.run_for(0ms);
    ev.clear();
  }
  EXPECT_EQ(log, (std::vector<int>{0, 1, 2}));
}

TEST(WaitableEventAwait, LoopsTakingTurnsOnOneEventAreAllReleased) {
  WaitableEvent ev;
  Scheduler a, b;
  std::vector<int> log;
  for (int round = 0; round < 4; ++round) {
    Scheduler& first = round % 2 == 0 ? a : b;
    Scheduler& second = round % 2 == 0 ? b : a;
    first.spawn(record_after_wait(ev, log, 10 * round + 1));
    first.run_for(0ms);
    second.spawn(record_after_wait(ev, log, 10 * round + 2));
    second.run_for(0ms);
    ev.set();
    ev.clear();
    first.run_for(0ms);
    second.run_for(0ms);
  }
  EXPECT_EQ(log, (std::vector<int>{1, 2, 11, 12, 21, 22, 31, 32}));
}

TEST(WaitableEventAwait, AnEventALoopOnAnotherThreadWaitedOnMayBeDestroyedHere) {
  auto ev = std::make_unique<WaitableEvent>();
  WaitableEvent released, destroyed;
  std::thread loop([&] {
    Scheduler s;
    s.run([](WaitableEvent& ev, WaitableEvent& released, WaitableEvent& destroyed) -> Task<void> {
      co_await ev.wait();
      released.set();
      co_await destroyed.wait();  // the loop lives on while the event goes
    }(*ev, released, destroyed));
  });
  ev->set();
  released.wait_blocking();
  ev.reset();
  destroyed.set();
  loop.join();
}

TEST(WaitableEventAwait, BroadcastReleasesTenThousandWaitersInOrder) {
  Scheduler s;
  WaitableEvent ev;
  std::vector<int> log;
  constexpr int kWaiters = 10'000;
  for (int id = 0; id < kWaiters; ++id)
    s.spawn(record_after_wait(ev, log, id));
  s.run_for(0ms);
  ev.set();
  s.run_for(0ms);
  ASSERT_EQ(log.size(), static_cast<std::size_t>(kWaiters));
  for (int id = 0; id < kWaiters; ++id)
    ASSERT_EQ(log[id], id);
}

TEST(WaitableEventAwait, ExportedFilenoIsReadableForAnFdWaiter) {
  Scheduler s;
  WaitableEvent ev;
  std::thread setter;
  const bool woke = s.run([](WaitableEvent& ev, std::thread& setter) -> Task<bool> {
    setter = std::thread([&ev] { ev.set(); });
    co_return co_await coselect::readable(ev.fileno(), 10s);
  }(ev, setter));
  setter.join();
  EXPECT_TRUE(woke);
}

// Threads hammer set/clear while coroutines wait with timeouts in loops: nothing hangs, nothing
// is lost, and at rest the pipe is readable exactly when the event is set.
TEST(WaitableEventAwait, StressCrossThreadSetClearAgainstCoroutineWaiters) {
  Scheduler s;
  WaitableEvent ev;
  std::atomic<bool> done{false};
  constexpr int kThreads = 3;
  std::vector<std::thread> hammers;
  for (int t = 0; t < kThreads; ++t) {
    hammers.emplace_back([&, t] {
      unsigned x = 12345u + static_cast<unsigned>(t);
      while (!done.load()) {
        x = x * 1103515245u + 12345u;
        if ((x >> 16) % 3 == 0) {
          ev.clear();
        } else {
          ev.set();
        }
      }
    });
  }
  std::vector<Task<void>> waiters;
  for (int w = 0; w < 8; ++w) {
    waiters.push_back([](WaitableEvent& ev) -> Task<void> {
      for (int i = 0; i < 2000; ++i)
        (void)co_await ev.wait(1ms);
    }(ev));
  }
  s.run(coselect::when_all(std::move(waiters)));  // finishes: no wait can hang
  done = true;
  for (auto& t : hammers)
    t.join();
  ev.clear();
  EXPECT_EQ(pending_bytes(ev), 0);
  ev.set();
  EXPECT_TRUE(coselect_test::readable_now(ev.fileno()));
}

}  // namespace coro
