// Test support: small objects the tests share — counters of objects alive in coroutine frames,
// a pipe that stays silent until the test writes to it, and run_all(), which runs a few
// coroutines on a scheduler to their end under a watchdog.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <coselect.hpp>

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
// writes to it (put()).
struct Pipe {
  int read_end = -1;
  int write_end = -1;
  Pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
      throw std::system_error(errno, std::system_category(), "pipe2");
    }
    read_end = fds[0];
    write_end = fds[1];
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  ~Pipe() {
    if (read_end >= 0) ::close(read_end);
    if (write_end >= 0) ::close(write_end);
  }
  void put(const std::string& data = "x") const {
    EXPECT_EQ(::write(write_end, data.data(), data.size()), static_cast<ssize_t>(data.size()));
  }
};

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
