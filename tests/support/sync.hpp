// Test support: thread rendezvous (latch, barrier, waiting on an atomic) that work with every
// toolchain the suite is built with. libstdc++ before GCC 13 implements std::latch,
// std::barrier and std::atomic<T>::wait, where the platform has no futex (MinGW), with a check
// and a condition-variable wait that a notify can slip between (GCC bug 106183): a test thread
// then hangs for ever. There these are a mutex and a condition variable; elsewhere they are the
// standard ones.
#pragma once

#include <atomic>
#include <barrier>
#include <condition_variable>
#include <cstddef>
#include <latch>
#include <mutex>
#include <thread>

namespace coselect_test {

#if defined(_WIN32) && defined(__GLIBCXX__) && defined(__GNUC__) && !defined(__clang__) && \
    __GNUC__ < 13
inline constexpr bool kStdWaitMayHang = true;

// std::latch's count_down / wait / arrive_and_wait, on a mutex and a condition variable.
class latch {
 public:
  explicit latch(std::ptrdiff_t count) : count_(count) {}
  void count_down(std::ptrdiff_t n = 1) {
    std::lock_guard lock(mutex_);
    count_ -= n;
    if (count_ <= 0) zero_.notify_all();
  }
  bool try_wait() const noexcept {
    std::lock_guard lock(mutex_);
    return count_ <= 0;
  }
  void wait() const {
    std::unique_lock lock(mutex_);
    zero_.wait(lock, [this] { return count_ <= 0; });
  }
  void arrive_and_wait(std::ptrdiff_t n = 1) {
    count_down(n);
    wait();
  }

 private:
  mutable std::mutex mutex_;
  mutable std::condition_variable zero_;
  std::ptrdiff_t count_;
};

// std::barrier<>'s arrive_and_wait (no completion function), reusable phase after phase.
class barrier {
 public:
  explicit barrier(std::ptrdiff_t count) : expected_(count), left_(count) {}
  void arrive_and_wait() {
    std::unique_lock lock(mutex_);
    const std::size_t phase = phase_;
    if (--left_ == 0) {
      left_ = expected_;
      ++phase_;
      next_.notify_all();
      return;
    }
    next_.wait(lock, [&] { return phase_ != phase; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable next_;
  std::ptrdiff_t expected_;
  std::ptrdiff_t left_;
  std::size_t phase_ = 0;
};
#else
inline constexpr bool kStdWaitMayHang = false;
using std::latch;
using barrier = std::barrier<>;
#endif

// a.wait(old): returns once `a` no longer holds `old` (a yielding poll where atomic waits may
// hang).
template <class T>
void wait_while_equal(const std::atomic<T>& a, T old,
                      std::memory_order order = std::memory_order_seq_cst) {
  if constexpr (kStdWaitMayHang) {
    while (a.load(order) == old)
      std::this_thread::yield();
  } else {
    a.wait(old, order);
  }
}

}  // namespace coselect_test
