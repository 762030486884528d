// Compile-cost probe: the floor. The same hello world as hello_coselect.cpp (a coroutine awaits
// an event that another thread sets) written by hand on bare POSIX: a pipe, poll() and a ready
// queue, with <coroutine>, <thread>, <chrono> and the everyday standard headers.
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdio>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace {

struct Event {
  int fds[2] = {-1, -1};
  std::atomic<bool> flag{false};
  Event() {
    if (::pipe(fds) != 0) throw std::system_error(errno, std::system_category(), "pipe");
  }
  ~Event() {
    ::close(fds[0]);
    ::close(fds[1]);
  }
  void set() {
    if (!flag.exchange(true)) {
      const char byte = 1;
      (void)!::write(fds[1], &byte, 1);
    }
  }
};

struct Loop {
  std::deque<std::coroutine_handle<>> ready;
  std::vector<std::pair<Event*, std::coroutine_handle<>>> waiting;
  std::mutex mutex;
  std::function<void()> on_idle;

  void run(std::chrono::milliseconds timeout) {
    while (!ready.empty() || !waiting.empty()) {
      while (!ready.empty()) {
        auto h = ready.front();
        ready.pop_front();
        h.resume();
      }
      if (waiting.empty()) break;
      std::vector<pollfd> fds;
      for (auto& w : waiting)
        fds.push_back({w.first->fds[0], POLLIN, 0});
      if (::poll(fds.data(), fds.size(), static_cast<int>(timeout.count())) <= 0) break;
      std::lock_guard lock(mutex);
      for (std::size_t i = 0; i < fds.size(); ++i) {
        if (fds[i].revents) ready.push_back(waiting[i].second);
      }
      waiting.clear();
    }
  }
};

struct Task {
  struct promise_type {
    int result = 0;
    Task get_return_object() {
      return Task{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    std::suspend_always final_suspend() noexcept { return {}; }
    void return_value(int v) { result = v; }
    void unhandled_exception() { std::terminate(); }
  };
  std::coroutine_handle<promise_type> handle;
  explicit Task(std::coroutine_handle<promise_type> h) : handle(h) {}
  Task(Task&& other) noexcept : handle(std::exchange(other.handle, {})) {}
  ~Task() {
    if (handle) handle.destroy();
  }
};

struct Wait {
  Loop& loop;
  Event& event;
  Wait(Loop& l, Event& e) : loop(l), event(e) {}
  bool await_ready() const noexcept { return event.flag.load(); }
  void await_suspend(std::coroutine_handle<> h) { loop.waiting.emplace_back(&event, h); }
  void await_resume() const noexcept {}
};

Task hello(Loop& loop, Event& ready) {
  co_await Wait(loop, ready);
  std::puts("hello, world");
  co_return 0;
}

}  // namespace

int main() {
  Loop loop;
  Event ready;
  auto task = std::make_unique<Task>(hello(loop, ready));
  loop.ready.push_back(task->handle);
  std::optional<std::thread> setter;
  setter.emplace([&] { ready.set(); });
  loop.run(std::chrono::milliseconds(10'000));
  setter->join();
  return task->handle.promise().result;
}
