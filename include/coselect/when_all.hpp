// when_all: run tasks concurrently, collect their results.
#pragma once

#include <atomic>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <iterator>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "detail/cancel_point.hpp"
#include "task.hpp"

namespace coselect {

namespace detail {

// Counts finished children; the last one to finish resumes the parent (by symmetric transfer,
// on whatever thread it finished on). The extra count held by the starter keeps a child that
// finishes synchronously from resuming the parent before the parent has suspended.
struct when_all_latch {
  explicit when_all_latch(std::size_t children) noexcept : remaining(children + 1) {}
  std::atomic<std::size_t> remaining;
  std::coroutine_handle<> parent{};

  bool arrive() noexcept { return remaining.fetch_sub(1, std::memory_order_acq_rel) == 1; }
};

// A tiny coroutine per child: awaits the child's completion (without taking its result) and
// then counts down the latch.
struct when_all_notifier {
  struct promise_type {
    when_all_latch* latch = nullptr;
    when_all_notifier get_return_object() noexcept {
      return when_all_notifier{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() const noexcept { return {}; }
    struct final_awaiter {
      bool await_ready() const noexcept { return false; }
      std::coroutine_handle<> await_suspend(
          std::coroutine_handle<promise_type> self) const noexcept {
        when_all_latch& latch = *self.promise().latch;
        if (latch.arrive()) return latch.parent;
        return std::noop_coroutine();
      }
      void await_resume() const noexcept {}
    };
    final_awaiter final_suspend() const noexcept { return {}; }
    void return_void() const noexcept {}
    void unhandled_exception() const noexcept { std::terminate(); }  // joins never throw
  };

  explicit when_all_notifier(std::coroutine_handle<promise_type> h) noexcept : frame(h) {}
  when_all_notifier(when_all_notifier&& other) noexcept : frame(std::exchange(other.frame, {})) {}
  when_all_notifier& operator=(when_all_notifier&&) = delete;
  ~when_all_notifier() {
    if (frame) frame.destroy();
  }

  void start(when_all_latch& latch) {
    frame.promise().latch = &latch;
    frame.resume();
  }

  std::coroutine_handle<promise_type> frame;
};

// Awaits a task's completion without taking its value or exception.
template <class T>
struct completion_of {
  explicit completion_of(Task<T>& t) noexcept : task(t) {}
  Task<T>& task;
  bool await_ready() const noexcept { return !task.valid() || task.done(); }
  bool await_suspend(std::coroutine_handle<> awaiting) const {
    return task.handle().promise().start_awaited_by(task.handle(), awaiting);
  }
  void await_resume() const noexcept {}
};

template <class T>
when_all_notifier notify_when_done(Task<T>& task) {
  co_await completion_of<T>(task);
}

// Children run under `token` (the combinator's caller's, or when_any's own).
template <class T>
void run_under(Task<T>& task, const std::stop_token* token) noexcept {
  if (task.valid()) task.handle().promise().set_token(token);
}

template <class T>
struct is_task : std::false_type {};
template <class T>
struct is_task<Task<T>> : std::true_type {};

// Anything a range-for can walk whose elements are Tasks: standard containers and views, and
// range-v3 views (whose iterators need not model the std::ranges concepts).
template <class Range>
using range_task_t = std::remove_cvref_t<decltype(*std::begin(std::declval<Range&>()))>;
template <class Range>
concept task_range = requires(Range& r) {
  std::begin(r) != std::end(r);
}
&&is_task<range_task_t<Range>>::value;

// Moves the tasks out of `range` (an lvalue range is left holding empty tasks).
template <task_range Range>
auto collect_tasks(Range&& range) {
  std::vector<range_task_t<Range>> tasks;
  if constexpr (std::ranges::sized_range<Range>) tasks.reserve(std::ranges::size(range));
  for (auto&& t : range)
    tasks.push_back(std::move(t));
  return tasks;
}

// Starts every child and suspends the parent until all have finished.
struct when_all_starter {
  when_all_starter(std::vector<when_all_notifier>& n, when_all_latch& l) noexcept
      : notifiers(n), latch(l) {}
  std::vector<when_all_notifier>& notifiers;
  when_all_latch& latch;
  bool await_ready() const noexcept { return notifiers.empty(); }
  bool await_suspend(std::coroutine_handle<> parent) {
    latch.parent = parent;
    for (when_all_notifier& n : notifiers)
      n.start(latch);
    return !latch.arrive();  // all done synchronously: continue without suspending
  }
  void await_resume() const noexcept {}
};

template <class T>
using when_all_value = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

template <class T>
when_all_value<T> take_result(Task<T>& task) {
  if (!task.valid()) throw std::invalid_argument("coselect::when_all: empty task");
  if constexpr (std::is_void_v<T>) {
    task.handle().promise().take();
    return {};
  } else {
    return task.handle().promise().take();
  }
}

template <class T>
void rethrow_failure(Task<T>& task) {
  if (task.valid() && task.handle().promise().exception) {
    std::rethrow_exception(task.handle().promise().exception);
  }
}

}  // namespace detail

// co_await when_all(t1, t2, ...): runs the tasks concurrently, under the awaiting coroutine's
// stop token, and yields a tuple of their results (std::monostate for Task<void>). Not itself
// a cancellation point. If any failed, rethrows the first failure in
// argument order, after all have finished. The children run where their awaits take them;
// the awaiting coroutine continues on the thread where the last one finished (its own, if all
// finished before it suspended).
template <class... Ts>
Task<std::tuple<detail::when_all_value<Ts>...>> when_all(Task<Ts>... tasks) {
  detail::stop_token_holder* self = co_await detail::own_token_holder();
  (detail::run_under(tasks, self->token()), ...);
  std::vector<detail::when_all_notifier> notifiers;
  notifiers.reserve(sizeof...(Ts));
  (notifiers.push_back(detail::notify_when_done(tasks)), ...);
  detail::when_all_latch latch(sizeof...(Ts));
  co_await detail::when_all_starter(notifiers, latch);
  (detail::rethrow_failure(tasks), ...);
  co_return std::tuple<detail::when_all_value<Ts>...>(detail::take_result(tasks)...);
}

namespace detail {

// The coroutine behind when_all(range): it owns the tasks (a by-value parameter lives in the
// frame), so a temporary range may be gone before the result is awaited.
template <class T>
Task<std::conditional_t<std::is_void_v<T>, void, std::vector<T>>> when_all_tasks(
    std::vector<Task<T>> tasks) {
  stop_token_holder* self = co_await own_token_holder();
  std::vector<when_all_notifier> notifiers;
  notifiers.reserve(tasks.size());
  for (Task<T>& t : tasks) {
    run_under(t, self->token());
    notifiers.push_back(notify_when_done(t));
  }
  when_all_latch latch(tasks.size());
  co_await when_all_starter(notifiers, latch);
  for (Task<T>& t : tasks)
    rethrow_failure(t);
  if constexpr (std::is_void_v<T>) {
    co_return;
  } else {
    std::vector<T> results;
    results.reserve(tasks.size());
    for (Task<T>& t : tasks)
      results.push_back(take_result(t));
    co_return results;
  }
}

}  // namespace detail

// co_await when_all(range of Task<T>): a std::vector<T> in the range's order (void for
// Task<void>). Any input range of tasks works, range-v3 views included; the tasks are moved out
// of the range when when_all is called.
template <detail::task_range Range>
auto when_all(Range&& range) {
  using T = typename detail::range_task_t<Range>::value_type;
  return detail::when_all_tasks<T>(detail::collect_tasks(std::forward<Range>(range)));
}

}  // namespace coselect
