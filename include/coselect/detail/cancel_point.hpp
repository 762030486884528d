// The one piece of cancellation machinery every suspending awaitable uses (DESIGN.md §8).
//
// A coroutine's stop token travels in its promise as a pointer (stop_token_holder, in
// frame_header.hpp): null means "nothing can ever stop this coroutine", and then a wait
// registers nothing and costs nothing.
// An awaitable that suspends arms a cancel_point after linking its waiter; a stop request then
// runs the awaitable's `cancel` function exactly once, on the waiter's own loop thread: at once
// when request_stop() runs on that thread, otherwise through the loop's cancel inbox (which
// wakes it). `cancel` decides, with everything else the loop does to that waiter, whether the
// wait still pends: if so it unlinks the waiter and resumes it marked canceled; if the waiter
// was already released, the normal outcome stands. When the wait ends (or its frame dies),
// disarm() guarantees `cancel` will not run any more.
#pragma once

#include <atomic>
#include <coroutine>
#include <exception>
#include <optional>
#include <stop_token>
#include <system_error>
#include <type_traits>
#include <utility>

#include "frame_header.hpp"
#include "wait_node.hpp"

namespace coselect::detail {

// The token behind a holder (frame_header.hpp), if it can ever be stopped.
inline const std::stop_token* stoppable(stop_token_holder* h) {
  const std::stop_token* t = h != nullptr ? h->token() : nullptr;
  return t != nullptr && t->stop_possible() ? t : nullptr;
}

// The token of the coroutine behind `h`, or null if it has none that can ever be stopped.
template <class Promise>
const std::stop_token* stop_token_of(std::coroutine_handle<Promise> h) {
  if constexpr (std::is_base_of_v<stop_token_holder, Promise>) {
    return stoppable(&h.promise());
  } else {
    return nullptr;
  }
}

// co_await own_token_holder(): the awaiting coroutine's stop_token_holder (null for coroutine
// types that have none), without suspending. Combinators use it to read or replace the token
// their children inherit. (A constructor, not brace initialisation: GCC 12.2 mishandles
// co_await of brace-initialised aggregates.)
struct own_token_holder {
  own_token_holder() noexcept {}
  stop_token_holder* holder = nullptr;
  bool await_ready() const noexcept { return false; }
  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> h) noexcept {
    if constexpr (std::is_base_of_v<stop_token_holder, Promise>) holder = &h.promise();
    return false;
  }
  stop_token_holder* await_resume() const noexcept { return holder; }
};

[[noreturn, gnu::noinline, gnu::cold]] inline void throw_operation_canceled(const char* what) {
  throw std::system_error(std::make_error_code(std::errc::operation_canceled), what);
}

// True if `e` is std::system_error(errc::operation_canceled).
inline bool is_operation_canceled(const std::exception_ptr& e) noexcept {
  if (!e) return false;
  try {
    std::rethrow_exception(e);
  } catch (const std::system_error& error) {
    return error.code() == std::errc::operation_canceled;
  } catch (...) {
  }
  return false;
}

// An awaitable's reaction to a stop, on the loop thread: end the wait as canceled if it still
// pends (see the file comment).
using cancel_fn = void (*)(void* awaiter) noexcept;

// A wait that a stop token can end: what the loop's cancel inbox holds. Allocated by
// cancel_point::arm only when the awaiting coroutine's token can be stopped.
class cancel_request {
 public:
  cancel_request(loop_hooks& loop, cancel_fn cancel, void* awaiter) noexcept
      : loop_(loop), cancel_(cancel), awaiter_(awaiter) {}
  cancel_request(const cancel_request&) = delete;
  cancel_request& operator=(const cancel_request&) = delete;

  // Registers on `token`; the callback may run before this returns.
  void listen(const std::stop_token& token) { callback_.emplace(token, callback{this}); }

  // Afterwards the callback never runs; waits for one running on another thread to return.
  void stop_listening() noexcept {
    callback_.reset();
    if (queued.load(std::memory_order_acquire)) loop_.unqueue_cancel(*this);
  }

  // Loop thread: the stop request reaches the awaiter.
  void deliver() noexcept { cancel_(awaiter_); }

  // For the loop (loop_hooks): its inbox of requests from other threads.
  cancel_request* inbox_next = nullptr;
  cancel_request* inbox_prev = nullptr;
  std::atomic<bool> queued{false};  // in the loop's inbox (written under the inbox's lock)

 private:
  struct callback {
    cancel_request* self;
    void operator()() const noexcept {
      if (current_loop() == &self->loop_) {
        self->deliver();
      } else {
        self->loop_.queue_cancel(*self);
      }
    }
  };

  loop_hooks& loop_;
  cancel_fn cancel_;
  void* awaiter_;
  std::optional<std::stop_callback<callback>> callback_;
};

// Lives inside an awaiter while its coroutine waits: one pointer, null unless the awaiting
// coroutine's token can be stopped. Not movable once armed.
class cancel_point {
 public:
  cancel_point() = default;
  // Awaiters move before they are awaited, never while armed: a move starts unarmed.
  cancel_point(cancel_point&&) noexcept {}
  cancel_point(const cancel_point&) = delete;
  cancel_point& operator=(const cancel_point&) = delete;
  ~cancel_point() { disarm(); }

  // Before suspending: throws operation_canceled if `token` is already stopped (an await that
  // would suspend throws at once, with nothing linked).
  static void check(const std::stop_token* token, const char* what) {
    if (token != nullptr && token->stop_requested()) throw_operation_canceled(what);
  }

  // After the waiter is linked on `loop` (the calling thread's running loop). With a null token,
  // does nothing. `cancel` may run before arm() returns, if the token is being stopped now.
  // Throws std::bad_alloc (the caller unlinks its waiter).
  void arm(const std::stop_token* token, loop_hooks& loop, cancel_fn cancel, void* awaiter) {
    if (token == nullptr) return;
    request_ = new cancel_request(loop, cancel, awaiter);
    request_->listen(*token);
  }

  // Loop thread, when the wait has ended or its frame is being destroyed: afterwards `cancel`
  // never runs. Waits for a stop callback running on another thread right now to return.
  void disarm() noexcept {
    if (request_ != nullptr) drop_request();  // the common case is one test, inlined
  }

  // The wait has ended: disarm(), then throw operation_canceled (`what`) if it was cancelled.
  void end(bool canceled, const char* what) {
    disarm();
    if (canceled) [[unlikely]]
      throw_operation_canceled(what);
  }

 private:
  [[gnu::noinline]] void drop_request() noexcept {
    request_->stop_listening();
    delete std::exchange(request_, nullptr);
  }

  cancel_request* request_ = nullptr;
};

}  // namespace coselect::detail
