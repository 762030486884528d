// Cancellation awaitables (DESIGN.md §8): get_stop_token, with_stop_token, with_timeout.
#pragma once

#include <atomic>
#include <chrono>
#include <coroutine>
#include <exception>
#include <optional>
#include <stop_token>
#include <type_traits>
#include <utility>

#include "detail/cancel_point.hpp"
#include "detail/syscall.hpp"
#include "scheduler.hpp"
#include "task.hpp"

namespace coselect {

namespace detail {

// What `co_await a` yields, for an lvalue `a` of type A.
template <class A>
decltype(auto) awaiter_of(A& a) {
  if constexpr (requires { a.operator co_await(); }) {
    return a.operator co_await();
  } else if constexpr (requires { operator co_await(a); }) {
    return operator co_await(a);
  } else {
    return (a);
  }
}
template <class A>
using await_result_t = std::remove_cvref_t<decltype(awaiter_of(std::declval<A&>()).await_resume())>;

// A stop source that follows a caller's token: stopped when it is (or at once, if it is).
class linked_stop_source {
 public:
  explicit linked_stop_source(const std::stop_token* caller) {
    if (caller != nullptr) follow_.emplace(*caller, stopper{source_});
  }
  std::stop_source& source() noexcept { return source_; }
  const std::stop_token* token() const noexcept { return &token_; }
  // Also follow `other`.
  void follow(const std::stop_token& other) { also_.emplace(other, stopper{source_}); }

 private:
  struct stopper {
    std::stop_source& source;
    void operator()() const noexcept { source.request_stop(); }
  };
  std::stop_source source_;
  std::stop_token token_ = source_.get_token();
  std::optional<std::stop_callback<stopper>> follow_;
  std::optional<std::stop_callback<stopper>> also_;
};

struct get_stop_token_awaiter : own_token_holder {
  std::stop_token await_resume() const {
    const std::stop_token* t = holder != nullptr ? holder->token() : nullptr;
    return t != nullptr ? *t : std::stop_token{};
  }
};

}  // namespace detail

// co_await get_stop_token(): the std::stop_token the awaiting task runs under (an empty one,
// never stopped, where nothing can stop it, e.g. in run()'s task or outside a Task). Never
// suspends; not a cancellation point.
inline detail::get_stop_token_awaiter get_stop_token() noexcept {
  return {};
}

// co_await with_stop_token(token, a): awaits `a` (any awaitable: a Task, ev.wait(), sleep_for,
// readable...) under a token stopped by `token` or by the caller's own, and returns its result
// (or rethrows its exception). The await of `a` begins at once, in the caller's turn. It stops
// nothing by itself: what a stop does is what `a` does with it (a built-in cancellation point
// throws operation_canceled and leaves nothing behind). Resumes where `a` resumes.
template <class A>
Task<detail::await_result_t<A>> with_stop_token(std::stop_token token, A a) {
  detail::stop_token_holder* self = co_await detail::own_token_holder();
  const std::stop_token* caller = detail::stoppable(self);
  if (caller == nullptr) {
    self->set_token(&token);  // nothing else can stop us: no stop source needed
  } else {
    detail::linked_stop_source both(caller);
    both.follow(token);
    self->set_token(both.token());
    co_return co_await a;
  }
  co_return co_await a;
}

template <class T>
using timeout_result_t = std::conditional_t<std::is_void_v<T>, bool, std::optional<T>>;

// co_await with_timeout(d, a) -> std::optional<T> (bool when `a` yields void): awaits `a` (any
// awaitable) under a token stopped when the scheduler's clock (real or virtual) has advanced by
// d, or by the caller's own token. Returns a's result, even one produced after the deadline;
// only if `a` ended by throwing the operation_canceled the deadline caused does it return
// std::nullopt (false). A cancellation that came from the caller's token propagates (also when
// the deadline passed too), as does any other exception; so nested timeouts compose. Returns
// only after `a` has ended (a that ignores the stop runs on). The await of `a` begins at once,
// in the caller's turn. Needs a running Scheduler (std::logic_error otherwise); the deadline
// runs on the loop that was current when the await began.
template <class Rep, class Period, class A>
Task<timeout_result_t<detail::await_result_t<A>>> with_timeout(std::chrono::duration<Rep, Period> d,
                                                               A a) {
  using T = detail::await_result_t<A>;
  detail::stop_token_holder* self = co_await detail::own_token_holder();
  Scheduler& loop = detail::scheduler_access::current_or_throw("with_timeout()");
  const std::stop_token* caller = detail::stoppable(self);
  detail::linked_stop_source deadline(caller);
  std::atomic<bool> expired{false};
  TaskHandle timer = loop.tasks().call_later(detail::saturating_ns(d), [&deadline, &expired] {
    expired.store(true, std::memory_order_release);
    deadline.source().request_stop();
  });
  struct disarm_on_exit {  // also when the frame is destroyed mid-way (with its scheduler)
    TaskHandle& timer;
    ~disarm_on_exit() { timer.suspend(); }
  } disarm{timer};
  self->set_token(deadline.token());
  std::exception_ptr failure;
  std::optional<std::conditional_t<std::is_void_v<T>, bool, T>> result;
  try {
    if constexpr (std::is_void_v<T>) {
      co_await a;
      result.emplace(true);
    } else {
      T value = co_await a;
      result.emplace(std::move(value));
    }
  } catch (...) {
    failure = std::current_exception();
  }
  self->set_token(caller);
  if (failure) {
    const bool ours = expired.load(std::memory_order_acquire) &&
                      !(caller != nullptr && caller->stop_requested()) &&
                      detail::is_operation_canceled(failure);
    if (!ours) std::rethrow_exception(failure);
    if constexpr (std::is_void_v<T>) {
      co_return false;
    } else {
      co_return std::nullopt;
    }
  }
  if constexpr (std::is_void_v<T>) {
    co_return true;
  } else {
    co_return std::move(result);
  }
}

}  // namespace coselect
