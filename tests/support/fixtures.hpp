// Test support: small objects the tests share — counters of objects alive in coroutine frames,
// and a pipe that stays silent until the test writes to it.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <string>
#include <system_error>

#include <gtest/gtest.h>

namespace coselect_test {

// Counts the objects of one kind that are alive (constructed, not yet destroyed). Atomic, so
// that frames destroyed on another thread count too.
struct LifeCount {
  std::atomic<int> constructed{0};
  std::atomic<int> destroyed{0};
  int alive() const { return constructed.load() - destroyed.load(); }
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

}  // namespace coselect_test
