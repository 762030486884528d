// GoogleTest main for every coselect test executable, with a per-test hang guard.
//
// Why: coselect is about blocking, waking and event loops, so its typical bug is not a failed
// assertion but a test that never returns (a lost wake-up, a loop that never stops). ctest's
// TIMEOUT would eventually kill such a process, but only after a long time and without saying
// which test hung. The guard arms a deadline when each test starts and disarms it when the test
// ends; if the deadline passes, it prints "HANG: <suite>.<test> exceeded N s" and exits with
// status 124 (timeout(1)'s code) at once.
//
// Deadline: COSELECT_TEST_TIMEOUT_SECONDS (default 60; 0 turns the guard off), multiplied by 3
// when built with AddressSanitizer or ThreadSanitizer, which make everything slower.
//
// Backend: COSELECT_TEST_BACKEND=select|poll|epoll makes every Scheduler that a test builds
// without naming a backend use that one, so that CI runs the whole suite once per backend.

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

#include <coselect/backend.hpp>
#include <coselect/detail/reactors.hpp>
#include "sanitizers.hpp"

namespace {

using coselect_test::kSanitized;

long timeout_seconds() {
  long seconds = 60;
  if (const char* env = std::getenv("COSELECT_TEST_TIMEOUT_SECONDS"); env && *env) {
    char* end = nullptr;
    const long value = std::strtol(env, &end, 10);
    if (*end == '\0' && value >= 0) seconds = value;
  }
  return kSanitized ? seconds * 3 : seconds;
}

class HangGuard : public testing::EmptyTestEventListener {
 public:
  explicit HangGuard(long seconds) : seconds_(seconds) {}

  void OnTestProgramStart(const testing::UnitTest&) override {
    watchdog_ = std::thread([this] { watch(); });
  }

  void OnTestProgramEnd(const testing::UnitTest&) override {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_one();
    if (watchdog_.joinable()) watchdog_.join();
  }

  void OnTestStart(const testing::TestInfo& info) override {
    {
      std::lock_guard lock(mutex_);
      // Built now, so that the watchdog only has to write(2) it: no allocation, no stdio.
      message_ = std::string("HANG: ") + info.test_suite_name() + "." + info.name() + " exceeded " +
                 std::to_string(seconds_) + " s\n";
      deadline_ = std::chrono::steady_clock::now() + std::chrono::seconds(seconds_);
      armed_ = true;
    }
    cv_.notify_one();
  }

  void OnTestEnd(const testing::TestInfo&) override {
    {
      std::lock_guard lock(mutex_);
      armed_ = false;
    }
    cv_.notify_one();
  }

 private:
  void watch() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      if (!armed_) {
        cv_.wait(lock);
      } else if (cv_.wait_until(lock, deadline_) == std::cv_status::timeout && armed_ &&
                 std::chrono::steady_clock::now() >= deadline_) {
        // The test thread may hold any lock (even stdio's or malloc's): write(2) and _Exit only.
        [[maybe_unused]] auto written = ::write(STDERR_FILENO, message_.data(), message_.size());
        std::_Exit(124);
      }
    }
  }

  const long seconds_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::thread watchdog_;
  std::string message_;
  std::chrono::steady_clock::time_point deadline_;
  bool armed_ = false;
  bool stopping_ = false;
};

// Applies COSELECT_TEST_BACKEND; an unknown or unavailable name is an error, not a silent select.
bool choose_backend() {
  const char* env = std::getenv("COSELECT_TEST_BACKEND");
  if (env == nullptr || *env == '\0') return true;
  const auto backend = coselect::backend_from_string(env);
  if (!backend || !coselect::backend_available(*backend)) {
    std::fprintf(stderr, "COSELECT_TEST_BACKEND=%s: not a backend of this platform\n", env);
    return false;
  }
  coselect::detail::use_default_backend(*backend);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  // Death tests fork; with the watchdog (and coselect's own) threads alive, re-exec instead.
  // --gtest_death_test_style=fast still overrides this.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  testing::InitGoogleTest(&argc, argv);
  if (!choose_backend()) return 2;
  if (const long seconds = timeout_seconds(); seconds > 0) {
    // Owned (and deleted) by GoogleTest.
    testing::UnitTest::GetInstance()->listeners().Append(new HangGuard(seconds));
  }
  return RUN_ALL_TESTS();
}
