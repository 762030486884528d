// Thread hand-offs: resume_on(scheduler), run_in_thread(f), and the pool behind the latter.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <coroutine>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stop_token>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "scheduler.hpp"

namespace coselect {

// ThreadPool — the bounded set of worker threads that run_in_thread uses.
//
// Threads start lazily, one per job that finds no idle worker, up to max_threads(); further
// jobs queue (FIFO). submit() is thread-safe. If no thread can be started and none exists,
// submit() throws std::system_error. The destructor runs the queued jobs, then joins.
class ThreadPool {
 public:
  explicit ThreadPool(std::size_t max_threads = default_size())
      : max_threads_(std::max<std::size_t>(1, max_threads)) {}
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  ~ThreadPool() {
    {
      std::lock_guard lock(mutex_);
      closing_ = true;
    }
    work_.notify_all();
    for (std::thread& t : threads_)
      t.join();
  }

  static std::size_t default_size() noexcept {
    return std::max<std::size_t>(4, std::thread::hardware_concurrency());
  }

  // The pool run_in_thread(f) uses when given none; sized default_size().
  static ThreadPool& shared() {
    static ThreadPool pool;
    return pool;
  }

  std::size_t max_threads() const noexcept { return max_threads_; }

  std::size_t thread_count() const {
    std::lock_guard lock(mutex_);
    return threads_.size();
  }

  template <class F>
  void submit(F&& job) {
    std::unique_lock lock(mutex_);
    jobs_.emplace_back(std::forward<F>(job));
    if (idle_ >= jobs_.size() || threads_.size() >= max_threads_) {
      lock.unlock();
      work_.notify_one();
      return;
    }
    try {
      threads_.emplace_back([this] { work(); });
    } catch (...) {
      if (threads_.empty()) {
        jobs_.pop_back();
        throw;  // nobody would ever run it
      }
      // Some worker exists: the job waits for it.
    }
  }

 private:
  void work() {
    std::unique_lock lock(mutex_);
    for (;;) {
      ++idle_;
      work_.wait(lock, [this] { return closing_ || !jobs_.empty(); });
      --idle_;
      if (jobs_.empty()) return;  // closing, nothing left
      std::function<void()> job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      job();
      job = nullptr;
      lock.lock();
    }
  }

  const std::size_t max_threads_;
  mutable std::mutex mutex_;
  std::condition_variable work_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  std::size_t idle_ = 0;
  bool closing_ = false;
};

namespace detail {

// Moves the awaiting coroutine onto `target`'s loop thread.
struct resume_on_awaiter {
  Scheduler& target;
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) { target.tasks().resume(h); }
  void await_resume() const noexcept {}
};

template <class F>
class run_in_thread_awaiter {
 public:
  static constexpr bool takes_token = std::is_invocable_v<F&, std::stop_token>;
  using result_type =
      typename std::conditional_t<takes_token, std::invoke_result<F&, std::stop_token>,
                                  std::invoke_result<F&>>::type;

  run_in_thread_awaiter(F f, ThreadPool& pool) : function_(std::move(f)), pool_(pool) {}
  run_in_thread_awaiter(const run_in_thread_awaiter&) = delete;
  run_in_thread_awaiter& operator=(const run_in_thread_awaiter&) = delete;

  bool await_ready() {
    scheduler_ = &scheduler_access::current_or_throw("run_in_thread()");
    return false;
  }

  template <class Promise>
  void await_suspend(std::coroutine_handle<Promise> h) {
    // Not a cancellation point: f gets the awaiting coroutine's token (if it takes one), which
    // a std::stop_token copy shares, so it is stopped exactly when the coroutine's is.
    if (const std::stop_token* t = stop_token_of(h)) token_ = *t;
    // Virtual time must not jump while a thread does real work for this loop: that count drops
    // in await_resume, on the loop thread. The job count keeps the scheduler (and with it this
    // frame) alive until the worker's last touch: ~Scheduler waits for it.
    scheduler_access::job_started(*scheduler_);
    scheduler_access::begin_external_work(*scheduler_);
    try {
      pool_.submit([this, h, loop = scheduler_] {
        try {
          if constexpr (std::is_void_v<result_type>) {
            call();
            result_.template emplace<1>();
          } else {
            result_.template emplace<1>(call());
          }
        } catch (...) {
          result_.template emplace<2>(std::current_exception());
        }
        loop->tasks().resume(h);
        scheduler_access::job_ended(*loop);  // last touch: `this` and `loop` may go now
      });
    } catch (...) {
      scheduler_access::job_ended(*scheduler_);
      scheduler_access::end_external_work(*scheduler_);
      throw;  // reported to the awaiting coroutine
    }
  }

  result_type await_resume() {
    scheduler_access::end_external_work(*scheduler_);
    if (result_.index() == 2) std::rethrow_exception(std::get<2>(result_));
    if constexpr (!std::is_void_v<result_type>) return std::move(std::get<1>(result_));
  }

 private:
  using stored = std::conditional_t<std::is_void_v<result_type>, std::monostate, result_type>;

  result_type call() {
    if constexpr (takes_token) {
      return function_(token_);
    } else {
      return function_();
    }
  }

  F function_;
  std::stop_token token_;
  ThreadPool& pool_;
  Scheduler* scheduler_ = nullptr;
  std::variant<std::monostate, stored, std::exception_ptr> result_;
};

}  // namespace detail

// co_await resume_on(s): continue on s's loop thread (queued if s is not running yet). Not a
// cancellation point: it always moves (a stop takes effect at the next cancellation point).
inline detail::resume_on_awaiter resume_on(Scheduler& target) noexcept {
  return {target};
}

// co_await run_in_thread(f): runs blocking f on a pool thread and resumes on this scheduler's
// thread with its result or exception. Calls in flight run in parallel, up to the pool's size.
// Not a cancellation point: f always runs to its end. If f is invocable with a std::stop_token,
// it gets one that is (or becomes) stopped when the awaiting coroutine's token is.
template <class F>
detail::run_in_thread_awaiter<std::decay_t<F>> run_in_thread(F&& f) {
  return {std::forward<F>(f), ThreadPool::shared()};
}
template <class F>
detail::run_in_thread_awaiter<std::decay_t<F>> run_in_thread(ThreadPool& pool, F&& f) {
  return {std::forward<F>(f), pool};
}

}  // namespace coselect
