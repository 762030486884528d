// Timer queues: a 4-ary min-heap whose keys live inline in its array, and the loop's heap of
// timer_node* built on it.
//
// The keys (due, sequence) sit in the heap's own entries so that sifting compares neighbouring
// memory instead of chasing a pointer per comparison, and nothing is written back into the
// nodes while entries move (a written-back index costs a cache miss per level with many
// timers). Four children per node halve the depth for the same number of compares per level.
// Not thread-safe: its owner serialises access.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "wait_node.hpp"

namespace coselect::detail {

// Min-heap of {due, sequence, payload}: the earliest deadline first, and equal deadlines in
// sequence order (the owner hands out increasing sequences to get first-in, first-out).
template <class Payload, class Sequence = std::uint64_t>
class quad_heap {
 public:
  using time_point = std::chrono::steady_clock::time_point;

  struct entry {
    time_point due;
    Sequence sequence;
    Payload payload;
  };

  bool empty() const noexcept { return entries_.empty(); }
  std::size_t size() const noexcept { return entries_.size(); }
  const entry& top() const noexcept { return entries_.front(); }

  void push(time_point due, Sequence sequence, Payload payload) {
    entries_.push_back(entry{due, sequence, payload});
    sift_up(entries_.size() - 1);
  }

  void pop() noexcept {
    entry last = entries_.back();
    entries_.pop_back();
    if (!entries_.empty()) sift_down(0, last);
  }

  // Keeps the entries for which keep(entry&) is true and restores the heap order in O(n).
  template <class Keep>
  void retain(Keep&& keep) {
    std::size_t kept = 0;
    for (entry& e : entries_) {
      if (keep(e)) entries_[kept++] = e;
    }
    entries_.resize(kept);
    for (std::size_t i = kept / 4 + 1; i-- > 0;) {
      if (i < kept) sift_down(i, entries_[i]);
    }
  }

  // Unordered access, for owners that must visit everything (teardown).
  std::vector<entry>& entries() noexcept { return entries_; }

  // Numbers the entries 0, 1, ... in their order, keeping it; returns the count. A sorted
  // array is a heap, so nothing else moves.
  Sequence renumber() noexcept {
    std::sort(entries_.begin(), entries_.end(), earlier);
    Sequence next = 0;
    for (entry& e : entries_)
      e.sequence = next++;
    return next;
  }

 private:
  static bool earlier(const entry& a, const entry& b) noexcept {
    return a.due < b.due || (a.due == b.due && a.sequence < b.sequence);
  }

  void sift_up(std::size_t index) noexcept {
    const entry e = entries_[index];
    while (index > 0) {
      const std::size_t parent = (index - 1) / 4;
      if (!earlier(e, entries_[parent])) break;
      entries_[index] = entries_[parent];
      index = parent;
    }
    entries_[index] = e;
  }

  // Places `e` at `index` or below, moving smaller children up into the hole.
  void sift_down(std::size_t index, const entry e) noexcept {
    const std::size_t count = entries_.size();
    for (;;) {
      const std::size_t first = 4 * index + 1;
      if (first >= count) break;
      std::size_t best = first;
      const std::size_t end = first + 4 < count ? first + 4 : count;
      for (std::size_t c = first + 1; c < end; ++c) {
        if (earlier(entries_[c], entries_[best])) best = c;
      }
      if (!earlier(entries_[best], e)) break;
      entries_[index] = entries_[best];
      index = best;
    }
    entries_[index] = e;
  }

  std::vector<entry> entries_;
};

// The loop's timers: timer_nodes that live in coroutine frames. A node may be removed (its
// frame is going away) while it sits deep in the heap; instead of finding it, its slot in a
// side table is cleared and the entry becomes a tombstone that is dropped when it surfaces.
// The slot, not the node, is what a tombstone refers to, so a dead node is never touched again.
class timer_heap {
 public:
  using time_point = std::chrono::steady_clock::time_point;

  bool empty() const noexcept { return live_ == 0; }
  std::size_t size() const noexcept { return live_; }
  std::optional<time_point> next_due() const noexcept {
    if (heap_.empty()) return std::nullopt;  // the top is never a tombstone
    return heap_.top().due;
  }

  // Pushes with a fresh sequence number (FIFO among equal deadlines).
  void push(timer_node& node) {
    std::uint32_t slot;
    if (free_head_ != no_slot) {
      slot = free_head_;
      free_head_ = static_cast<std::uint32_t>(slots_[slot] >> 1);
      slots_[slot] = reinterpret_cast<std::uintptr_t>(&node);
    } else {
      slots_.push_back(reinterpret_cast<std::uintptr_t>(&node));
      slot = static_cast<std::uint32_t>(slots_.size() - 1);
    }
    // 32-bit sequences keep an entry at 16 bytes; before they would wrap, the live ones are
    // renumbered from 0 in their order (once per 4 billion timers).
    if (next_sequence_ == std::numeric_limits<std::uint32_t>::max()) {
      next_sequence_ = heap_.renumber();
    }
    try {
      heap_.push(node.due, next_sequence_++, slot);
    } catch (...) {
      release_slot(slot);
      throw;
    }
    node.slot = slot;
    ++live_;
  }

  void remove(timer_node& node) noexcept {
    if (!node.armed()) return;
    slots_[node.slot] = tombstone;
    node.slot = timer_node::not_in_heap;
    --live_;
    drop_dead_top();
    // Many cancelled far-off deadlines would otherwise pile up; sweeping once they outnumber
    // the live ones keeps the heap at most twice its live size, at O(1) amortised per removal.
    if (heap_.size() > 64 && heap_.size() > 2 * live_) sweep();
  }

  timer_node* pop() noexcept {
    if (heap_.empty()) return nullptr;
    const std::uint32_t slot = heap_.top().payload;
    // A live slot holds its node's address (free slots hold links): the cast is the design.
    auto* node = reinterpret_cast<timer_node*>(slots_[slot]);  // NOLINT(performance-no-int-to-ptr)
    release_slot(slot);
    heap_.pop();
    node->slot = timer_node::not_in_heap;
    --live_;
    drop_dead_top();
    return node;
  }

  // Pops the earliest node if it is due at `now`.
  timer_node* pop_due(time_point now) noexcept {
    if (heap_.empty() || now < heap_.top().due) return nullptr;
    return pop();
  }

 private:
  // A slot holds its node's address, `tombstone` once the node was removed while its entry is
  // still in the heap, or (odd) the next free slot: the free list costs no memory of its own
  // and handing a slot back never allocates.
  static constexpr std::uintptr_t tombstone = 0;
  static constexpr std::uint32_t no_slot = timer_node::not_in_heap;

  void release_slot(std::uint32_t slot) noexcept {
    slots_[slot] = (static_cast<std::uintptr_t>(free_head_) << 1) | 1;
    free_head_ = slot;
  }

  void drop_dead_top() noexcept {
    while (!heap_.empty() && slots_[heap_.top().payload] == tombstone) {
      release_slot(heap_.top().payload);
      heap_.pop();
    }
  }

  void sweep() noexcept {
    heap_.retain([this](const auto& e) {
      if (slots_[e.payload] != tombstone) return true;
      release_slot(e.payload);
      return false;
    });
  }

  quad_heap<std::uint32_t, std::uint32_t> heap_;
  std::vector<std::uintptr_t> slots_;
  std::uint32_t free_head_ = no_slot;
  std::size_t live_ = 0;
  std::uint32_t next_sequence_ = 0;
};

}  // namespace coselect::detail
