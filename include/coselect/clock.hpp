// The scheduler's clock: std::chrono::steady_clock, or a virtual one driven by a TimeMachine.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace coselect {

// TimeMachine — a virtual clock for deterministic tests (BACpypes' time machine, modernised).
//
// A Scheduler built on it (`Scheduler s(tm);`) measures every timer, sleep and timeout on
// virtual time, which moves only when that scheduler has nothing else to do (see
// Scheduler::run_for). Virtual time pretends to start at `start` on the system clock, so
// recurring grids line up as they would on the wall; its steady_clock time_points count from
// the same epoch (now().time_since_epoch() == wall_now().time_since_epoch()). Time never moves
// backwards. Reading it is thread-safe; one scheduler at a time should drive it.
class TimeMachine {
 public:
  using steady_time = std::chrono::steady_clock::time_point;
  using wall_time = std::chrono::system_clock::time_point;

  TimeMachine() noexcept : TimeMachine(wall_time{}) {}
  explicit TimeMachine(wall_time start) noexcept
      : now_ns_(std::chrono::duration_cast<std::chrono::nanoseconds>(start.time_since_epoch())
                    .count()) {}
  TimeMachine(const TimeMachine&) = delete;
  TimeMachine& operator=(const TimeMachine&) = delete;

  steady_time now() const noexcept {
    return steady_time(std::chrono::duration_cast<steady_time::duration>(
        std::chrono::nanoseconds(now_ns_.load(std::memory_order_acquire))));
  }
  wall_time wall_now() const noexcept {
    return wall_time(std::chrono::duration_cast<wall_time::duration>(
        std::chrono::nanoseconds(now_ns_.load(std::memory_order_acquire))));
  }

  // Moves virtual time forward to `t`; earlier times are ignored (time never goes back).
  void advance_to(steady_time t) noexcept {
    const auto target =
        std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
    std::int64_t current = now_ns_.load(std::memory_order_relaxed);
    while (current < target &&
           !now_ns_.compare_exchange_weak(current, target, std::memory_order_acq_rel)) {
    }
  }

 private:
  std::atomic<std::int64_t> now_ns_;
};

namespace detail {

// The one seam through which a scheduler reads time.
class clock_source {
 public:
  explicit clock_source(TimeMachine* machine = nullptr) noexcept : machine_(machine) {}

  bool is_virtual() const noexcept { return machine_ != nullptr; }
  TimeMachine* machine() const noexcept { return machine_; }

  std::chrono::steady_clock::time_point now() const noexcept {
    return machine_ ? machine_->now() : std::chrono::steady_clock::now();
  }
  std::chrono::system_clock::time_point wall_now() const noexcept {
    return machine_ ? machine_->wall_now() : std::chrono::system_clock::now();
  }

 private:
  TimeMachine* machine_;
};

}  // namespace detail
}  // namespace coselect
