// Test support: small objects the tests share — counters of objects alive in coroutine frames,
// a pipe that stays silent until the test writes to it, and run_all(), which runs a few
// coroutines on a scheduler to their end under a watchdog.
#pragma once

#include <atomic>
#include <cerrno>
#include <chrono>
#include <concepts>
#include <coroutine>
#include <cstddef>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <coselect.hpp>
#include "portable.hpp"

namespace coselect_test {

// Counts the objects of one kind that are alive (constructed, not yet destroyed). Atomic, so
// that frames destroyed on another thread count too.
struct LifeCount {
  std::atomic<int> constructed{0};
  std::atomic<int> destroyed{0};
  int alive() const { return constructed.load() - destroyed.load(); }
};

// Counts destroyed coroutine frames: put one in a frame, and its destructor runs with the frame.
struct FrameProbe {
  int& destroyed;
  ~FrameProbe() { ++destroyed; }
};

// A local (or parameter) kept in a coroutine frame: its destructor runs when the frame dies.
class Tracked {
 public:
  explicit Tracked(LifeCount& count) : count_(&count) { ++count_->constructed; }
  Tracked(Tracked&& other) noexcept : count_(other.count_) { ++count_->constructed; }
  Tracked(const Tracked&) = delete;
  Tracked& operator=(const Tracked&) = delete;
  Tracked& operator=(Tracked&&) = delete;
  ~Tracked() { ++count_->destroyed; }

 private:
  LifeCount* count_;
};

// A non-blocking, close-on-exec pipe whose read end never becomes readable unless the test
// writes to it (put()). On Windows a loopback socket pair (portable.hpp: make_channel).
struct Pipe {
  coselect::native_handle read_end = coselect::detail::invalid_handle;
  coselect::native_handle write_end = coselect::detail::invalid_handle;
  Pipe() {
    const channel_ends ends = make_channel();
    read_end = ends.read_end;
    write_end = ends.write_end;
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  ~Pipe() {
    if (read_end != coselect::detail::invalid_handle) close_handle(read_end);
    if (write_end != coselect::detail::invalid_handle) close_handle(write_end);
  }
  void put(const std::string& data = "x") const {
    EXPECT_EQ(write_some(write_end, data.data(), data.size()), static_cast<long>(data.size()));
  }
};

// co_await sleep_ignoring_stop(d): sleeps like sleep_for(d) on the current scheduler, but is not
// a cancellation point (an awaitable of the program's own, through a TaskManager timer): for
// tasks that must go on working after a stop.
class sleep_ignoring_stop {
 public:
  explicit sleep_ignoring_stop(coselect::Scheduler::duration d) : delay_(d) {}
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) const {
    coselect::Scheduler& s = *coselect::Scheduler::current();
    s.tasks().call_later(delay_, [&s, h] { s.tasks().resume(h); });
  }
  void await_resume() const noexcept {}

 private:
  coselect::Scheduler::duration delay_;
};

// A virtual-time scheduler: sleeps decide the order in which things happen, exactly.
struct VirtualLoop {
  coselect::TimeMachine tm;
  coselect::Scheduler s{tm};
  coselect::Scheduler::time_point t0 = s.now();
  coselect::Scheduler::duration elapsed() const { return s.now() - t0; }
};

// How the tasks of a test ended (value_after counts them).
struct Tally {
  int finished = 0;
  int canceled = 0;
};

// Sleeps d (a cancellation point), counting in `tally` whether it finished or was cancelled,
// then yields value.
template <class T>
coselect::Task<T> value_after(coselect::Scheduler::duration d, T value, Tally& tally) {
  try {
    co_await coselect::sleep_for(d);
  } catch (const std::system_error& e) {
    if (e.code() == std::errc::operation_canceled) ++tally.canceled;
    throw;
  }
  ++tally.finished;
  co_return value;
}

inline coselect::Task<void> nothing_after(coselect::Scheduler::duration d, Tally& tally) {
  co_await value_after(d, 0, tally);
}

// A task slow to wind down: waits up to `wait` (a cancellation point); if stopped meanwhile,
// goes on working for `extra` regardless, then returns true (false: it was not stopped).
inline coselect::Task<bool> wind_down_slowly(coselect::Scheduler::duration wait,
                                             coselect::Scheduler::duration extra) {
  try {
    co_await coselect::sleep_for(wait);
    co_return false;
  } catch (const std::system_error&) {
  }
  co_await sleep_ignoring_stop(extra);
  co_return true;
}

// Awaits `t`, then stops `s` if it was the last of `left` such tasks to finish.
inline coselect::Task<void> counted(coselect::Task<void> t, std::size_t& left,
                                    coselect::Scheduler& s) {
  co_await std::move(t);
  if (--left == 0) s.stop();
}

// Spawns `tasks` on `s` (in order) and runs the loop until every one has finished, or until
// `watchdog` passes on the scheduler's clock (a lost wake-up then fails fast instead of hanging).
// Returns how many did not finish: 0 means all did.
inline std::size_t run_all_within(coselect::Scheduler& s, coselect::Scheduler::duration watchdog,
                                  std::vector<coselect::Task<void>> tasks) {
  std::size_t left = tasks.size();
  if (left == 0) return 0;
  auto guard = s.tasks().call_later(watchdog, [&s] { s.stop(); });
  for (coselect::Task<void>& t : tasks)
    s.spawn(counted(std::move(t), left, s));
  try {
    s.run();
  } catch (...) {
    guard.suspend();
    throw;
  }
  guard.suspend();
  return left;
}

template <std::same_as<coselect::Task<void>>... Ts>
std::vector<coselect::Task<void>> list(Ts... tasks) {
  std::vector<coselect::Task<void>> v;
  (v.push_back(std::move(tasks)), ...);
  return v;
}

template <std::same_as<coselect::Task<void>>... Ts>
std::size_t run_all_within(coselect::Scheduler& s, coselect::Scheduler::duration watchdog,
                           Ts... tasks) {
  return run_all_within(s, watchdog, list(std::move(tasks)...));
}

template <std::same_as<coselect::Task<void>>... Ts>
std::size_t run_all(coselect::Scheduler& s, Ts... tasks) {
  return run_all_within(s, std::chrono::seconds(10), std::move(tasks)...);
}

}  // namespace coselect_test
