// The floor for single-threaded coroutine work: a bare FIFO ready-queue of coroutine handles,
// a fire-and-forget coroutine type, and a flag-plus-waiter-list event. No system calls, no
// timers, no thread safety: the least any coroutine runtime must do.
#pragma once

#include <coroutine>
#include <deque>
#include <exception>
#include <vector>

namespace floor_rt {

struct Loop {
  std::deque<std::coroutine_handle<>> ready;

  void run() {
    while (!ready.empty()) {
      std::coroutine_handle<> h = ready.front();
      ready.pop_front();
      h.resume();
    }
  }
};

// Lazily started, detached: the frame frees itself at the end.
struct Job {
  struct promise_type {
    Job get_return_object() noexcept {
      return Job{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() const noexcept { return {}; }
    std::suspend_never final_suspend() const noexcept { return {}; }
    void return_void() const noexcept {}
    void unhandled_exception() const noexcept { std::terminate(); }
  };
  std::coroutine_handle<promise_type> handle;
};

inline void spawn(Loop& loop, Job job) {
  loop.ready.push_back(job.handle);
}

// Manual-reset event: set() moves every waiter to the ready queue.
struct Event {
  explicit Event(Loop& l) : loop(l) {}

  Loop& loop;
  bool flag = false;
  std::vector<std::coroutine_handle<>> waiters;

  void set() {
    if (flag) return;
    flag = true;
    for (std::coroutine_handle<> h : waiters)
      loop.ready.push_back(h);
    waiters.clear();
  }
  void clear() { flag = false; }

  struct awaiter {
    Event& event;
    bool await_ready() const noexcept { return event.flag; }
    void await_suspend(std::coroutine_handle<> h) { event.waiters.push_back(h); }
    void await_resume() const noexcept {}
  };
  awaiter wait() { return awaiter{*this}; }
};

}  // namespace floor_rt
