// Tests of TaskGroup (DESIGN.md §8): join waits for every child; a failure stops the others
// and is rethrown once all have ended; cancel(); a cancelled join; early destruction.
//
// Virtual time (TimeMachine) orders the children. Coroutines only record; assertions follow
// run().

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <coselect.hpp>
#include "support/fixtures.hpp"
#include "support/sanitizers.hpp"

namespace {

using namespace std::chrono_literals;
using coselect::Scheduler;
using coselect::sleep_for;
using coselect::Task;
using coselect::TaskGroup;

using coselect_test::Tally;
using coselect_test::VirtualLoop;

Task<void> worker(Scheduler::duration d, Tally& tally) {
  return coselect_test::nothing_after(d, tally);
}

Task<void> fails_after(Scheduler::duration d, std::string what) {
  co_await sleep_for(d);
  throw std::runtime_error(what);
}

// Runs `body` and returns what it threw, as text ("" if nothing, "canceled" for
// operation_canceled).
template <class Body>
std::string outcome_of(Scheduler& s, Body body) {
  std::string outcome;
  auto main = [&]() -> Task<void> {
    try {
      co_await body();
    } catch (const std::system_error& e) {
      outcome = e.code() == std::errc::operation_canceled ? "canceled" : e.what();
    } catch (const std::exception& e) {
      outcome = e.what();
    }
  };
  s.run(main());
  return outcome;
}

TEST(TaskGroup, JoinWaitsForEveryChild) {
  VirtualLoop loop;
  Tally tally;
  auto body = [&]() -> Task<void> {
    TaskGroup g;
    g.spawn(worker(1h, tally));
    g.spawn(worker(3h, tally));
    g.spawn(worker(2h, tally));
    co_await g.join();
  };
  EXPECT_EQ(outcome_of(loop.s, body), "");
  EXPECT_EQ(tally.finished, 3);
  EXPECT_EQ(loop.elapsed(), 3h);
}

TEST(TaskGroup, FirstFailureStopsTheOthersAndIsRethrownOnceAllEnded) {
  VirtualLoop loop;
  Tally tally;
  bool sibling_ended_before_join = false;
  auto slow_to_stop = [&]() -> Task<void> {
    sibling_ended_before_join = co_await coselect_test::wind_down_slowly(10h, 30min);
  };
  auto body = [&]() -> Task<void> {
    TaskGroup g;
    g.spawn(worker(5h, tally));
    g.spawn(fails_after(1h, "first"));
    g.spawn(fails_after(2h, "second"));
    g.spawn(slow_to_stop());
    co_await g.join();
  };
  EXPECT_EQ(outcome_of(loop.s, body), "first");
  EXPECT_EQ(tally.canceled, 1);
  EXPECT_TRUE(sibling_ended_before_join);
  EXPECT_EQ(loop.elapsed(), 1h + 30min);
}

TEST(TaskGroup, ChildrensFailuresDoNotReachTheScheduler) {
  VirtualLoop loop;
  int handled = 0;
  loop.s.set_exception_handler([&](std::exception_ptr) { ++handled; });
  auto body = [&]() -> Task<void> {
    TaskGroup g;
    g.spawn(fails_after(1h, "a"));
    g.spawn(fails_after(1h, "b"));
    co_await g.join();
  };
  EXPECT_EQ(outcome_of(loop.s, body), "a");
  EXPECT_EQ(handled, 0);
}

TEST(TaskGroup, CancelStopsEveryChildAndIsNotAFailure) {
  VirtualLoop loop;
  Tally tally;
  auto body = [&]() -> Task<void> {
    TaskGroup g;
    g.spawn(worker(1h, tally));
    g.spawn(worker(2h, tally));
    co_await sleep_for(10min);
    g.cancel();
    g.spawn(worker(1h, tally));  // starts already stopped
    co_await g.join();
  };
  EXPECT_EQ(outcome_of(loop.s, body), "");
  EXPECT_EQ(tally.canceled, 3);
  EXPECT_EQ(tally.finished, 0);
  EXPECT_EQ(loop.elapsed(), 10min);
}

TEST(TaskGroup, ChildrenRunUnderTheGroupsTokenNotTheSpawners) {
  VirtualLoop loop;
  std::stop_source spawner;
  Tally tally;
  auto body = [&]() -> Task<void> {
    TaskGroup g;
    g.spawn(worker(1h, tally));
    spawner.request_stop();  // the spawner's token: the child does not see it
    co_await coselect_test::sleep_ignoring_stop(2h);
    co_await g.join();  // no child running: completes at once
  };
  EXPECT_EQ(
      outcome_of(loop.s, [&] { return coselect::with_stop_token(spawner.get_token(), body()); }),
      "");
  EXPECT_EQ(tally.finished, 1);
  EXPECT_EQ(tally.canceled, 0);
}

// The joining task is cancelled: join stops every child, waits for all, then throws.
TEST(TaskGroup, CancelledJoinStopsChildrenWaitsThenThrows) {
  VirtualLoop loop;
  Tally tally;
  bool stubborn_ended = false;
  auto stubborn = [&]() -> Task<void> {
    stubborn_ended = co_await coselect_test::wind_down_slowly(10h, 1h);
  };
  std::string outcome;
  auto body = [&]() -> Task<void> {
    TaskGroup g;
    g.spawn(worker(5h, tally));
    g.spawn(stubborn());
    try {
      co_await g.join();
    } catch (const std::system_error& e) {
      outcome = stubborn_ended && e.code() == std::errc::operation_canceled ? "canceled after"
                                                                            : "too early";
    }
  };
  auto main = [&]() -> Task<void> {
    coselect::JoinHandle h = loop.s.spawn(body());
    co_await sleep_for(1min);
    h.cancel();
    co_await h.join();
  };
  loop.s.run(main());
  EXPECT_EQ(outcome, "canceled after");
  EXPECT_EQ(tally.canceled, 1);
  EXPECT_EQ(loop.elapsed(), 1h + 1min);
}

// A stop that reaches join before it begins also stops the children first; a failure
// outranks the cancellation.
TEST(TaskGroup, StopBeforeJoinAndFailureOutranksCancellation) {
  VirtualLoop loop;
  Tally tally;
  std::stop_source stop;
  stop.request_stop();
  auto body = [&]() -> Task<void> {
    TaskGroup g;
    g.spawn(worker(1h, tally));
    co_await coselect::with_stop_token(stop.get_token(), g.join());
  };
  EXPECT_EQ(outcome_of(loop.s, body), "canceled");
  EXPECT_EQ(tally.canceled, 1);

  auto failing = [&]() -> Task<void> {
    TaskGroup g;
    g.spawn([]() -> Task<void> {
      try {
        co_await sleep_for(1h);
      } catch (const std::system_error&) {
        throw std::runtime_error("failed while stopping");
      }
    }());
    co_await coselect::with_stop_token(stop.get_token(), g.join());
  };
  EXPECT_EQ(outcome_of(loop.s, failing), "failed while stopping");
}

TEST(TaskGroup, JoinWithNoChildRunningCompletesAtOnceRethrowingARecordedFailure) {
  VirtualLoop loop;
  std::stop_source stop;
  stop.request_stop();
  auto empty = [&]() -> Task<void> {
    TaskGroup g;
    co_await coselect::with_stop_token(stop.get_token(), g.join());  // no child: no throw
  };
  EXPECT_EQ(outcome_of(loop.s, empty), "");
  auto recorded = [&]() -> Task<void> {
    TaskGroup g;
    g.spawn(fails_after(1h, "recorded"));
    co_await sleep_for(2h);
    co_await g.join();
  };
  EXPECT_EQ(outcome_of(loop.s, recorded), "recorded");
}

// Destroying a group whose children run stops them; they stay with the scheduler until they
// end, and a failure other than that stop then follows the scheduler's policy.
TEST(TaskGroup, EarlyDestructionStopsChildrenWhichStayWithTheScheduler) {
  VirtualLoop loop;
  Tally tally;
  int destroyed = 0;
  std::vector<std::string> failures;
  loop.s.set_exception_handler([&](std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      failures.emplace_back(x.what());
    }
  });
  auto lingering = [&]() -> Task<void> {
    coselect_test::FrameProbe probe{destroyed};
    co_await coselect_test::wind_down_slowly(10h, 1h);
    throw std::runtime_error("after the group");
  };
  auto body = [&]() -> Task<void> {
    TaskGroup g;
    g.spawn(worker(5h, tally));
    g.spawn(lingering());
    co_await sleep_for(1min);
  };  // g is destroyed here, its children running
  loop.s.run(body());
  EXPECT_EQ(destroyed, 0);
  loop.s.run_for(2h);
  EXPECT_EQ(tally.canceled, 1);
  EXPECT_EQ(destroyed, 1);
  EXPECT_EQ(failures, std::vector<std::string>{"after the group"});
}

// The joining task cancelled from another thread, racing the last child's end (a set() from a
// third thread): join resumes once, on the loop thread, after the child has ended, either
// normally or with operation_canceled.
TEST(TaskGroup, JoinCancelledFromAnotherThreadRacingTheLastChild) {
  const int rounds = coselect_test::kSanitized ? 50 : 250;
  Scheduler s;
  int normal = 0;
  for (int i = 0; i < rounds; ++i) {
    coselect::WaitableEvent go;
    bool child_ended = false;
    int resumed = 0;
    std::string outcome;
    std::thread canceller;
    std::thread setter;
    auto body = [&]() -> Task<void> {
      TaskGroup g;
      g.spawn([](coselect::WaitableEvent& go, bool& ended) -> Task<void> {
        try {
          co_await go.wait();
        } catch (...) {
        }
        ended = true;
      }(go, child_ended));
      try {
        co_await g.join();
      } catch (const std::system_error& e) {
        outcome = e.code() == std::errc::operation_canceled ? "canceled" : e.what();
      }
      ++resumed;
      if (!child_ended) outcome = "join ended before its child";
    };
    auto main = [&]() -> Task<void> {
      coselect::JoinHandle h = s.spawn(body());
      co_await coselect::yield_now();
      co_await coselect::yield_now();
      canceller = std::thread([h]() mutable { h.cancel(); });
      setter = std::thread([&go] { go.set(); });
      co_await h.join();
    };
    s.run(main());
    canceller.join();
    setter.join();
    ASSERT_EQ(resumed, 1) << "round " << i;
    ASSERT_TRUE(outcome.empty() || outcome == "canceled") << outcome;
    normal += outcome.empty() ? 1 : 0;
  }
  RecordProperty("normal", normal);
}

TEST(TaskGroup, NeedsAScheduler) {
  EXPECT_THROW(TaskGroup{}, std::logic_error);
}

TEST(TaskGroup, ManyChildrenAcrossThreads) {
  Scheduler s;
  std::atomic<int> ran{0};
  auto body = [&]() -> Task<void> {
    TaskGroup g;
    for (int i = 0; i < 50; ++i)
      g.spawn([](std::atomic<int>& ran) -> Task<void> {
        co_await coselect::run_in_thread([&ran] { ++ran; });
      }(ran));
    co_await g.join();
  };
  EXPECT_EQ(outcome_of(s, body), "");
  EXPECT_EQ(ran, 50);
}

}  // namespace
