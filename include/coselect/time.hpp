// Awaitables for time: sleep_for, sleep_until, yield_now.
#pragma once

#include <chrono>
#include <coroutine>

#include "detail/cancel_point.hpp"
#include "detail/syscall.hpp"
#include "scheduler.hpp"

namespace coselect {

namespace detail {

// Suspends until the scheduler's clock (real or virtual) reaches a deadline.
//
// Kept small: it lives in the frame of every sleeping coroutine. The deadline (or the delay,
// until the await begins) waits in the timer node itself, the flags sit in the node's padding,
// and the firing loop is the one passed to `fire`.
class sleep_awaiter {
 public:
  using time_point = Scheduler::time_point;

  // Either an absolute deadline, or a delay measured from when the await begins.
  static sleep_awaiter until(time_point t) noexcept { return sleep_awaiter(t, true); }
  static sleep_awaiter after(std::chrono::nanoseconds d) noexcept {
    return sleep_awaiter(time_point(std::chrono::duration_cast<time_point::duration>(d)), false);
  }

  sleep_awaiter(sleep_awaiter&& other) noexcept
      : sleep_awaiter(other.node_.due, other.node_.absolute) {}
  sleep_awaiter& operator=(const sleep_awaiter&) = delete;
  ~sleep_awaiter() {
    cancel_.disarm();
    if (node_.armed()) scheduler_access::remove_timer(*scheduler_, node_);
  }

  bool await_ready() {
    scheduler_ = &scheduler_access::current_or_throw("sleep_for()/sleep_until()");
    return false;
  }
  template <class Promise>
  void await_suspend(std::coroutine_handle<Promise> h) {
    const std::stop_token* token = stop_token_of(h);
    cancel_point::check(token, kCanceled);
    node_.handle = h;
    if (!node_.absolute) {
      node_.due = saturating_add<Scheduler::clock>(scheduler_->now(), node_.due.time_since_epoch());
      node_.absolute = true;
    }
    node_.fire = [](timer_node& t, loop_hooks& loop) noexcept {
      loop.make_ready(static_cast<sleeper&>(t).handle);
    };
    scheduler_access::add_timer(*scheduler_, node_);
    cancel_.arm(token, scheduler_access::hooks(*scheduler_), &on_cancel, this);
  }
  void await_resume() { cancel_.end(node_.canceled, kCanceled); }

 private:
  static constexpr const char* kCanceled = "coselect::sleep_for()/sleep_until() canceled";

  static void on_cancel(void* self) noexcept {
    auto& a = *static_cast<sleep_awaiter*>(self);
    if (!a.node_.armed()) return;  // the deadline passed first
    scheduler_access::remove_timer(*a.scheduler_, a.node_);
    a.node_.canceled = true;
    scheduler_access::make_ready(*a.scheduler_, a.node_.handle);
  }

  struct sleeper : timer_node {
    bool absolute = false;  // `due` holds the deadline (else the delay, before the await)
    bool canceled = false;
    std::coroutine_handle<> handle{};
  };

  sleep_awaiter(time_point due, bool absolute) noexcept {
    node_.due = due;
    node_.absolute = absolute;
  }

  Scheduler* scheduler_ = nullptr;
  sleeper node_;
  cancel_point cancel_;
};

// Goes to the back of the ready queue: everything ready now, and the loop's fd and timer
// checks, run before the coroutine continues.
class yield_awaiter {
 public:
  yield_awaiter() noexcept = default;
  yield_awaiter(yield_awaiter&&) noexcept {}
  yield_awaiter& operator=(const yield_awaiter&) = delete;

  bool await_ready() {
    scheduler_ = &scheduler_access::current_or_throw("yield_now()");
    return false;
  }
  template <class Promise>
  void await_suspend(std::coroutine_handle<Promise> h) {
    const std::stop_token* token = stop_token_of(h);
    cancel_point::check(token, kCanceled);
    cancel_.arm(token, scheduler_access::hooks(*scheduler_), &on_cancel, this);
    scheduler_access::make_ready(*scheduler_, h);
  }
  void await_resume() { cancel_.end(canceled_, kCanceled); }

 private:
  static constexpr const char* kCanceled = "coselect::yield_now() canceled";

  // Still queued to resume: it resumes canceled (a stop on the loop thread takes effect at once).
  static void on_cancel(void* self) noexcept {
    static_cast<yield_awaiter*>(self)->canceled_ = true;
  }

  Scheduler* scheduler_ = nullptr;
  cancel_point cancel_;
  bool canceled_ = false;
};

}  // namespace detail

// co_await sleep_for(d): resumes on the same scheduler once its clock has advanced by d
// (never early). d <= 0 still lets the loop turn once. Cancellation point (DESIGN.md §8): a stop
// while sleeping removes the timer and throws operation_canceled.
template <class Rep, class Period>
detail::sleep_awaiter sleep_for(std::chrono::duration<Rep, Period> d) noexcept {
  return detail::sleep_awaiter::after(detail::saturating_ns(d));
}

// co_await sleep_until(t): resumes once the scheduler's clock reaches t. Cancellation point, as
// sleep_for.
inline detail::sleep_awaiter sleep_until(Scheduler::time_point t) noexcept {
  return detail::sleep_awaiter::until(t);
}

// co_await yield_now(): lets every other ready coroutine, and the loop's I/O and timer checks,
// run before continuing. Cancellation point: a stop requested before it resumes (on the loop
// thread: even in the same turn) makes it throw operation_canceled.
inline detail::yield_awaiter yield_now() noexcept {
  return {};
}

}  // namespace coselect
