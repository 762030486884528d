// coselect::JoinHandle: what Scheduler::spawn returns (DESIGN.md §8).
#pragma once

#include <coroutine>
#include <mutex>
#include <utility>

#include "detail/cancel_point.hpp"
#include "detail/frame_header.hpp"
#include "detail/wait_node.hpp"
#include "waitable_event.hpp"

namespace coselect {

// JoinHandle — a copyable reference to a spawned task.
//
// Contract
//  * Every member is thread-safe; copies refer to the same task. Default-constructed: empty,
//    done() true, cancel() a no-op, join() completes at once.
//  * cancel(): requests stop on the task's own stop token (nothing else stops it). The task
//    still starts if it has not yet; its pending or next suspending await throws
//    std::system_error(errc::operation_canceled). A task that ends with that exception is not
//    a failure. Cancelling a finished task does nothing.
//  * done(): the task has finished and its frame is gone.
//  * co_await join(): resumes on the awaiting coroutine's scheduler once the task has finished
//    (at once, without suspending, if it already has). It does not rethrow the task's failure
//    (that follows the scheduler's policy). Cancellation point: a stop of the joining
//    coroutine's token while it waits unlinks the joiner (the task keeps running) and throws
//    operation_canceled. Awaiting where no scheduler runs throws std::logic_error.
//  * Holding a handle keeps 16 bytes (plus, once used, a small control block) alive after the
//    task's frame is gone; nothing else.
class JoinHandle {
 public:
  class join_awaiter;

  JoinHandle() noexcept = default;
  // The first handle of a frame that no other thread sees yet, owned by `loop` (what
  // Scheduler::spawn makes).
  struct first_t {};
  JoinHandle(detail::frame_header& header, detail::loop_hooks& loop, first_t) noexcept
      : header_(&header), loop_(&loop) {
    header_->retain_unshared();
  }
  JoinHandle(const JoinHandle& other) noexcept : header_(other.header_), loop_(other.loop_) {
    if (header_ != nullptr) header_->retain();
  }
  JoinHandle(JoinHandle&& other) noexcept
      : header_(std::exchange(other.header_, nullptr)), loop_(other.loop_) {}
  JoinHandle& operator=(JoinHandle other) noexcept {
    std::swap(header_, other.header_);
    std::swap(loop_, other.loop_);
    return *this;
  }
  ~JoinHandle() {
    // The frame lets go of its header only on its loop's thread (Scheduler::finish_top_task,
    // or ~Scheduler while no run* is active): there, the last handle can let go without an
    // atomic read-modify-write (the common spawn-and-drop case).
    if (header_ != nullptr) header_->release_handle(detail::current_loop() == loop_);
  }

  void cancel() noexcept {
    if (header_ != nullptr) header_->cancel();
  }
  bool done() const noexcept { return header_ == nullptr || header_->done(); }
  join_awaiter join() const noexcept;

 private:
  detail::frame_header* header_ = nullptr;
  detail::loop_hooks* loop_ = nullptr;  // the scheduler that owns the task
};

class JoinHandle::join_awaiter {
 public:
  explicit join_awaiter(JoinHandle task) noexcept : task_(std::move(task)) {}
  join_awaiter(join_awaiter&& other) noexcept : task_(std::move(other.task_)) {}
  join_awaiter& operator=(join_awaiter&&) = delete;
  ~join_awaiter() {
    cancel_.disarm();
    if (control_ != nullptr) {
      std::lock_guard lock(control_->mutex);
      if (node_.linked) control_->unlink(node_);
    }
  }

  bool await_ready() {
    if (task_.done()) return true;
    node_.loop = detail::current_loop();
    if (node_.loop == nullptr) detail::throw_no_scheduler("JoinHandle::join()");
    return false;
  }

  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> h) {
    const std::stop_token* token = detail::stop_token_of(h);
    detail::cancel_point::check(token, kCanceled);
    control_ = &task_.header_->control_or_create();
    {
      std::lock_guard lock(control_->mutex);
      if (task_.done()) return false;
      node_.handle = h;
      control_->push_back(node_);
    }
    cancel_.arm(token, *node_.loop, &on_cancel, this);
    return true;
  }

  void await_resume() {
    cancel_.disarm();
    if (node_.outcome == detail::wait_outcome::canceled)
      detail::throw_operation_canceled(kCanceled);
  }

 private:
  static constexpr const char* kCanceled = "coselect::JoinHandle::join() canceled";

  static void on_cancel(void* self) noexcept {
    auto& a = *static_cast<join_awaiter*>(self);
    std::lock_guard lock(a.control_->mutex);
    if (!a.node_.linked) return;  // the task finished first: that outcome stands
    a.control_->unlink(a.node_);
    a.node_.outcome = detail::wait_outcome::canceled;
    a.node_.loop->make_ready(a.node_.handle);
  }

  JoinHandle task_;  // keeps the header alive while joining
  detail::join_control* control_ = nullptr;
  detail::join_waiter node_;
  detail::cancel_point cancel_;
};

inline JoinHandle::join_awaiter JoinHandle::join() const noexcept {
  return join_awaiter(*this);
}

}  // namespace coselect
