// An intrusive binary min-heap of timer_node*, ordered by (due, sequence): the earliest deadline
// first, and equal deadlines in the order they were pushed. Each node knows its index, so
// removing a cancelled timer is O(log n) and nothing is ever allocated per timer beyond the
// vector of pointers. Not thread-safe: its owner serialises access.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "wait_node.hpp"

namespace coselect::detail {

class timer_heap {
 public:
  using time_point = std::chrono::steady_clock::time_point;

  bool empty() const noexcept { return nodes_.empty(); }
  std::size_t size() const noexcept { return nodes_.size(); }
  timer_node* top() const noexcept { return nodes_.empty() ? nullptr : nodes_.front(); }
  std::optional<time_point> next_due() const noexcept {
    if (nodes_.empty()) return std::nullopt;
    return nodes_.front()->due;
  }

  // Pushes with a fresh sequence number (FIFO among equal deadlines).
  void push(timer_node& node) { push_keeping_sequence(node, next_sequence_++); }

  // Puts a node back with the sequence it had (a batch that was taken out but not run).
  void push_keeping_sequence(timer_node& node, std::uint64_t sequence) {
    node.sequence = sequence;
    node.heap_index = nodes_.size();
    nodes_.push_back(&node);
    sift_up(node.heap_index);
  }

  void remove(timer_node& node) noexcept {
    if (!node.armed()) return;
    const std::size_t index = node.heap_index;
    node.heap_index = timer_node::not_in_heap;
    timer_node* last = nodes_.back();
    nodes_.pop_back();
    if (last == &node) return;
    nodes_[index] = last;
    last->heap_index = index;
    sift_down(index);
    sift_up(last->heap_index);
  }

  timer_node* pop() noexcept {
    if (nodes_.empty()) return nullptr;
    timer_node* first = nodes_.front();
    remove(*first);
    return first;
  }

  // Pops the earliest node if it is due at `now`.
  timer_node* pop_due(time_point now) noexcept {
    if (nodes_.empty() || now < nodes_.front()->due) return nullptr;
    return pop();
  }

  template <class F>
  void for_each(F&& f) const {
    for (timer_node* n : nodes_)
      f(*n);
  }

 private:
  static bool earlier(const timer_node* a, const timer_node* b) noexcept {
    return a->due < b->due || (a->due == b->due && a->sequence < b->sequence);
  }

  void place(std::size_t index, timer_node* node) noexcept {
    nodes_[index] = node;
    node->heap_index = index;
  }

  void sift_up(std::size_t index) noexcept {
    timer_node* node = nodes_[index];
    while (index > 0) {
      const std::size_t parent = (index - 1) / 2;
      if (!earlier(node, nodes_[parent])) break;
      place(index, nodes_[parent]);
      index = parent;
    }
    place(index, node);
  }

  void sift_down(std::size_t index) noexcept {
    timer_node* node = nodes_[index];
    const std::size_t count = nodes_.size();
    for (;;) {
      std::size_t child = 2 * index + 1;
      if (child >= count) break;
      if (child + 1 < count && earlier(nodes_[child + 1], nodes_[child])) ++child;
      if (!earlier(nodes_[child], node)) break;
      place(index, nodes_[child]);
      index = child;
    }
    place(index, node);
  }

  std::vector<timer_node*> nodes_;
  std::uint64_t next_sequence_ = 0;
};

}  // namespace coselect::detail
