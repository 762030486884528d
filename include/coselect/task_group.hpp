// coselect::TaskGroup: structured concurrency, like Python's asyncio.TaskGroup (DESIGN.md §8).
#pragma once

#include <coroutine>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>
#include <stop_token>
#include <utility>

#include "detail/cancel_point.hpp"
#include "detail/wait_node.hpp"
#include "scheduler.hpp"
#include "task.hpp"

namespace coselect {

namespace detail {

// What a group and its children share; the children keep it alive after the group is gone.
struct task_group_state {
  std::stop_source source;  // the children's token: cancel(), a failure, a stopped join
  std::stop_token token = source.get_token();
  std::mutex mutex;  // guards the rest
  std::size_t running = 0;
  std::exception_ptr failure;  // the first one
  bool detached = false;       // the TaskGroup object is gone
  std::coroutine_handle<> joiner{};
  loop_hooks* joiner_loop = nullptr;

  // A child ended (on any thread), with `error` or none. Returns the error if it must follow
  // the scheduler's policy (the group is gone), else null.
  std::exception_ptr child_ended(std::exception_ptr error) noexcept {
    // A child ending with the group's own stop did not fail.
    if (error && token.stop_requested() && is_operation_canceled(error)) error = nullptr;
    bool stop_others = false;
    std::exception_ptr escalate;
    {
      std::lock_guard lock(mutex);
      --running;
      if (error && detached) {
        escalate = error;
      } else if (error && !failure) {
        failure = error;
        stop_others = true;
      }
      if (running == 0 && joiner) {
        joiner_loop->resume_soon(std::exchange(joiner, {}));
      }
    }
    if (stop_others) source.request_stop();  // never under the lock: callbacks run inline
    return escalate;
  }
};

inline Task<void> group_child(Task<void> child, std::shared_ptr<task_group_state> group) {
  std::exception_ptr error;
  try {
    co_await child;
  } catch (...) {
    error = std::current_exception();
  }
  child = Task<void>();  // the child's frame goes before the group hears of its end
  if (std::exception_ptr escalate = group->child_ended(std::move(error))) {
    std::rethrow_exception(escalate);
  }
  co_return;
}

}  // namespace detail

// TaskGroup — children that end together (asyncio.TaskGroup).
//
// Contract
//  * Construct it inside a coroutine running on a scheduler (std::logic_error otherwise); its
//    children start on that scheduler (never inline) and run under the group's stop token
//    (not the spawning coroutine's). Members are thread-safe.
//  * A child that fails stops the others at once; the group keeps the first failure (later ones
//    are dropped). A child ending with the operation_canceled of the group's own stop did not
//    fail. Children's failures belong to the group, never to the scheduler's policy.
//  * cancel(): stops every child (and any spawned later: they start already stopped).
//  * co_await join(): resumes, on the joining coroutine's scheduler, once every child has ended,
//    then rethrows the first failure. With no child running it completes at once (rethrowing a
//    recorded failure). Cancellation point of its own kind: it never throws before the children
//    have ended. A stop of the joining coroutine's token (before or during the wait) stops every
//    child, waits for all of them, then throws operation_canceled, or the first failure if one
//    happened (a failure outranks the cancellation).
//  * Destroying a group whose children still run stops them; they stay owned by the scheduler
//    until they end, and a failure other than that stop then follows the scheduler's policy.
class TaskGroup {
 public:
  class join_awaiter;

  TaskGroup()
      : scheduler_(detail::scheduler_access::current_or_throw("TaskGroup")),
        state_(std::make_shared<detail::task_group_state>()) {}
  TaskGroup(const TaskGroup&) = delete;
  TaskGroup& operator=(const TaskGroup&) = delete;
  ~TaskGroup() {
    bool running = false;
    {
      std::lock_guard lock(state_->mutex);
      state_->detached = true;
      running = state_->running != 0;
    }
    if (running) state_->source.request_stop();
  }

  // Starts `t` on the group's scheduler (from any thread). Empty task: std::invalid_argument.
  void spawn(Task<void> t) {
    if (!t.valid()) throw std::invalid_argument("coselect::TaskGroup::spawn: empty task");
    {
      std::lock_guard lock(state_->mutex);
      ++state_->running;
    }
    try {
      detail::scheduler_access::spawn_under(scheduler_, detail::group_child(std::move(t), state_),
                                            &state_->token);
    } catch (...) {
      std::lock_guard lock(state_->mutex);
      --state_->running;
      throw;
    }
  }

  void cancel() noexcept { state_->source.request_stop(); }

  join_awaiter join() noexcept;

 private:
  Scheduler& scheduler_;
  std::shared_ptr<detail::task_group_state> state_;
};

class TaskGroup::join_awaiter {
 public:
  explicit join_awaiter(std::shared_ptr<detail::task_group_state> state) noexcept
      : state_(std::move(state)) {}
  join_awaiter(join_awaiter&& other) noexcept : state_(std::move(other.state_)) {}
  join_awaiter& operator=(join_awaiter&&) = delete;
  ~join_awaiter() {
    cancel_.disarm();
    if (waiting_) {  // the frame dies while joining
      std::lock_guard lock(state_->mutex);
      if (state_->joiner == handle_) state_->joiner = {};
    }
  }

  bool await_ready() {
    loop_ = detail::current_loop();
    if (loop_ == nullptr) detail::throw_no_scheduler("TaskGroup::join()");
    std::lock_guard lock(state_->mutex);
    return state_->running == 0;
  }

  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> h) {
    {
      std::lock_guard lock(state_->mutex);
      if (state_->running == 0) return false;
      handle_ = h;
      state_->joiner = h;
      state_->joiner_loop = loop_;
      waiting_ = true;
    }
    // A stop already requested runs on_cancel right here.
    cancel_.arm(detail::stop_token_of(h), *loop_, &on_cancel, this);
    return true;
  }

  void await_resume() {
    cancel_.disarm();
    waiting_ = false;
    std::exception_ptr failure;
    {
      std::lock_guard lock(state_->mutex);
      failure = state_->failure;
    }
    if (failure) std::rethrow_exception(failure);
    if (stopped_) detail::throw_operation_canceled("coselect::TaskGroup::join() canceled");
  }

 private:
  // The joining coroutine's stop: stop the children, and go on waiting for them.
  static void on_cancel(void* self) noexcept {
    auto& a = *static_cast<join_awaiter*>(self);
    a.stopped_ = true;
    a.state_->source.request_stop();
  }

  std::shared_ptr<detail::task_group_state> state_;
  detail::loop_hooks* loop_ = nullptr;
  std::coroutine_handle<> handle_{};
  detail::cancel_point cancel_;
  bool waiting_ = false;
  bool stopped_ = false;
};

inline TaskGroup::join_awaiter TaskGroup::join() noexcept {
  return join_awaiter(state_);
}

}  // namespace coselect
