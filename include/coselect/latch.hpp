// coselect::Latch: a single-use countdown that coroutines and threads wait on (DESIGN.md §9).
#pragma once

#include <atomic>
#include <coroutine>
#include <cstddef>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "detail/waiter_queue.hpp"

namespace coselect {

// Latch — counts down once to zero, which releases every waiter; single use.
//
// Contract
//  * Thread-safe: every member may be called from any thread.
//  * count_down(n): any thread. n <= 0, or more than the count left, throws
//    std::invalid_argument (and changes nothing). Reaching zero releases every waiter at once:
//    coroutines resume on their own scheduler's thread (oldest first, never inside
//    count_down()), blocked threads wake. Writes made before count_down() are visible to the
//    waiters it releases.
//  * co_await l.wait() — coroutines on a Scheduler (std::logic_error where none runs). At zero it
//    completes at once, without suspending (a stop requested before does not matter).
//    Cancellation point (DESIGN.md §8): a stop while waiting unlinks the waiter and throws
//    std::system_error(errc::operation_canceled); the count is untouched. If the count reached
//    zero before the stop arrived, the wait ends normally.
//  * wait_blocking(): plain threads; returns once the count is zero. Not on a loop thread of a
//    scheduler that must run for the count to reach zero (that would deadlock).
//  * A negative initial count throws std::invalid_argument.
//  * Destroying a latch while coroutines of this thread's scheduler wait on it resumes them with
//    operation_canceled; while coroutines of other threads or blocked threads wait on it, it is
//    a precondition violation.
class Latch {
 public:
  class wait_awaiter;

  explicit Latch(std::ptrdiff_t count) : count_(count) {
    if (count < 0) throw std::invalid_argument("coselect::Latch: negative count");
  }
  Latch(const Latch&) = delete;
  Latch& operator=(const Latch&) = delete;
  ~Latch() { waiters_.fail_all(); }

  void count_down(std::ptrdiff_t n = 1) {
    if (n <= 0) throw std::invalid_argument("coselect::Latch::count_down: n must be > 0");
    std::lock_guard lock(mutex_);
    const std::ptrdiff_t left = count_.load(std::memory_order_relaxed);
    if (n > left) {
      throw std::invalid_argument("coselect::Latch::count_down: the count would go below zero");
    }
    count_.store(left - n, std::memory_order_release);
    if (left == n) waiters_.release_all(detail::wait_outcome::released);
  }

  // At zero (a snapshot; once true, true for good).
  bool try_wait() const noexcept { return count_.load(std::memory_order_acquire) == 0; }

  // co_await l.wait(): resumes once the count is zero.
  inline wait_awaiter wait() noexcept;

  void wait_blocking() {
    if (try_wait()) return;
    std::unique_lock lock(mutex_);
    if (count_.load(std::memory_order_relaxed) == 0) return;
    detail::queue_waiter self;
    waiters_.block(lock, self);
  }

 private:
  std::atomic<std::ptrdiff_t> count_;  // falls only under mutex_
  std::mutex mutex_;
  detail::waiter_queue waiters_{mutex_};
};

// Awaiter of `co_await l.wait()`.
class Latch::wait_awaiter : private detail::queued_awaiter {
 public:
  explicit wait_awaiter(Latch& l) noexcept : queued_awaiter(l.waiters_), owner_(l) {}
  wait_awaiter(wait_awaiter&& other) noexcept
      : queued_awaiter(*other.queue_), owner_(other.owner_) {}

  bool await_ready() {
    bind_loop("Latch::wait()");
    return owner_.try_wait();
  }

  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> h) {
    return suspend_unless(
        h, [this] { return owner_.count_.load(std::memory_order_relaxed) == 0; }, kStopped);
  }

  void await_resume() {
    end_wait(kStopped, "coselect::Latch destroyed while a coroutine waited on it");
  }

 private:
  static constexpr const char* kStopped = "coselect::Latch::wait() canceled";

  Latch& owner_;
};

inline Latch::wait_awaiter Latch::wait() noexcept {
  return wait_awaiter(*this);
}

}  // namespace coselect
