// The one waiter queue behind Mutex, Semaphore, Channel and Latch (DESIGN.md §9).
//
// A primitive keeps its state and one or more waiter_queues under one std::mutex. A waiter is
// either a coroutine (it has a handle and the loop it runs on) or a plain thread blocked in a
// *_blocking call (it sleeps on a futex word in its node). Everything that links, unlinks or
// releases a waiter holds the primitive's mutex, so "released by the primitive" and "cancelled
// by a stop" (detail/cancel_point.hpp) are decided under that lock: exactly one of them happens,
// and whatever the primitive handed over (a lock, a unit, a value) is never lost.
//
// A released coroutine resumes on its own loop (loop_hooks::resume_soon: queued there, waking
// the loop if needed, never inline in the releasing call, even on its own loop thread); a
// released thread is woken through its futex word and re-takes the lock before it returns, so
// the releaser is done with the node by then.
#pragma once

#include <atomic>
#include <coroutine>
#include <cstdint>
#include <mutex>
#include <stop_token>
#include <system_error>

#include "../waitable_event.hpp"
#include "cancel_point.hpp"
#include "syscall.hpp"
#include "wait_node.hpp"

namespace coselect::detail {

// One waiter, linked FIFO into a waiter_queue. Lives in the awaiter (so in the coroutine frame)
// or on the blocked thread's stack. Every field is guarded by the primitive's mutex, except
// `linked`, which may also be read without it (see queued_awaiter) and `woken`.
struct queue_waiter {
  queue_waiter* next = nullptr;
  queue_waiter* prev = nullptr;
  std::coroutine_handle<> handle{};     // a coroutine's; null for a blocked thread
  loop_hooks* loop = nullptr;           // the coroutine's loop
  cancel_point* cancel = nullptr;       // the coroutine's cancel point (disarmed on destruction)
  std::atomic<std::uint32_t> woken{0};  // a blocked thread's futex word: 1 once released
  std::atomic<bool> linked{false};
  void* payload = nullptr;  // what the primitive hands over (Channel: the value's address)
  bool closed = false;      // Channel: the wait ended because the channel closed
  // released: served; canceled: a stop ended it; failed: the primitive was destroyed.
  wait_outcome outcome = wait_outcome::pending;
};

class waiter_queue {
 public:
  explicit waiter_queue(std::mutex& mutex) noexcept : mutex_(&mutex) {}
  waiter_queue(const waiter_queue&) = delete;
  waiter_queue& operator=(const waiter_queue&) = delete;

  std::mutex& mutex() const noexcept { return *mutex_; }
  bool empty() const noexcept { return head_ == nullptr; }
  queue_waiter* front() const noexcept { return head_; }

  // Lock held, for all that follows.
  void push_back(queue_waiter& w) noexcept {
    w.next = nullptr;
    w.prev = tail_;
    (tail_ != nullptr ? tail_->next : head_) = &w;
    tail_ = &w;
    w.outcome = wait_outcome::pending;
    w.linked.store(true, std::memory_order_release);
  }

  void unlink(queue_waiter& w) noexcept {
    (w.prev != nullptr ? w.prev->next : head_) = w.next;
    (w.next != nullptr ? w.next->prev : tail_) = w.prev;
    w.next = w.prev = nullptr;
    w.linked.store(false, std::memory_order_release);
  }

  // Unlinks `w` and ends its wait with `outcome`: a coroutine is queued to resume on its loop,
  // a blocked thread wakes.
  void release(queue_waiter& w, wait_outcome outcome) {
    unlink(w);
    w.outcome = outcome;
    if (w.handle) {
      w.loop->resume_soon(w.handle);
      return;
    }
    w.woken.store(1, std::memory_order_release);
    futex_wake_all(futex_word(w));
  }

  // Releases every waiter, oldest first.
  void release_all(wait_outcome outcome) {
    while (head_ != nullptr)
      release(*head_, outcome);
  }

  // The primitive is being destroyed: coroutines still waiting resume with operation_canceled
  // (their cancel points are disarmed here when they belong to this thread's loop, so that no
  // stop request can reach a primitive that is gone). Blocked threads are a precondition
  // violation; they are woken as failed rather than left asleep.
  void fail_all() {
    std::lock_guard lock(*mutex_);
    loop_hooks* here = current_loop();
    for (queue_waiter* w = head_; w != nullptr; w = w->next) {
      if (w->cancel != nullptr && w->loop == here) w->cancel->disarm();
    }
    release_all(wait_outcome::failed);
  }

  // A plain thread waits in `w` until released. `lock` holds the primitive's mutex on entry
  // and again on return.
  void block(std::unique_lock<std::mutex>& lock, queue_waiter& w) {
    w.handle = {};
    w.woken.store(0, std::memory_order_relaxed);
    push_back(w);
    lock.unlock();
    while (w.woken.load(std::memory_order_acquire) == 0)
      futex_wait(futex_word(w), 0, nullptr);
    lock.lock();  // the releaser wakes us under the lock: once we hold it, it is done with w
  }

 private:
  static const std::uint32_t* futex_word(const queue_waiter& w) noexcept {
    static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
    return reinterpret_cast<const std::uint32_t*>(&w.woken);
  }

  std::mutex* mutex_;
  queue_waiter* head_ = nullptr;
  queue_waiter* tail_ = nullptr;
};

// The common part of every primitive's awaiter: links a queue_waiter under the primitive's
// lock, arms the cancellation point, and ends the wait. A stop while the coroutine waits
// unlinks it (under the lock) and resumes it with operation_canceled, leaving the primitive
// exactly as it was; if the primitive served it first, that outcome stands.
//
// Derived awaiters are movable until awaited (with_timeout and friends take awaitables by
// value), never while waiting: a move constructs a fresh base from the same queue.
class queued_awaiter {
 public:
  queued_awaiter(const queued_awaiter&) = delete;
  queued_awaiter& operator=(const queued_awaiter&) = delete;
  ~queued_awaiter() {
    cancel_.disarm();
    // A frame destroyed while still waiting leaves the queue. (`linked` is false once the
    // primitive served or failed it; the primitive may be gone by then.)
    if (node_.linked.load(std::memory_order_acquire)) {
      std::lock_guard lock(queue_->mutex());
      if (node_.linked.load(std::memory_order_relaxed)) queue_->unlink(node_);
    }
  }

 protected:
  explicit queued_awaiter(waiter_queue& q) noexcept : queue_(&q) {}

  // await_ready: the loop this coroutine runs on (std::logic_error where none runs).
  void bind_loop(const char* what) {
    loop_ = current_loop();
    if (loop_ == nullptr) throw_no_scheduler(what);
  }

  // await_suspend: under the primitive's lock, `try_now()` completes the operation without
  // waiting (returns true: do not suspend); otherwise a stop already requested throws at once,
  // and node_ (its payload filled in by the caller) is linked. Returns whether to suspend.
  template <class Promise, class TryNow>
  bool suspend_unless(std::coroutine_handle<Promise> h, TryNow&& try_now, const char* stopped) {
    const std::stop_token* token = stop_token_of(h);
    {
      std::lock_guard lock(queue_->mutex());
      if (try_now()) return false;
      cancel_point::check(token, stopped);
      node_.handle = h;
      node_.loop = loop_;
      node_.cancel = token != nullptr ? &cancel_ : nullptr;
      queue_->push_back(node_);
    }
    try {
      cancel_.arm(token, *loop_, &on_cancel, this);
    } catch (...) {  // std::bad_alloc: leave the queue, unless already served
      std::lock_guard lock(queue_->mutex());
      if (!node_.linked.load(std::memory_order_relaxed)) return true;  // its resume is queued
      queue_->unlink(node_);
      throw;
    }
    return true;
  }

  // await_resume of a wait that suspended (or not): throws if a stop or the primitive's
  // destruction ended it.
  void end_wait(const char* stopped, const char* destroyed) {
    cancel_.disarm();
    if (node_.outcome == wait_outcome::canceled) throw_operation_canceled(stopped);
    if (node_.outcome == wait_outcome::failed) {
      throw std::system_error(std::make_error_code(std::errc::operation_canceled), destroyed);
    }
  }

  waiter_queue* queue_;
  loop_hooks* loop_ = nullptr;
  queue_waiter node_;
  cancel_point cancel_;

 private:
  // Loop thread (cancel_point): ends the wait as canceled unless the primitive served it.
  static void on_cancel(void* self) noexcept {
    auto& a = *static_cast<queued_awaiter*>(self);
    if (!a.node_.linked.load(std::memory_order_acquire)) return;  // served: that stands
    {
      std::lock_guard lock(a.queue_->mutex());
      if (!a.node_.linked.load(std::memory_order_relaxed)) return;
      a.queue_->unlink(a.node_);
      a.node_.outcome = wait_outcome::canceled;
    }
    a.loop_->make_ready(a.node_.handle);
  }
};

}  // namespace coselect::detail
