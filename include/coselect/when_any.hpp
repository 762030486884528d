// when_any: race tasks, keep the first to finish, stop the others (DESIGN.md §8).
#pragma once

#include <atomic>
#include <cstddef>
#include <limits>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <utility>
#include <variant>
#include <vector>

#include "cancel.hpp"
#include "task.hpp"
#include "when_all.hpp"

namespace coselect {

namespace detail {

// The children's shared stop source (following the caller's token) and who finished first.
struct when_any_race {
  static constexpr std::size_t none = std::numeric_limits<std::size_t>::max();

  explicit when_any_race(const std::stop_token* caller) : stop(caller) {}

  // Any thread, once per child: the first to arrive wins and stops the others.
  void finished(std::size_t index) noexcept {
    std::size_t expected = none;
    if (winner.compare_exchange_strong(expected, index, std::memory_order_acq_rel)) {
      stop.source().request_stop();
    }
  }

  linked_stop_source stop;
  std::atomic<std::size_t> winner{none};
};

template <class T>
when_all_notifier notify_race(Task<T>& task, when_any_race& race, std::size_t index) {
  co_await completion_of<T>(task);
  race.finished(index);
}

template <class V, std::size_t... I, class... Ts>
V take_winner(std::size_t winner, std::index_sequence<I...>, Task<Ts>&... tasks) {
  std::optional<V> out;
  ((I == winner ? (void)out.emplace(std::in_place_index<I>, take_result(tasks)) : void()), ...);
  return std::move(*out);
}

template <class T>
using when_any_range_result =
    std::conditional_t<std::is_void_v<T>, std::size_t, std::pair<std::size_t, T>>;

template <class T>
Task<when_any_range_result<T>> when_any_tasks(std::vector<Task<T>> tasks) {
  stop_token_holder* self = co_await own_token_holder();
  when_any_race race(stoppable(self));
  std::vector<when_all_notifier> notifiers;
  notifiers.reserve(tasks.size());
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    run_under(tasks[i], race.stop.token());
    notifiers.push_back(notify_race(tasks[i], race, i));
  }
  when_all_latch latch(tasks.size());
  co_await when_all_starter(notifiers, latch);
  const std::size_t winner = race.winner.load(std::memory_order_acquire);
  if constexpr (std::is_void_v<T>) {
    take_result(tasks[winner]);
    co_return winner;
  } else {
    T value = take_result(tasks[winner]);
    co_return std::pair<std::size_t, T>(winner, std::move(value));
  }
}

}  // namespace detail

// co_await when_any(t1, t2, ...) -> std::variant<T1, T2, ...> (std::monostate for void), whose
// index() is the winner: starts every task, in argument order, under a token that the caller's
// token stops too; the first to finish (value or exception) wins and the others are stopped.
// Resumes only after every task has ended (no orphans), where the last one ended; returns the
// winner's value or rethrows its exception; the losers' outcomes are dropped. Not itself a
// cancellation point: a caller's stop reaches the tasks, and the first of them to end wins.
template <class... Ts>
requires(sizeof...(Ts) >
         0) Task<std::variant<detail::when_all_value<Ts>...>> when_any(Task<Ts>... tasks) {
  detail::stop_token_holder* self = co_await detail::own_token_holder();
  detail::when_any_race race(detail::stoppable(self));
  (detail::run_under(tasks, race.stop.token()), ...);
  std::vector<detail::when_all_notifier> notifiers;
  notifiers.reserve(sizeof...(Ts));
  std::size_t index = 0;
  (notifiers.push_back(detail::notify_race(tasks, race, index++)), ...);
  detail::when_all_latch latch(sizeof...(Ts));
  co_await detail::when_all_starter(notifiers, latch);
  co_return detail::take_winner<std::variant<detail::when_all_value<Ts>...>>(
      race.winner.load(std::memory_order_acquire), std::index_sequence_for<Ts...>{}, tasks...);
}

// co_await when_any(range of Task<T>) -> std::pair<std::size_t, T> (the winner's position and
// value; just the position for Task<void>). Same rules as the variadic form. Any input range of
// tasks works, range-v3 views included; the tasks are moved out of the range when when_any is
// called, which throws std::invalid_argument if there are none.
template <detail::task_range Range>
auto when_any(Range&& range) {
  using T = typename detail::range_task_t<Range>::value_type;
  auto tasks = detail::collect_tasks(std::forward<Range>(range));
  if (tasks.empty()) throw std::invalid_argument("coselect::when_any: no tasks");
  return detail::when_any_tasks<T>(std::move(tasks));
}

}  // namespace coselect
