// A port aid for BACpypes users: OneShotTask and RecurringTask with process_task(),
// install_task(), suspend_task() and resume_task(), mapped onto TaskManager.
#pragma once

#include <chrono>

#include "scheduler.hpp"
#include "task_manager.hpp"

namespace coselect::bacpypes {

// OneShotTask — override process_task(); install_task() schedules one run on the loop.
//
// Differences from BACpypes: no global task manager (the scheduler is named), times are the
// scheduler's steady clock, and destroying the object unschedules it. Thread-safe like
// TaskHandle; process_task() runs on the loop thread.
class OneShotTask {
 public:
  using time_point = Scheduler::time_point;

  explicit OneShotTask(Scheduler& scheduler) noexcept : scheduler_(scheduler) {}
  OneShotTask(const OneShotTask&) = delete;
  OneShotTask& operator=(const OneShotTask&) = delete;
  virtual ~OneShotTask() { handle_.suspend(); }

  // Runs process_task() at `when` (a re-install moves it).
  void install_task(time_point when) {
    if (handle_.empty()) {
      handle_ = scheduler_.tasks().call_at(when, [this] { process_task(); });
    } else {
      handle_.reschedule_at(when);
    }
  }
  template <class Rep, class Period>
  void install_task_after(std::chrono::duration<Rep, Period> delta) {
    install_task(detail::saturating_add<Scheduler::clock>(scheduler_.now(), delta));
  }

  void suspend_task() { handle_.suspend(); }
  void resume_task() { handle_.resume(); }
  bool is_scheduled() const { return handle_.scheduled(); }

 protected:
  virtual void process_task() = 0;
  Scheduler& scheduler() const noexcept { return scheduler_; }

 private:
  Scheduler& scheduler_;
  TaskHandle handle_;
};

// RecurringTask — process_task() at every point of offset + k*interval from the system clock's
// epoch (BACpypes' grid, with its floored modulo). A task that suspends itself from
// process_task() stays suspended (BACpypes re-installed it anyway), and one that throws keeps
// recurring (BACpypes dropped it silently); its exception follows the scheduler's policy.
class RecurringTask {
 public:
  using duration = Scheduler::duration;

  template <class Rep1, class Period1, class Rep2 = std::int64_t, class Period2 = std::nano>
  RecurringTask(Scheduler& scheduler, std::chrono::duration<Rep1, Period1> interval,
                std::chrono::duration<Rep2, Period2> offset = {}) noexcept
      : scheduler_(scheduler),
        interval_(std::chrono::duration_cast<duration>(interval)),
        offset_(std::chrono::duration_cast<duration>(offset)) {}
  RecurringTask(const RecurringTask&) = delete;
  RecurringTask& operator=(const RecurringTask&) = delete;
  virtual ~RecurringTask() { handle_.suspend(); }

  // (Re-)installs on the grid; throws std::invalid_argument if the interval is <= 0.
  void install_task() {
    handle_.suspend();
    handle_ = scheduler_.tasks().call_every(
        interval_, [this] { process_task(); }, offset_);
  }
  template <class Rep1, class Period1, class Rep2 = std::int64_t, class Period2 = std::nano>
  void install_task(std::chrono::duration<Rep1, Period1> interval,
                    std::chrono::duration<Rep2, Period2> offset = {}) {
    interval_ = std::chrono::duration_cast<duration>(interval);
    offset_ = std::chrono::duration_cast<duration>(offset);
    install_task();
  }

  void suspend_task() { handle_.suspend(); }
  void resume_task() { handle_.resume(); }
  bool is_scheduled() const { return handle_.scheduled(); }

 protected:
  virtual void process_task() = 0;
  Scheduler& scheduler() const noexcept { return scheduler_; }

 private:
  Scheduler& scheduler_;
  duration interval_;
  duration offset_;
  TaskHandle handle_;
};

}  // namespace coselect::bacpypes
