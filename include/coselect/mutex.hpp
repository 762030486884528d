// coselect::Mutex: a mutual-exclusion lock for coroutines, with FIFO hand-over (DESIGN.md §9).
#pragma once

#include <atomic>
#include <coroutine>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "detail/waiter_queue.hpp"

namespace coselect {

class Mutex;

// MutexGuard — what `co_await m.lock()` yields: owns the lock until it is destroyed or
// unlock() is called, exactly once. Move-only; a moved-from or unlocked guard does nothing.
class [[nodiscard]] MutexGuard {
 public:
  MutexGuard() noexcept = default;
  explicit MutexGuard(Mutex& m) noexcept : mutex_(&m) {}
  MutexGuard(MutexGuard&& other) noexcept : mutex_(std::exchange(other.mutex_, nullptr)) {}
  MutexGuard& operator=(MutexGuard&& other) noexcept {
    if (this != &other) {
      unlock();
      mutex_ = std::exchange(other.mutex_, nullptr);
    }
    return *this;
  }
  MutexGuard(const MutexGuard&) = delete;
  MutexGuard& operator=(const MutexGuard&) = delete;
  ~MutexGuard() { unlock(); }

  bool owns_lock() const noexcept { return mutex_ != nullptr; }
  explicit operator bool() const noexcept { return owns_lock(); }
  Mutex* mutex() const noexcept { return mutex_; }

  // Unlocks now (a no-op if it no longer owns the lock).
  inline void unlock() noexcept;

 private:
  Mutex* mutex_ = nullptr;
};

// Mutex — a non-recursive lock that coroutines wait for without blocking their thread.
//
// Contract
//  * Thread-safe: every member may be called from any thread. Not bound to a thread or a
//    coroutine: whoever holds it may unlock it anywhere (a plain thread may try_lock/unlock).
//  * `auto guard = co_await m.lock();` — coroutines on a Scheduler (std::logic_error where none
//    runs). A free mutex is taken at once, without suspending (a stop requested before does not
//    matter). Otherwise the coroutine waits; waiters are served first in, first out, by hand-over:
//    unlock() gives the lock straight to the oldest waiter (nobody can barge in), which resumes
//    on its own scheduler's thread, never inside unlock().
//  * Cancellation point (DESIGN.md §8): a stop while waiting unlinks the waiter and throws
//    std::system_error(errc::operation_canceled); the mutex is left as it was (the waiter never
//    held it). If unlock() handed the lock over before the stop arrived, the hand-over stands:
//    the await returns the guard and the coroutine owns the lock. A stop requested before the
//    await throws at once if the mutex is held.
//  * unlock() of an unlocked mutex throws std::logic_error.
//  * Destroying a mutex while coroutines of this thread's scheduler wait on it resumes them with
//    operation_canceled. It must not be destroyed while it is locked by someone who will unlock
//    it, or while coroutines of other threads wait on it.
//
// Fast path: one compare-and-swap to lock, one to unlock, no system call.
class Mutex {
 public:
  class lock_awaiter;

  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;
  ~Mutex() { waiters_.fail_all(); }

  // co_await m.lock() -> MutexGuard.
  inline lock_awaiter lock() noexcept;

  bool try_lock() noexcept {
    int s = kUnlocked;
    return state_.compare_exchange_strong(s, kLocked, std::memory_order_acquire,
                                          std::memory_order_relaxed);
  }

  void unlock() {
    if (!release()) throw std::logic_error("coselect::Mutex::unlock: the mutex is not locked");
  }

 private:
  friend class MutexGuard;

  static constexpr int kUnlocked = 0;
  static constexpr int kLocked = 1;     // locked, nobody waits
  static constexpr int kContended = 2;  // locked, waiters may be queued (unlock takes the lock)

  // unlock(); false (and nothing changed) if the mutex was not locked.
  bool release() noexcept {
    int s = kLocked;
    if (state_.compare_exchange_strong(s, kUnlocked, std::memory_order_release,
                                       std::memory_order_relaxed)) {
      return true;
    }
    std::lock_guard lock(mutex_);
    s = state_.load(std::memory_order_relaxed);
    if (s == kUnlocked) return false;
    if (waiters_.empty()) {
      state_.store(kUnlocked, std::memory_order_release);  // the waiters were cancelled
      return true;
    }
    // Hand-over: the lock stays taken and passes to the oldest waiter.
    waiters_.release(*waiters_.front(), detail::wait_outcome::released);
    state_.store(waiters_.empty() ? kLocked : kContended, std::memory_order_relaxed);
    return true;
  }

  // Lock held: takes the mutex if it is free, else marks it contended (the caller waits).
  bool take_or_mark_contended() noexcept {
    int s = state_.load(std::memory_order_relaxed);
    for (;;) {
      if (s == kUnlocked) {
        if (state_.compare_exchange_weak(s, kLocked, std::memory_order_acquire,
                                         std::memory_order_relaxed)) {
          return true;
        }
      } else if (s == kLocked) {
        if (state_.compare_exchange_weak(s, kContended, std::memory_order_relaxed)) return false;
      } else {
        return false;
      }
    }
  }

  std::atomic<int> state_{kUnlocked};
  std::mutex mutex_;
  detail::waiter_queue waiters_{mutex_};
};

// Awaiter of `co_await m.lock()`.
class Mutex::lock_awaiter : private detail::queued_awaiter {
 public:
  explicit lock_awaiter(Mutex& m) noexcept : queued_awaiter(m.waiters_), owner_(m) {}
  lock_awaiter(lock_awaiter&& other) noexcept
      : queued_awaiter(*other.queue_), owner_(other.owner_) {}

  bool await_ready() {
    bind_loop("Mutex::lock()");
    return owner_.try_lock();
  }

  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> h) {
    return suspend_unless(
        h, [this] { return owner_.take_or_mark_contended(); }, kStopped);
  }

  MutexGuard await_resume() {
    end_wait(kStopped, "coselect::Mutex destroyed while a coroutine waited for it");
    return MutexGuard(owner_);
  }

 private:
  static constexpr const char* kStopped = "coselect::Mutex::lock() canceled";

  Mutex& owner_;
};

inline Mutex::lock_awaiter Mutex::lock() noexcept {
  return lock_awaiter(*this);
}

inline void MutexGuard::unlock() noexcept {
  // The guard owns the lock, so it cannot find it unlocked.
  if (Mutex* m = std::exchange(mutex_, nullptr)) (void)m->release();
}

}  // namespace coselect
