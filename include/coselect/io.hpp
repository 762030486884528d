// Awaitables for fd readiness: readable(fd), writable(fd), with and without timeout.
#pragma once

#include <chrono>
#include <coroutine>
#include <system_error>

#include "detail/cancel_point.hpp"
#include "detail/reactor.hpp"
#include "detail/syscall.hpp"
#include "scheduler.hpp"

namespace coselect {

namespace detail {

// Suspends until the loop's backend reports the fd ready (or the timeout passes). Any open fd
// will do (on Windows: any open socket). Bad fds (negative: EINVAL; closed: EBADF, also closed
// while waiting, except under epoll, where that is not allowed) throw std::system_error in the
// awaiting coroutine (a closed one once the loop's backend has looked at it, a negative one at
// once), and Scheduler::cancel_io(fd) makes it throw operation_canceled; the loop keeps running.
class fd_awaiter {
 public:
  fd_awaiter(native_handle fd, bool for_write,
             std::optional<std::chrono::nanoseconds> timeout) noexcept
      : timeout_(timeout) {
    node_.fd = fd;
    node_.for_write = for_write;
  }
  fd_awaiter(fd_awaiter&& other) noexcept : timeout_(other.timeout_) {
    node_.fd = other.node_.fd;
    node_.for_write = other.node_.for_write;
  }
  fd_awaiter& operator=(const fd_awaiter&) = delete;
  ~fd_awaiter() {
    cancel_.disarm();
    if (node_.linked) scheduler_access::reactor(*scheduler_).remove(node_);
    if (node_.armed()) scheduler_access::remove_timer(*scheduler_, node_);
  }

  bool await_ready() {
    scheduler_ = &scheduler_access::current_or_throw(node_.for_write ? "writable()" : "readable()");
    // Only the cheap check here: a closed fd is reported by the backend's own wait (select's
    // EBADF, poll's POLLNVAL, epoll_ctl's EBADF), so the hot path makes no extra system call.
    check_fd_number(node_.fd);
    if (timeout_ && timeout_->count() <= 0) {  // a poll: answer now
      node_.outcome = poll_now() ? wait_outcome::released : wait_outcome::timed_out;
      return true;
    }
    return false;
  }

  template <class Promise>
  void await_suspend(std::coroutine_handle<Promise> h) {
    const std::stop_token* token = stop_token_of(h);
    cancel_point::check(token, kCanceled);
    node_.handle = h;
    scheduler_access::reactor(*scheduler_).add(node_);
    if (timeout_) {
      node_.due = saturating_add<Scheduler::clock>(scheduler_->now(), *timeout_);
      node_.owner = scheduler_;
      node_.fire = [](timer_node& t, loop_hooks&) noexcept {
        auto& n = static_cast<waiter&>(t);
        scheduler_access::reactor(*n.owner).remove(n);
        // Ready in the same turn as the deadline passed: readiness wins.
        n.outcome = ready_now(n.fd, n.for_write) ? wait_outcome::released : wait_outcome::timed_out;
        scheduler_access::make_ready(*n.owner, n.handle);
      };
      scheduler_access::add_timer(*scheduler_, node_);
    }
    cancel_.arm(token, scheduler_access::hooks(*scheduler_), &on_cancel, this);
  }

  bool await_resume() {
    cancel_.end(stopped_, kCanceled);
    if (node_.outcome == wait_outcome::canceled) {
      throw std::system_error(std::make_error_code(std::errc::operation_canceled),
                              "coselect: Scheduler::cancel_io() on the awaited fd");
    }
    if (node_.outcome == wait_outcome::failed) {
      throw std::system_error(node_.error, errno_category(),
                              "coselect: fd closed while a coroutine waited on it");
    }
    return node_.outcome != wait_outcome::timed_out;
  }

 private:
  struct waiter : fd_waiter {
    Scheduler* owner = nullptr;
  };

  static constexpr const char* kCanceled = "coselect::readable()/writable() canceled";

  static void on_cancel(void* self) noexcept {
    auto& a = *static_cast<fd_awaiter*>(self);
    if (!a.node_.linked) return;  // ready, failed or timed out first: that stands
    scheduler_access::reactor(*a.scheduler_).remove(a.node_);
    if (a.node_.armed()) scheduler_access::remove_timer(*a.scheduler_, a.node_);
    a.node_.outcome = wait_outcome::canceled;
    a.stopped_ = true;
    scheduler_access::make_ready(*a.scheduler_, a.node_.handle);
  }

  // A zero timeout answers here, without the loop: a closed fd is EBADF like anywhere else.
  bool poll_now() const {
    short revents = 0;
    const bool ready = ready_now(node_.fd, node_.for_write, &revents);
    if (revents & POLLNVAL) {
      throw std::system_error(EBADF, std::system_category(), "coselect: fd is not open");
    }
    return ready;
  }

  // One poll() with a zero timeout on fd alone; errors read as "not ready" (a closed fd is
  // reported by the loop's own wait, or by poll_now).
  static bool ready_now(native_handle fd, bool for_write, short* revents = nullptr) noexcept {
    pollfd p{fd, static_cast<short>(for_write ? POLLOUT : POLLIN), 0};
    const bool ready = poll_for(&p, 1, std::chrono::nanoseconds::zero()) > 0 &&
                       (p.revents & (for_write ? poll_writable : poll_readable)) != 0;
    if (revents != nullptr) *revents = p.revents;
    return ready;
  }

  std::optional<std::chrono::nanoseconds> timeout_;
  Scheduler* scheduler_ = nullptr;
  waiter node_;
  cancel_point cancel_;
  bool stopped_ = false;  // cancelled by a stop request (not cancel_io)
};

// co_await of the untimed forms yields void.
struct untimed_fd_awaiter : fd_awaiter {
  using fd_awaiter::fd_awaiter;
  void await_resume() { (void)fd_awaiter::await_resume(); }
};

}  // namespace detail

// Cancellation points (DESIGN.md §8), all four: a stop while waiting unlinks the waiter from the
// reactor (and its timeout from the timers) and throws operation_canceled; the fd is untouched.

// co_await readable(fd): resumes on this scheduler once fd is readable.
inline detail::untimed_fd_awaiter readable(native_handle fd) noexcept {
  return {fd, false, std::nullopt};
}
// co_await writable(fd): resumes once fd is writable.
inline detail::untimed_fd_awaiter writable(native_handle fd) noexcept {
  return {fd, true, std::nullopt};
}

// co_await readable(fd, timeout) -> bool: false if the timeout passed first (<= 0 polls).
template <class Rep, class Period>
detail::fd_awaiter readable(native_handle fd, std::chrono::duration<Rep, Period> timeout) noexcept {
  return {fd, false, detail::saturating_ns(timeout)};
}
template <class Rep, class Period>
detail::fd_awaiter writable(native_handle fd, std::chrono::duration<Rep, Period> timeout) noexcept {
  return {fd, true, detail::saturating_ns(timeout)};
}

}  // namespace coselect
