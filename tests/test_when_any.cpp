// Tests of when_any (DESIGN.md §8).
//
// Sections
//   1. Variadic form: the winner's value and index, void children, the winner's exception
//   2. Losers: stopped, awaited to their end (also one that ignores the stop for a while),
//      their outcomes dropped; nothing leaks
//   3. The caller's stop reaches every child
//   4. Range form: std::vector, range-v3 views, lvalue ranges, void, the empty range
//
// Virtual time (TimeMachine) decides who finishes first. Coroutines only record; assertions
// follow run().

#include <chrono>
#include <cstddef>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <gtest/gtest.h>
#include <coselect.hpp>
#include <range/v3/view/transform.hpp>
#include "support/fixtures.hpp"

namespace {

using namespace std::chrono_literals;
using coselect::Scheduler;
using coselect::sleep_for;
using coselect::Task;
using coselect::when_any;
using coselect_test::FrameProbe;

using coselect_test::nothing_after;
using coselect_test::Tally;
using coselect_test::value_after;
using coselect_test::VirtualLoop;

Task<int> fails_after(Scheduler::duration d, const char* what) {
  co_await sleep_for(d);
  throw std::runtime_error(what);
}

// =================================================================================================
// 1. Variadic form
// =================================================================================================

TEST(WhenAny, WinnersValueAndIndex) {
  VirtualLoop loop;
  Tally tally;
  auto any = when_any(value_after(3h, 1, tally), value_after(1h, std::string("two"), tally),
                      value_after(2h, 3.5, tally));
  static_assert(std::is_same_v<decltype(any), Task<std::variant<int, std::string, double>>>);
  const auto result = loop.s.run(std::move(any));
  ASSERT_EQ(result.index(), 1u);
  EXPECT_EQ(std::get<1>(result), "two");
  EXPECT_EQ(tally.finished, 1);
  EXPECT_EQ(tally.canceled, 2);
  EXPECT_EQ(loop.elapsed(), 1h) << "the losers were not stopped";
}

TEST(WhenAny, SameTypesKeepTheirIndex) {
  VirtualLoop loop;
  Tally tally;
  const auto result = loop.s.run(when_any(value_after(2h, 10, tally), value_after(1h, 20, tally)));
  EXPECT_EQ(result.index(), 1u);
  EXPECT_EQ(std::get<1>(result), 20);
}

TEST(WhenAny, AllVoid) {
  VirtualLoop loop;
  Tally tally;
  auto any = when_any(nothing_after(2h, tally), nothing_after(1h, tally), nothing_after(3h, tally));
  static_assert(std::is_same_v<decltype(any),
                               Task<std::variant<std::monostate, std::monostate, std::monostate>>>);
  EXPECT_EQ(loop.s.run(std::move(any)).index(), 1u);
  EXPECT_EQ(tally.finished, 1);
  EXPECT_EQ(tally.canceled, 2);
}

TEST(WhenAny, WinnerThrowsItsExceptionIsRethrownAfterTheLosersEnded) {
  VirtualLoop loop;
  Tally tally;
  EXPECT_THROW(loop.s.run(when_any(value_after(2h, 1, tally), fails_after(1h, "first"))),
               std::runtime_error);
  EXPECT_EQ(tally.canceled, 1);
  EXPECT_EQ(loop.elapsed(), 1h);
}

TEST(WhenAny, SynchronousChildWinsAndTheOthersStartStopped) {
  VirtualLoop loop;
  Tally tally;
  auto now = []() -> Task<int> { co_return 0; };
  const auto result = loop.s.run(when_any(now(), value_after(1h, 1, tally)));
  EXPECT_EQ(result.index(), 0u);
  EXPECT_EQ(tally.canceled, 1);
  EXPECT_EQ(loop.elapsed(), 0s);
}

// =================================================================================================
// 2. Losers
// =================================================================================================

// A loser that ignores the stop for a while: when_any waits for it (no orphans), and still
// returns the winner's value; the loser's later value is dropped.
TEST(WhenAny, LoserIgnoringTheStopIsAwaitedToItsEnd) {
  VirtualLoop loop;
  Tally tally;
  bool loser_ended = false;
  auto stubborn = [&]() -> Task<int> {
    loser_ended = co_await coselect_test::wind_down_slowly(1h, 30min);
    co_return 99;
  };
  auto main = [&]() -> Task<bool> {
    auto r = co_await when_any(stubborn(), value_after(10min, 1, tally));
    co_return r.index() == 1 && std::get<1>(r) == 1 && loser_ended;
  };
  EXPECT_TRUE(loop.s.run(main()));
  EXPECT_EQ(loop.elapsed(), 40min);
}

TEST(WhenAny, LosersFailuresAreDropped) {
  VirtualLoop loop;
  Tally tally;
  auto fails_when_stopped = []() -> Task<int> {
    try {
      co_await sleep_for(1h);
    } catch (const std::system_error&) {
      throw std::logic_error("loser failed while stopping");
    }
    co_return 0;
  };
  const auto result = loop.s.run(when_any(fails_when_stopped(), value_after(1s, 5, tally)));
  EXPECT_EQ(std::get<1>(result), 5);
}

TEST(WhenAny, EveryChildFrameIsDestroyed) {
  VirtualLoop loop;
  int destroyed = 0;
  auto child = [&](Scheduler::duration d) -> Task<int> {
    FrameProbe probe{destroyed};
    co_await sleep_for(d);
    co_return 1;
  };
  loop.s.run(when_any(child(1h), child(2h), child(3h)));
  EXPECT_EQ(destroyed, 3);
}

// =================================================================================================
// 3. The caller's stop reaches every child
// =================================================================================================

TEST(WhenAny, CallersStopReachesEveryChild) {
  VirtualLoop loop;
  Tally tally;
  bool canceled = false;
  auto body = [&]() -> Task<void> {
    try {
      co_await when_any(value_after(1h, 1, tally), value_after(2h, 2, tally));
    } catch (const std::system_error& e) {
      canceled = e.code() == std::errc::operation_canceled;
    }
  };
  auto main = [&]() -> Task<void> {
    coselect::JoinHandle h = loop.s.spawn(body());
    co_await sleep_for(1min);
    h.cancel();
    co_await h.join();
  };
  loop.s.run(main());
  EXPECT_TRUE(canceled) << "the first child to end (cancelled) won";
  EXPECT_EQ(tally.canceled, 2);
  EXPECT_EQ(loop.elapsed(), 1min);
}

// =================================================================================================
// 4. Range form
// =================================================================================================

TEST(WhenAnyRange, VectorYieldsIndexAndValue) {
  VirtualLoop loop;
  Tally tally;
  std::vector<Task<int>> tasks;
  for (int i = 0; i < 5; ++i)
    tasks.push_back(value_after(std::chrono::hours(i == 3 ? 1 : 5), i * 10, tally));
  auto any = when_any(std::move(tasks));
  static_assert(std::is_same_v<decltype(any), Task<std::pair<std::size_t, int>>>);
  const auto [index, value] = loop.s.run(std::move(any));
  EXPECT_EQ(index, 3u);
  EXPECT_EQ(value, 30);
  EXPECT_EQ(tally.canceled, 4);
}

TEST(WhenAnyRange, VoidYieldsTheIndex) {
  VirtualLoop loop;
  Tally tally;
  std::vector<Task<void>> tasks;
  tasks.push_back(nothing_after(2h, tally));
  tasks.push_back(nothing_after(1h, tally));
  auto any = when_any(std::move(tasks));
  static_assert(std::is_same_v<decltype(any), Task<std::size_t>>);
  EXPECT_EQ(loop.s.run(std::move(any)), 1u);
}

TEST(WhenAnyRange, EmptyRangeThrowsInvalidArgument) {
  EXPECT_THROW((void)when_any(std::vector<Task<int>>{}), std::invalid_argument);
  EXPECT_THROW((void)when_any(std::vector<Task<void>>{}), std::invalid_argument);
}

TEST(WhenAnyRange, LvalueRangeIsMovedFrom) {
  VirtualLoop loop;
  Tally tally;
  std::vector<Task<int>> tasks;
  tasks.push_back(value_after(1h, 1, tally));
  tasks.push_back(value_after(2h, 2, tally));
  auto any = when_any(tasks);
  EXPECT_FALSE(tasks[0].valid());
  EXPECT_FALSE(tasks[1].valid());
  EXPECT_EQ(loop.s.run(std::move(any)).second, 1);
}

TEST(WhenAnyRange, RangeV3TransformView) {
  VirtualLoop loop;
  Tally tally;
  const std::vector<int> ids{4, 2, 7};
  auto fetch = [&tally](int id) { return value_after(std::chrono::minutes(id), id * 100, tally); };
  const auto [index, value] = loop.s.run(when_any(ids | ranges::views::transform(fetch)));
  EXPECT_EQ(index, 1u);
  EXPECT_EQ(value, 200);
  EXPECT_EQ(tally.canceled, 2);
}

TEST(WhenAllRange, RangeV3TransformView) {
  VirtualLoop loop;
  Tally tally;
  const std::vector<int> ids{3, 1, 2};
  auto fetch = [&tally](int id) { return value_after(std::chrono::minutes(id), id * 100, tally); };
  EXPECT_EQ(loop.s.run(coselect::when_all(ids | ranges::views::transform(fetch))),
            (std::vector<int>{300, 100, 200}));
  EXPECT_EQ(loop.elapsed(), 3min);
}

}  // namespace
