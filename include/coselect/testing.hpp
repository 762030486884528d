// coselect/testing.hpp — GoogleTest helpers for tests whose body is a coroutine, on virtual time.
//
// Not part of <coselect.hpp> (it needs GoogleTest). Include it from test files only:
//
//   #include <coselect/testing.hpp>
//
//   COSELECT_TEST(Retry, GivesUpAfterTenMinutes) {   // a coroutine body: co_await works here
//     int attempts = 0;
//     ...
//     co_await coselect::sleep_for(std::chrono::minutes(10));   // takes microseconds
//     CO_ASSERT_EQ(attempts, 20);                              // ASSERT_* would not compile
//   }
//
// Inside the body, `scheduler` (coselect::Scheduler&) and `time_machine` (coselect::TimeMachine&)
// are in scope. The scheduler runs on virtual time starting at the system clock's epoch, so the
// test is deterministic and hour-long waits finish at once. An exception escaping the body fails
// the test with its message. EXPECT_* works as usual; use CO_ASSERT_* where you would use
// ASSERT_*: GoogleTest's ASSERT_* expand to `return`, which a coroutine may not use.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <exception>
#include <string>
#include <utility>

#include "../coselect.hpp"

namespace coselect::testing {

// Runs body(scheduler, time_machine) -> Task<void> to completion on a fresh virtual-time
// scheduler that pretends to start at `start`. Exceptions become test failures; frames the
// body spawned are destroyed with the scheduler before this returns.
template <class Body>
void run_virtual(Body&& body, std::chrono::system_clock::time_point start = {}) {
  TimeMachine machine(start);
  Scheduler scheduler(machine);
  try {
    scheduler.run(std::forward<Body>(body)(scheduler, machine));
  } catch (const std::exception& e) {
    ADD_FAILURE() << "coroutine test body threw: " << e.what();
  } catch (...) {
    ADD_FAILURE() << "coroutine test body threw a non-std exception";
  }
}

// The same on the real clock, for tests that need real threads or real fds to take their time.
template <class Body>
void run_real(Body&& body) {
  Scheduler scheduler;
  try {
    scheduler.run(std::forward<Body>(body)(scheduler));
  } catch (const std::exception& e) {
    ADD_FAILURE() << "coroutine test body threw: " << e.what();
  } catch (...) {
    ADD_FAILURE() << "coroutine test body threw a non-std exception";
  }
}

}  // namespace coselect::testing

// What a failed CO_ASSERT_* does: report a fatal failure and leave the coroutine.
#define COSELECT_CO_FATAL_FAILURE_(message) \
  co_return GTEST_MESSAGE_(message, ::testing::TestPartResult::kFatalFailure)

#define CO_ASSERT_TRUE(condition) \
  GTEST_TEST_BOOLEAN_(condition, #condition, false, true, COSELECT_CO_FATAL_FAILURE_)
#define CO_ASSERT_FALSE(condition) \
  GTEST_TEST_BOOLEAN_(!(condition), #condition, true, false, COSELECT_CO_FATAL_FAILURE_)
#define CO_ASSERT_EQ(a, b) \
  GTEST_PRED_FORMAT2_(::testing::internal::EqHelper::Compare, a, b, COSELECT_CO_FATAL_FAILURE_)
#define CO_ASSERT_NE(a, b) \
  GTEST_PRED_FORMAT2_(::testing::internal::CmpHelperNE, a, b, COSELECT_CO_FATAL_FAILURE_)
#define CO_ASSERT_LT(a, b) \
  GTEST_PRED_FORMAT2_(::testing::internal::CmpHelperLT, a, b, COSELECT_CO_FATAL_FAILURE_)
#define CO_ASSERT_LE(a, b) \
  GTEST_PRED_FORMAT2_(::testing::internal::CmpHelperLE, a, b, COSELECT_CO_FATAL_FAILURE_)
#define CO_ASSERT_GT(a, b) \
  GTEST_PRED_FORMAT2_(::testing::internal::CmpHelperGT, a, b, COSELECT_CO_FATAL_FAILURE_)
#define CO_ASSERT_GE(a, b) \
  GTEST_PRED_FORMAT2_(::testing::internal::CmpHelperGE, a, b, COSELECT_CO_FATAL_FAILURE_)

// COSELECT_TEST(Suite, Name) { ...coroutine body... }: a GoogleTest test whose body runs as a
// coroutine on a virtual-time Scheduler (see run_virtual).
#define COSELECT_TEST(suite, name)                                              \
  static ::coselect::Task<void> coselect_body_##suite##_##name(                 \
      ::coselect::Scheduler& scheduler, ::coselect::TimeMachine& time_machine); \
  TEST(suite, name) {                                                           \
    ::coselect::testing::run_virtual(&coselect_body_##suite##_##name);          \
  }                                                                             \
  static ::coselect::Task<void> coselect_body_##suite##_##name(                 \
      [[maybe_unused]] ::coselect::Scheduler& scheduler,                        \
      [[maybe_unused]] ::coselect::TimeMachine& time_machine)
