// coselect::TaskManager and TaskHandle: timed, recurring and deferred callbacks on a scheduler's
// loop (BACpypes' task module), and the gateway through which other threads reach the loop.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <deque>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "clock.hpp"
#include "detail/syscall.hpp"
#include "detail/timer_heap.hpp"

namespace coselect {

namespace detail {

// What the TaskManager needs from the scheduler that owns it.
class task_host {
 public:
  virtual bool on_loop_thread() const noexcept = 0;  // the caller is the running loop
  virtual void wake() noexcept = 0;                  // set the loop's WaitableEvent
  virtual const clock_source& time_source() const noexcept = 0;
  virtual void make_ready(std::coroutine_handle<> h) = 0;  // loop thread only

 protected:
  ~task_host() = default;
};

struct task_record;

// The part of a TaskManager that its handles may outlive.
struct task_queue {
  explicit task_queue(task_host* owner) noexcept : host(owner) {}

  std::mutex mutex;
  task_host* host;                             // null once the TaskManager is gone
  timer_heap heap;                             // timed task_records
  std::deque<task_record*> soon;               // call_soon's records: FIFO, O(1) both ends
  std::vector<std::coroutine_handle<>> inbox;  // resume() calls from other threads
  // Earliest due time (ns since the clock's epoch), readable without the mutex so the loop can
  // skip locking when nothing is due.
  std::atomic<std::int64_t> earliest_due_ns{std::numeric_limits<std::int64_t>::max()};

  // Queues a record (its state and keep_alive already set); call_soon's go to the FIFO.
  inline void enqueue(task_record& r);
  // Takes a queued record out again.
  inline void withdraw(task_record& r);
  // Puts back, in front, records that were taken for a batch but did not run.
  inline void restore(task_record& r);

  void publish_earliest() noexcept {
    std::int64_t ns = std::numeric_limits<std::int64_t>::max();
    if (!soon.empty()) {
      ns = std::numeric_limits<std::int64_t>::min();
    } else if (const auto next = heap.next_due()) {
      ns = std::chrono::duration_cast<std::chrono::nanoseconds>(next->time_since_epoch()).count();
    }
    earliest_due_ns.store(ns, std::memory_order_release);
  }
};

enum class task_state : std::uint8_t {
  idle,     // not scheduled
  queued,   // in the heap
  taken,    // taken out of the heap for this iteration's batch, about to run
  running,  // its callback is running now
};

struct task_record : timer_node {
  std::shared_ptr<task_queue> queue;
  std::shared_ptr<task_record> keep_alive;  // the queue's reference while scheduled
  std::chrono::nanoseconds interval{0};     // > 0: recurring on the grid offset + k*interval
  std::chrono::nanoseconds offset{0};
  task_state state = task_state::idle;
  bool stop_recurring = false;  // suspend() was called while the callback ran

  virtual ~task_record() = default;
  virtual void invoke() = 0;
};

// call_soon's records are due at the beginning of time; they live in the FIFO, not the heap.
inline bool is_soon(const task_record& r) noexcept {
  return r.due == std::chrono::steady_clock::time_point::min();
}

inline void task_queue::enqueue(task_record& r) {
  if (is_soon(r)) {
    soon.push_back(&r);
  } else {
    heap.push(r);
  }
  publish_earliest();
}

inline void task_queue::withdraw(task_record& r) {
  if (r.armed()) {
    heap.remove(r);
  } else {
    soon.erase(std::find(soon.begin(), soon.end(), &r));  // rare: a call_soon suspended
  }
  publish_earliest();
}

inline void task_queue::restore(task_record& r) {
  if (is_soon(r)) {
    soon.push_front(&r);
  } else {
    heap.push_keeping_sequence(r, r.sequence);
  }
}

template <class F>
struct task_record_for final : task_record {
  explicit task_record_for(F&& f) : callback(std::move(f)) {}
  void invoke() override { callback(); }
  F callback;
};

// First point of the grid offset + k*interval (counted from the system clock's epoch) strictly
// after `wall_now`. Floored division, so negative offsets and offsets beyond the interval work.
inline std::chrono::nanoseconds next_grid_point(std::chrono::nanoseconds wall_now,
                                                std::chrono::nanoseconds interval,
                                                std::chrono::nanoseconds offset) noexcept {
  const std::int64_t from_origin = (wall_now - offset).count();
  std::int64_t k = from_origin / interval.count();
  if (from_origin % interval.count() < 0) --k;  // floor, not truncation
  return offset + interval * (k + 1);
}

}  // namespace detail

// TaskHandle — a copyable reference to a task installed on a TaskManager.
//
// Default-constructed handles are empty (every call is a no-op, scheduled() is false).
// Dropping a handle does not cancel its task. Every member is thread-safe. A handle whose
// scheduler is gone is inert.
class TaskHandle {
 public:
  using clock = std::chrono::steady_clock;
  using time_point = clock::time_point;

  TaskHandle() noexcept = default;

  bool empty() const noexcept { return record_ == nullptr; }
  explicit operator bool() const noexcept { return !empty(); }

  // Waiting to run: queued, or (recurring) running now and not suspended.
  bool scheduled() const {
    if (!record_) return false;
    std::lock_guard lock(record_->queue->mutex);
    switch (record_->state) {
      case detail::task_state::queued:
      case detail::task_state::taken:
        return true;
      case detail::task_state::running:
        return record_->interval.count() > 0 && !record_->stop_recurring;
      default:
        return false;
    }
  }

  // Unschedules the task (a no-op if it is not scheduled). A recurring task that suspends
  // itself from its own callback stays suspended.
  void suspend() {
    if (!record_) return;
    std::shared_ptr<detail::task_record> released;
    {
      std::lock_guard lock(record_->queue->mutex);
      detail::task_queue& q = *record_->queue;
      switch (record_->state) {
        case detail::task_state::queued:
          q.withdraw(*record_);
          record_->state = detail::task_state::idle;
          released = std::move(record_->keep_alive);
          break;
        case detail::task_state::taken:
          record_->state = detail::task_state::idle;
          released = std::move(record_->keep_alive);
          break;
        case detail::task_state::running:
          record_->stop_recurring = true;
          break;
        case detail::task_state::idle:
          break;
      }
    }  // `released` dies here, outside the lock (it may run the callable's destructor)
  }

  // Re-installs a suspended task at the time it was due (a past time runs at once). A no-op
  // for a task that is scheduled.
  void resume() { reinstall(std::nullopt); }

  // Re-installs the task at `when` (moving it if it was scheduled). A recurring task runs at
  // `when` and then on its grid again.
  void reschedule_at(time_point when) { reinstall(when); }

  template <class Rep, class Period>
  void reschedule_after(std::chrono::duration<Rep, Period> delay) {
    if (!record_) return;
    const detail::task_host* host = record_->queue->host;
    if (host == nullptr) return;
    reinstall(detail::saturating_add<clock>(host->time_source().now(), delay));
  }

  // When the task is (or was last) due.
  time_point due() const {
    if (!record_) return {};
    std::lock_guard lock(record_->queue->mutex);
    return record_->due;
  }

  friend bool operator==(const TaskHandle&, const TaskHandle&) = default;

 private:
  friend class TaskManager;
  explicit TaskHandle(std::shared_ptr<detail::task_record> r) noexcept : record_(std::move(r)) {}

  void reinstall(std::optional<time_point> when) {
    if (!record_) return;
    detail::task_queue& q = *record_->queue;
    {
      std::lock_guard lock(q.mutex);
      if (q.host == nullptr) return;
      if (!when && record_->state != detail::task_state::idle) {
        if (record_->state == detail::task_state::running) record_->stop_recurring = false;
        return;  // resume() of a scheduled task
      }
      if (record_->state == detail::task_state::queued) q.withdraw(*record_);
      if (when) record_->due = *when;
      if (record_->state == detail::task_state::running) record_->stop_recurring = false;
      record_->state = detail::task_state::queued;
      record_->keep_alive = record_;
      q.enqueue(*record_);
      if (!q.host->on_loop_thread()) q.host->wake();  // under the lock: see TaskManager::resume
    }
  }

  std::shared_ptr<detail::task_record> record_;
};

// TaskManager — timed tasks and cross-thread hand-offs for one Scheduler, which owns it.
//
// Every member is thread-safe. Callbacks run on the scheduler's loop thread, never inside the
// call that installs them; equal due times run in install order; timers never fire early.
// Calls from other threads wake a blocked loop through its WaitableEvent; calls from the loop
// thread make no system call. Work installed while the scheduler is not running waits for its
// next run. A throwing callback does not drop the others: its exception follows the
// scheduler's policy (by default run() rethrows it) and the rest of the batch stays queued.
class TaskManager {
 public:
  using clock = std::chrono::steady_clock;
  using time_point = clock::time_point;
  using duration = clock::duration;

  explicit TaskManager(detail::task_host& host)
      : queue_(std::make_shared<detail::task_queue>(&host)) {}
  TaskManager(const TaskManager&) = delete;
  TaskManager& operator=(const TaskManager&) = delete;

  ~TaskManager() {
    std::vector<std::shared_ptr<detail::task_record>> released;
    {
      std::lock_guard lock(queue_->mutex);
      queue_->host = nullptr;
      while (detail::timer_node* n = queue_->heap.pop()) {
        auto* r = static_cast<detail::task_record*>(n);
        r->state = detail::task_state::idle;
        released.push_back(std::move(r->keep_alive));
      }
      for (detail::task_record* r : queue_->soon) {
        r->state = detail::task_state::idle;
        released.push_back(std::move(r->keep_alive));
      }
      queue_->soon.clear();
      queue_->inbox.clear();
    }
  }

  // Runs f on the loop as soon as possible, after the work already queued (BACpypes deferred).
  template <class F>
  TaskHandle call_soon(F&& f) {
    return install(make_record(std::forward<F>(f)), time_point::min());
  }

  template <class Rep, class Period, class F>
  TaskHandle call_later(std::chrono::duration<Rep, Period> delay, F&& f) {
    return install(make_record(std::forward<F>(f)),
                   detail::saturating_add<clock>(host().time_source().now(), delay));
  }

  template <class F>
  TaskHandle call_at(time_point when, F&& f) {
    return install(make_record(std::forward<F>(f)), when);
  }

  // Runs f at every point of the grid offset + k*interval counted from the system clock's
  // epoch (virtual wall time under a TimeMachine), first at the next one after now. A run that
  // overruns skips the ticks it missed. interval <= 0 throws std::invalid_argument.
  template <class Rep1, class Period1, class F, class Rep2 = std::int64_t,
            class Period2 = std::nano>
  TaskHandle call_every(std::chrono::duration<Rep1, Period1> interval, F&& f,
                        std::chrono::duration<Rep2, Period2> offset = {}) {
    const auto step = detail::saturating_ns(interval);
    if (step.count() <= 0) {
      throw std::invalid_argument("coselect::TaskManager::call_every: interval must be > 0");
    }
    auto record = make_record(std::forward<F>(f));
    record->interval = step;
    record->offset = detail::saturating_ns(offset);
    const time_point first = next_grid_due(*record);
    return install(std::move(record), first);
  }

  // Resumes h on the loop thread (from any thread; never inline).
  void resume(std::coroutine_handle<> h) {
    if (host().on_loop_thread()) {
      host().make_ready(h);
      return;
    }
    // Wake while holding the lock: once the loop can drain the inbox, this call may not
    // touch the scheduler any more (it may finish its run and be destroyed).
    std::lock_guard lock(queue_->mutex);
    queue_->inbox.push_back(h);
    queue_->host->wake();
  }

  // Number of installed tasks waiting to run (diagnostics and tests).
  std::size_t pending() const {
    std::lock_guard lock(queue_->mutex);
    return queue_->heap.size() + queue_->soon.size();
  }

  // ---- for the owning Scheduler -----------------------------------------------------------

  // The earliest due time, without locking; nullopt when nothing is installed.
  std::optional<time_point> next_due() const noexcept {
    const std::int64_t ns = queue_->earliest_due_ns.load(std::memory_order_acquire);
    if (ns == std::numeric_limits<std::int64_t>::max()) return std::nullopt;
    return time_point(std::chrono::duration_cast<duration>(std::chrono::nanoseconds(ns)));
  }

  // Moves the coroutines other threads asked to resume into `out`.
  void take_inbox(std::vector<std::coroutine_handle<>>& out) {
    std::lock_guard lock(queue_->mutex);
    out.swap(queue_->inbox);
  }

  // Runs the tasks due at `now` (those due when the call began; tasks they install run on a
  // later call). Returns the first exception a callback threw; the tasks after it stay queued.
  std::exception_ptr run_due(time_point now) {
    const auto earliest = next_due();
    if (!earliest || now < *earliest) return nullptr;
    {
      std::lock_guard lock(queue_->mutex);
      // The batch holds its own references: a callback may suspend a later task of the batch
      // and drop the last handle to it.
      auto take = [this](detail::task_record& r) {
        r.state = detail::task_state::taken;
        batch_.push_back(r.keep_alive);
      };
      for (detail::task_record* r : queue_->soon)
        take(*r);
      queue_->soon.clear();
      while (detail::timer_node* n = queue_->heap.pop_due(now)) {
        take(static_cast<detail::task_record&>(*n));
      }
      queue_->publish_earliest();
    }
    std::exception_ptr failure;
    for (std::size_t i = 0; i < batch_.size(); ++i) {
      detail::task_record* r = batch_[i].get();
      {
        std::lock_guard lock(queue_->mutex);
        if (r->state != detail::task_state::taken) continue;  // suspended meanwhile
        r->state = detail::task_state::running;
        r->stop_recurring = false;
      }
      try {
        r->invoke();
      } catch (...) {
        failure = std::current_exception();
      }
      finish_run(*r);
      if (failure) {
        requeue_rest(i + 1);
        break;
      }
    }
    batch_.clear();  // outside the lock: may run the destructors of finished callables
    return failure;
  }

 private:
  detail::task_host& host() const {
    detail::task_host* h = queue_->host;
    return *h;
  }

  template <class F>
  std::shared_ptr<detail::task_record> make_record(F&& f) {
    using callable = std::decay_t<F>;
    static_assert(std::is_invocable_v<callable&>, "a task must be callable with no arguments");
    auto record = std::make_shared<detail::task_record_for<callable>>(callable(std::forward<F>(f)));
    record->queue = queue_;
    return record;
  }

  time_point next_grid_due(const detail::task_record& r) const {
    const detail::clock_source& c = host().time_source();
    const auto wall =
        std::chrono::duration_cast<std::chrono::nanoseconds>(c.wall_now().time_since_epoch());
    const auto next = detail::next_grid_point(wall, r.interval, r.offset);
    return c.now() + std::chrono::duration_cast<duration>(next - wall);
  }

  TaskHandle install(std::shared_ptr<detail::task_record> record, time_point due) {
    {
      std::lock_guard lock(queue_->mutex);
      record->due = due;
      record->state = detail::task_state::queued;
      record->keep_alive = record;
      queue_->enqueue(*record);
      if (!queue_->host->on_loop_thread()) queue_->host->wake();  // under the lock: see resume()
    }
    return TaskHandle(std::move(record));
  }

  // After a callback: a recurring task goes back on its grid, unless it was suspended or moved
  // meanwhile; a one-shot task is done.
  void finish_run(detail::task_record& r) {
    std::shared_ptr<detail::task_record> released;
    std::lock_guard lock(queue_->mutex);
    if (r.state != detail::task_state::running) return;  // rescheduled from inside
    if (r.interval.count() > 0 && !r.stop_recurring && queue_->host != nullptr) {
      r.due = next_grid_due(r);
      r.state = detail::task_state::queued;
      queue_->enqueue(r);
    } else {
      r.state = detail::task_state::idle;
      released = std::move(r.keep_alive);
    }
  }

  void requeue_rest(std::size_t from) {
    std::lock_guard lock(queue_->mutex);
    // Backwards, so that records put in front of the FIFO keep their order.
    for (std::size_t i = batch_.size(); i-- > from;) {
      detail::task_record* r = batch_[i].get();
      if (r->state != detail::task_state::taken) continue;
      r->state = detail::task_state::queued;
      queue_->restore(*r);
    }
    queue_->publish_earliest();
  }

  std::shared_ptr<detail::task_queue> queue_;
  std::vector<std::shared_ptr<detail::task_record>> batch_;  // loop thread only
};

}  // namespace coselect
