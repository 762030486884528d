// coselect::Task<T>: the coroutine type of coselect.
#pragma once

#include <atomic>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <variant>

#include "detail/cancel_point.hpp"
#include "detail/frame_header.hpp"

namespace coselect {

template <class T = void>
class Task;

namespace detail {

struct task_promise_base;

// Who learns that a task with no awaiting coroutine finished: the Scheduler, for the tasks it
// runs (run) or owns (spawn).
class task_owner {
 public:
  virtual void task_finished(task_promise_base& promise,
                             std::coroutine_handle<> frame) noexcept = 0;

 protected:
  ~task_owner() = default;
};

// How an awaited task hands control back. The awaiter resumes the child inside await_suspend;
// then the awaiter and the child's final_suspend both flip `handed_off`, and whichever comes
// second continues the awaiting coroutine: a child that finished synchronously lets the awaiter
// carry on in its own stack frame (so a loop of a million synchronous co_awaits uses constant
// stack even where GCC does not turn symmetric transfer into a tail call: -O0, ASan), and one
// that finished later, on any thread, resumes the awaiter by symmetric transfer.
//
// Stop tokens (DESIGN.md §8): the promise's token is the one of whoever awaits the task (the
// awaiter copies the pointer), so awaiting costs one pointer copy. A spawned task has its own,
// made when first needed if a JoinHandle to it still exists (stop_token_holder).
struct task_promise_base : stop_token_holder {
  // Who hears of the end: the coroutine awaiting the task, or, for a task at the top, the
  // scheduler that runs or owns it (`at_top`). A task is never both, so they share a word.
  union {
    std::coroutine_handle<> continuation{};
    task_owner* owner;  // read only when at_top
  };
  std::atomic<bool> handed_off{false};
  bool at_top = false;
  // Scheduler::spawn made it: its frame has a header (frame_header.hpp) with JoinHandles to
  // tell when it ends. Only spawned frames may use the header: a frame whose handle never
  // escapes (a Task created and awaited or run in one function) may have had its allocation
  // elided by the compiler (clang's HALO), and then there is no header in front of it.
  bool spawned = false;
  // How far this promise sits from the start of its frame: frame() derives the handle, which
  // every suspended coroutine would otherwise pay a word for. (The distance depends on the
  // promise's alignment and the compiler's frame layout, so the derived class measures it.)
  std::uint16_t frame_offset = 0;
  std::exception_ptr exception{};
  task_promise_base* owned_next = nullptr;  // the owner's list of frames it must destroy
  task_promise_base* owned_prev = nullptr;

  task_promise_base() = default;
  task_promise_base(const task_promise_base&) = delete;
  task_promise_base& operator=(const task_promise_base&) = delete;
  ~task_promise_base() {
    if (spawned) frame_header::of(frame().address()).finish();  // tell its JoinHandles
  }

  // This frame, type-erased.
  std::coroutine_handle<> frame() const noexcept {
    return std::coroutine_handle<>::from_address(
        const_cast<char*>(reinterpret_cast<const char*>(this)) - frame_offset);
  }
  void measure_frame_offset(const void* frame_address) noexcept {
    frame_offset = static_cast<std::uint16_t>(reinterpret_cast<const char*>(this) -
                                              static_cast<const char*>(frame_address));
  }

  static void* operator new(std::size_t size) { return frame_header::allocate(size); }
  static void operator delete(void* frame) noexcept { frame_header::deallocate(frame); }

  std::suspend_always initial_suspend() const noexcept { return {}; }

  struct final_awaiter {
    bool await_ready() const noexcept { return false; }
    template <class Promise>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<Promise> frame) const noexcept {
      task_promise_base& p = frame.promise();
      if (p.at_top) {
        if (p.owner != nullptr) p.owner->task_finished(p, frame);  // may destroy the frame
        return std::noop_coroutine();
      }
      if (p.continuation) {
        // Second to arrive: the awaiter has suspended, resume it. First: it is still inside
        // await_suspend and will continue by itself.
        if (p.handed_off.exchange(true, std::memory_order_acq_rel)) return p.continuation;
        return std::noop_coroutine();
      }
      return std::noop_coroutine();
    }
    void await_resume() const noexcept {}
  };
  final_awaiter final_suspend() const noexcept { return {}; }

  void unhandled_exception() noexcept { exception = std::current_exception(); }

  // Starts this (lazy) task on behalf of `awaiting`; returns whether `awaiting` must suspend
  // (false: the task already finished, carry on).
  bool start_awaited_by(std::coroutine_handle<> self, std::coroutine_handle<> awaiting) {
    continuation = awaiting;
    self.resume();
    return !handed_off.exchange(true, std::memory_order_acq_rel);
  }
};

template <class T>
struct task_promise : task_promise_base {
  std::variant<std::monostate, T> value;

  task_promise() noexcept {
    measure_frame_offset(std::coroutine_handle<task_promise>::from_promise(*this).address());
  }

  Task<T> get_return_object() noexcept;

  template <class U = T>
  requires std::is_convertible_v<U&&, T>
  void return_value(U&& v) { value.template emplace<1>(std::forward<U>(v)); }

  T take() {
    if (exception) std::rethrow_exception(exception);
    return std::move(std::get<1>(value));
  }
};

template <>
struct task_promise<void> : task_promise_base {
  task_promise() noexcept {
    measure_frame_offset(std::coroutine_handle<task_promise>::from_promise(*this).address());
  }
  Task<void> get_return_object() noexcept;
  void return_void() const noexcept {}
  void take() const {
    if (exception) std::rethrow_exception(exception);
  }
};

}  // namespace detail

// Task<T> — a lazy coroutine producing T (or void).
//
// Contract: nothing runs until the task is co_awaited, handed to Scheduler::run, or spawned.
// `co_await task` starts it by symmetric transfer and resumes the awaiter, on whatever thread
// the task finished on, with its value or its exception. The task runs under the stop token of
// the awaiting coroutine (DESIGN.md §8); awaiting a task is not itself a cancellation point
// (its own awaits are). Move-only; destroying a Task that has
// not finished destroys its frame (and, through the frame, the tasks it awaits). Not
// thread-safe: one owner at a time.
template <class T>
class [[nodiscard]] Task {
 public:
  using promise_type = detail::task_promise<T>;
  using value_type = T;

  Task() noexcept = default;
  explicit Task(std::coroutine_handle<promise_type> frame) noexcept : frame_(frame) {}
  Task(Task&& other) noexcept : frame_(std::exchange(other.frame_, {})) {}
  Task& operator=(Task&& other) noexcept {
    if (this != &other) {
      reset();
      frame_ = std::exchange(other.frame_, {});
    }
    return *this;
  }
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;
  ~Task() { reset(); }

  bool valid() const noexcept { return static_cast<bool>(frame_); }
  bool done() const noexcept { return frame_ && frame_.done(); }

  auto operator co_await() && noexcept { return awaiter{frame_}; }
  auto operator co_await() & noexcept { return awaiter{frame_}; }

  // For schedulers and combinators: give up ownership of the frame.
  std::coroutine_handle<promise_type> release() noexcept { return std::exchange(frame_, {}); }
  std::coroutine_handle<promise_type> handle() const noexcept { return frame_; }

 private:
  struct awaiter {
    std::coroutine_handle<promise_type> frame;
    bool await_ready() const noexcept { return !frame || frame.done(); }
    template <class Promise>
    bool await_suspend(std::coroutine_handle<Promise> awaiting) const {
      if constexpr (std::is_base_of_v<detail::stop_token_holder, Promise>) {
        frame.promise().set_token(awaiting.promise().token());  // the task inherits it
      }
      return frame.promise().start_awaited_by(frame, awaiting);
    }
    T await_resume() const {
      if (!frame) throw std::logic_error("coselect::Task: awaiting an empty task");
      return frame.promise().take();
    }
  };

  void reset() noexcept {
    if (frame_) std::exchange(frame_, {}).destroy();
  }

  std::coroutine_handle<promise_type> frame_{};
};

namespace detail {
template <class T>
Task<T> task_promise<T>::get_return_object() noexcept {
  return Task<T>(std::coroutine_handle<task_promise<T>>::from_promise(*this));
}
inline Task<void> task_promise<void>::get_return_object() noexcept {
  return Task<void>(std::coroutine_handle<task_promise<void>>::from_promise(*this));
}
}  // namespace detail

}  // namespace coselect
