// Awaitables for time: sleep_for, sleep_until, yield_now.
#pragma once

#include <chrono>
#include <coroutine>

#include "detail/syscall.hpp"
#include "scheduler.hpp"

namespace coselect {

namespace detail {

// Suspends until the scheduler's clock (real or virtual) reaches a deadline.
class sleep_awaiter {
 public:
  using time_point = Scheduler::time_point;

  // Either an absolute deadline, or a delay measured from when the await begins.
  static sleep_awaiter until(time_point t) noexcept { return sleep_awaiter(t, {}, true); }
  static sleep_awaiter after(std::chrono::nanoseconds d) noexcept {
    return sleep_awaiter({}, d, false);
  }

  sleep_awaiter(const sleep_awaiter&) = delete;
  sleep_awaiter& operator=(const sleep_awaiter&) = delete;
  ~sleep_awaiter() {
    if (node_.armed()) scheduler_access::remove_timer(*scheduler_, node_);
  }

  bool await_ready() {
    scheduler_ = &scheduler_access::current_or_throw("sleep_for()/sleep_until()");
    return false;
  }
  void await_suspend(std::coroutine_handle<> h) {
    node_.handle = h;
    node_.due = absolute_ ? deadline_ : saturating_add<Scheduler::clock>(scheduler_->now(), delay_);
    node_.fire = [](timer_node& t, loop_hooks&) noexcept {
      auto& n = static_cast<sleeper&>(t);
      scheduler_access::make_ready(*n.owner, n.handle);
    };
    node_.owner = scheduler_;
    scheduler_access::add_timer(*scheduler_, node_);
  }
  void await_resume() const noexcept {}

 private:
  struct sleeper : timer_node {
    std::coroutine_handle<> handle{};
    Scheduler* owner = nullptr;
  };

  sleep_awaiter(time_point t, std::chrono::nanoseconds d, bool absolute) noexcept
      : deadline_(t), delay_(d), absolute_(absolute) {}

  time_point deadline_;
  std::chrono::nanoseconds delay_;
  bool absolute_;
  Scheduler* scheduler_ = nullptr;
  sleeper node_;
};

// Goes to the back of the ready queue: everything ready now, and the loop's fd and timer
// checks, run before the coroutine continues.
struct yield_awaiter {
  Scheduler* scheduler = nullptr;
  bool await_ready() {
    scheduler = &scheduler_access::current_or_throw("yield_now()");
    return false;
  }
  void await_suspend(std::coroutine_handle<> h) { scheduler_access::make_ready(*scheduler, h); }
  void await_resume() const noexcept {}
};

}  // namespace detail

// co_await sleep_for(d): resumes on the same scheduler once its clock has advanced by d
// (never early). d <= 0 still lets the loop turn once.
template <class Rep, class Period>
detail::sleep_awaiter sleep_for(std::chrono::duration<Rep, Period> d) noexcept {
  return detail::sleep_awaiter::after(detail::saturating_ns(d));
}

// co_await sleep_until(t): resumes once the scheduler's clock reaches t.
inline detail::sleep_awaiter sleep_until(Scheduler::time_point t) noexcept {
  return detail::sleep_awaiter::until(t);
}

// co_await yield_now(): lets every other ready coroutine, and the loop's I/O and timer checks,
// run before continuing.
inline detail::yield_awaiter yield_now() noexcept {
  return {};
}

}  // namespace coselect
