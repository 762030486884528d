// coselect::Semaphore: a counting semaphore for coroutines and threads (DESIGN.md §9).
#pragma once

#include <atomic>
#include <coroutine>
#include <cstddef>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "detail/waiter_queue.hpp"

namespace coselect {

// Semaphore — a count of units that coroutines acquire (waiting while none is free) and anyone
// releases.
//
// Contract
//  * Thread-safe: every member may be called from any thread; release() from plain threads too.
//  * co_await s.acquire() — coroutines on a Scheduler (std::logic_error where none runs). With a
//    unit free it takes it at once, without suspending (a stop requested before does not
//    matter). Otherwise the coroutine waits; waiters are served first in, first out: release(n)
//    hands its units to the oldest waiters first (nobody can barge in while they wait), and they
//    resume on their own scheduler's thread, never inside release().
//  * Cancellation point (DESIGN.md §8): a stop while waiting unlinks the waiter and throws
//    std::system_error(errc::operation_canceled), leaving the count as it was. If release()
//    handed a unit over before the stop arrived, the hand-over stands: the await returns and
//    the coroutine holds the unit. A stop requested before the await throws at once if no unit
//    is free.
//  * release(n) with n <= 0, or a count that would overflow, throws std::invalid_argument; so
//    does a negative initial count.
//  * Destroying a semaphore while coroutines of this thread's scheduler wait on it resumes them
//    with operation_canceled; while coroutines of other threads wait on it, it is a
//    precondition violation.
class Semaphore {
 public:
  class acquire_awaiter;

  explicit Semaphore(std::ptrdiff_t initial) : count_(initial) {
    if (initial < 0) throw std::invalid_argument("coselect::Semaphore: negative initial count");
  }
  Semaphore(const Semaphore&) = delete;
  Semaphore& operator=(const Semaphore&) = delete;
  ~Semaphore() { waiters_.fail_all(); }

  // co_await s.acquire(): takes one unit.
  inline acquire_awaiter acquire() noexcept;

  // Takes a unit if one is free. Never waits.
  bool try_acquire() noexcept {
    std::ptrdiff_t c = count_.load(std::memory_order_relaxed);
    while (c > 0) {
      if (count_.compare_exchange_weak(c, c - 1, std::memory_order_acquire,
                                       std::memory_order_relaxed)) {
        return true;
      }
    }
    return false;
  }

  // Adds n units: the oldest waiters take them first, the rest go to the count.
  void release(std::ptrdiff_t n = 1) {
    if (n <= 0) throw std::invalid_argument("coselect::Semaphore::release: n must be > 0");
    std::lock_guard lock(mutex_);
    if (count_.load(std::memory_order_relaxed) > kMax - n) {
      throw std::invalid_argument("coselect::Semaphore::release: the count would overflow");
    }
    while (n > 0 && !waiters_.empty()) {
      waiters_.release(*waiters_.front(), detail::wait_outcome::released);
      --n;
    }
    // Waiters exist only while the count is 0, so the units left are free for anyone.
    if (n > 0) count_.fetch_add(n, std::memory_order_release);
  }

  // The units free right now (a snapshot).
  std::ptrdiff_t available() const noexcept { return count_.load(std::memory_order_relaxed); }

 private:
  static constexpr std::ptrdiff_t kMax = std::numeric_limits<std::ptrdiff_t>::max();

  // Invariant: waiters_ is non-empty only while count_ is 0. count_ rises only under mutex_
  // (release), and falls anywhere (try_acquire), so a waiter that found it 0 under the lock
  // cannot miss a unit.
  std::atomic<std::ptrdiff_t> count_;
  std::mutex mutex_;
  detail::waiter_queue waiters_{mutex_};
};

// Awaiter of `co_await s.acquire()`.
class Semaphore::acquire_awaiter : private detail::queued_awaiter {
 public:
  explicit acquire_awaiter(Semaphore& s) noexcept : queued_awaiter(s.waiters_), owner_(s) {}
  acquire_awaiter(acquire_awaiter&& other) noexcept
      : queued_awaiter(*other.queue_), owner_(other.owner_) {}

  bool await_ready() {
    bind_loop("Semaphore::acquire()");
    return owner_.try_acquire();
  }

  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> h) {
    return suspend_unless(
        h, [this] { return owner_.try_acquire(); }, kStopped);
  }

  void await_resume() {
    end_wait(kStopped, "coselect::Semaphore destroyed while a coroutine waited on it");
  }

 private:
  static constexpr const char* kStopped = "coselect::Semaphore::acquire() canceled";

  Semaphore& owner_;
};

inline Semaphore::acquire_awaiter Semaphore::acquire() noexcept {
  return acquire_awaiter(*this);
}

}  // namespace coselect
