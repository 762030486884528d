// coselect/testing.hpp: coroutine test bodies on virtual time, and CO_ASSERT_*.
#include <gtest/gtest-spi.h>
#include <coselect/testing.hpp>

#include <chrono>
#include <stdexcept>

namespace {

using namespace std::chrono_literals;
using coselect::Scheduler;
using coselect::Task;
using coselect::TimeMachine;

COSELECT_TEST(CoselectTest, BodyIsACoroutineOnVirtualTime) {
  CO_ASSERT_TRUE(scheduler.is_virtual_time());
  CO_ASSERT_EQ(scheduler.now(), time_machine.now());
  co_await coselect::sleep_for(24h);
  CO_ASSERT_EQ(scheduler.now(), Scheduler::time_point(24h));
  EXPECT_EQ(Scheduler::current(), &scheduler);
}

COSELECT_TEST(CoselectTest, EveryAssertionFormPasses) {
  int three = co_await [](int x) -> Task<int> { co_return x; }(3);
  CO_ASSERT_TRUE(three == 3);
  CO_ASSERT_FALSE(three == 4);
  CO_ASSERT_EQ(three, 3);
  CO_ASSERT_NE(three, 4);
  CO_ASSERT_LT(three, 4);
  CO_ASSERT_LE(three, 3);
  CO_ASSERT_GT(three, 2);
  CO_ASSERT_GE(three, 3);
}

// Runs `body` with GoogleTest's failure reporting intercepted, and returns what it reported.
template <class Body>
void collect_failures(::testing::TestPartResultArray& results, Body body) {
  ::testing::ScopedFakeTestPartResultReporter reporter(
      ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &results);
  coselect::testing::run_virtual(body);
}

TEST(CoselectTestHelpers, FailedCoAssertFailsTheTestAndLeavesTheBody) {
  bool continued = false;
  ::testing::TestPartResultArray results;
  collect_failures(results, [&](Scheduler&, TimeMachine&) -> Task<void> {
    co_await coselect::sleep_for(1s);
    CO_ASSERT_EQ(1 + 1, 3) << "arithmetic";
    continued = true;
  });
  ASSERT_EQ(results.size(), 1);
  EXPECT_TRUE(results.GetTestPartResult(0).fatally_failed());
  EXPECT_NE(std::string(results.GetTestPartResult(0).message()).find("arithmetic"),
            std::string::npos);
  EXPECT_FALSE(continued);
}

TEST(CoselectTestHelpers, EachFailingFormReports) {
  ::testing::TestPartResultArray results;
  collect_failures(results, [](Scheduler&, TimeMachine&) -> Task<void> {
    // Each form fails and leaves its coroutine, so exactly one failure per call.
    auto forms = [](int which) -> Task<void> {
      if (which == 0) {
        CO_ASSERT_TRUE(false);
      }
      if (which == 1) {
        CO_ASSERT_FALSE(true);
      }
      if (which == 2) {
        CO_ASSERT_NE(1, 1);
      }
      if (which == 3) {
        CO_ASSERT_LT(2, 1);
      }
      if (which == 4) {
        CO_ASSERT_LE(2, 1);
      }
      if (which == 5) {
        CO_ASSERT_GT(1, 2);
      }
      CO_ASSERT_GE(1, 2);
    };
    for (int i = 0; i < 7; ++i)
      co_await forms(i);
  });
  EXPECT_EQ(results.size(), 7);
}

TEST(CoselectTestHelpers, AnEscapingExceptionFailsTheTestWithItsMessage) {
  ::testing::TestPartResultArray results;
  collect_failures(results, [](Scheduler&, TimeMachine&) -> Task<void> {
    co_await coselect::yield_now();
    throw std::runtime_error("the reason");
  });
  ASSERT_EQ(results.size(), 1);
  EXPECT_NE(std::string(results.GetTestPartResult(0).message()).find("the reason"),
            std::string::npos);
}

TEST(CoselectTestHelpers, StartTimeIsConfigurable) {
  Scheduler::time_point seen{};
  coselect::testing::run_virtual(
      [&](Scheduler& s, TimeMachine&) -> Task<void> {
        seen = s.now();
        co_return;
      },
      std::chrono::system_clock::time_point(90min));
  EXPECT_EQ(seen, Scheduler::time_point(90min));
}

TEST(CoselectTestHelpers, RunRealUsesTheSteadyClock) {
  bool was_virtual = true;
  coselect::testing::run_real([&](Scheduler& s) -> Task<void> {
    was_virtual = s.is_virtual_time();
    co_await coselect::sleep_for(1ms);
  });
  EXPECT_FALSE(was_virtual);
}

}  // namespace
