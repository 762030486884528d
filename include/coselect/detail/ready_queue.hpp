// The loop's queue of coroutines ready to resume: a ring of handles that only grows.
#pragma once

#include <coroutine>
#include <cstddef>
#include <memory>

namespace coselect::detail {

// FIFO of coroutine handles, loop thread only. Every hand-off goes through it, so it keeps to a
// power-of-two ring (a deque frees and allocates a block every few dozen pops) that grows when
// full and keeps its size: the peak of a loop is its steady state.
class ready_queue {
 public:
  ready_queue() = default;
  ready_queue(const ready_queue&) = delete;
  ready_queue& operator=(const ready_queue&) = delete;

  bool empty() const noexcept { return head_ == tail_; }
  std::size_t size() const noexcept { return tail_ - head_; }

  void push_back(std::coroutine_handle<> h) {
    if (tail_ - head_ == capacity_) grow();
    slots_[tail_++ & (capacity_ - 1)] = h;
  }
  std::coroutine_handle<> front() const noexcept { return slots_[head_ & (capacity_ - 1)]; }
  void pop_front() noexcept { ++head_; }
  void clear() noexcept { head_ = tail_ = 0; }

 private:
  void grow() {
    const std::size_t bigger = capacity_ == 0 ? 64 : capacity_ * 2;
    auto fresh = std::make_unique<std::coroutine_handle<>[]>(bigger);
    for (std::size_t i = head_; i != tail_; ++i)
      fresh[i - head_] = slots_[i & (capacity_ - 1)];
    tail_ -= head_;
    head_ = 0;
    slots_ = std::move(fresh);
    capacity_ = bigger;
  }

  std::unique_ptr<std::coroutine_handle<>[]> slots_;
  std::size_t capacity_ = 0;  // 0 or a power of two
  std::size_t head_ = 0;      // positions grow without bound; slots are taken modulo capacity_
  std::size_t tail_ = 0;
};

}  // namespace coselect::detail
