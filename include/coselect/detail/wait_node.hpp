// Plain data that lives inside awaiters (and so inside coroutine frames) while a coroutine waits:
// timer nodes, event waiters and the per-event watch list. Only the loop thread that owns a node
// touches it. Nothing here allocates; the loop links these nodes intrusively.
#pragma once

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>

namespace coselect {
class WaitableEvent;
}

namespace coselect::detail {

class loop_hooks;
class cancel_request;

// One deadline in a loop's timer heap. `fire` runs on the loop thread when the deadline passes
// (or virtual time reaches it); the node has already been removed from the heap by then.
struct timer_node {
  static constexpr std::uint32_t not_in_heap = static_cast<std::uint32_t>(-1);

  std::chrono::steady_clock::time_point due{};
  void (*fire)(timer_node&, loop_hooks&) noexcept = nullptr;
  std::uint32_t slot = not_in_heap;  // the heap's handle on this node while armed

  bool armed() const noexcept { return slot != not_in_heap; }
};

// How a coroutine's wait ended.
enum class wait_outcome : std::uint8_t { pending, released, timed_out, canceled, failed };

struct event_watch;

// A coroutine waiting on a WaitableEvent, linked FIFO into the event's watch list of its loop.
// `generation` is the event's set-generation when the wait began: any later set() releases it,
// even one that a clear() undid before the loop looked (the pulse rule). It lives in the
// awaiting frame, so an untimed wait carries no timer node: see timed_event_waiter.
struct event_waiter {
  std::coroutine_handle<> handle{};
  event_watch* watch = nullptr;  // non-null while linked
  event_waiter* next = nullptr;
  event_waiter* prev = nullptr;
  std::uint32_t generation = 0;
  wait_outcome outcome = wait_outcome::pending;
  bool timed = false;    // this is the event_waiter of a timed_event_waiter
  bool stopped = false;  // canceled by a stop request (not by the event's destruction)
};

// A waiter with a deadline in its loop's timer heap.
struct timed_event_waiter : event_waiter, timer_node {
  timed_event_waiter() noexcept { timed = true; }
};

// Names a loop in the claims it makes on events' primary watches. It is separate from the loop
// because a claim may outlive it: an emptied watch stays claimed ("parked") so that the loop's
// next wait on that event costs no atomic read-modify-write, and the loop cannot find its
// parked watches again (their events may die on other threads). The event, when it dies, lets
// go of a parked claim; the identity goes with the last claim that names it.
struct loop_identity {
  explicit loop_identity(loop_hooks& l) noexcept : loop(&l) {}
  loop_hooks* loop;                    // only valid while a claim naming it is not parked
  std::atomic<std::uint32_t> refs{1};  // the loop's own, plus one per watch claiming it

  void retain() noexcept { refs.fetch_add(1, std::memory_order_relaxed); }
  void release() noexcept {
    if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }
};

// The waiters one loop has on one event. Every event embeds one (its "primary" watch, claimed by
// the first loop that waits on it); further loops waiting at the same time keep their own.
struct event_watch {
  // A claim's low bit: the watch is empty and out of the loop's list; only the claiming loop
  // may take it back into use (a plain store), only the event's destructor may drop it.
  static constexpr std::uintptr_t kParked = 1;
  static loop_identity* holder(std::uintptr_t claim) noexcept {
    // A claim is the identity's address with a flag in its low bit.
    return reinterpret_cast<loop_identity*>(claim & ~kParked);  // NOLINT(performance-no-int-to-ptr)
  }

  WaitableEvent* event = nullptr;
  loop_hooks* loop = nullptr;  // the loop using it, while waiters are linked
  // Primary watch: 0 when free, else the claiming loop's identity (| kParked). Secondary watches
  // belong to their loop for good and leave it 0.
  std::atomic<std::uintptr_t> claim{0};
  // Another loop found the primary watch claimed and made a secondary one: the claiming loop
  // gives the primary back when it next empties instead of parking it.
  std::atomic<bool> wanted{false};
  event_waiter* head = nullptr;
  event_waiter* tail = nullptr;
  event_watch* next = nullptr;  // in the owner's list of watched events
  event_watch* prev = nullptr;
  bool linked = false;     // in the owner's list
  bool in_select = false;  // the owner counts as a selecting loop on the event right now

  bool empty() const noexcept { return head == nullptr; }

  void push_back(event_waiter& w) noexcept {
    w.watch = this;
    w.next = nullptr;
    w.prev = tail;
    if (tail) {
      tail->next = &w;
    } else {
      head = &w;
    }
    tail = &w;
  }

  void unlink(event_waiter& w) noexcept {
    if (w.prev) {
      w.prev->next = w.next;
    } else {
      head = w.next;
    }
    if (w.next) {
      w.next->prev = w.prev;
    } else {
      tail = w.prev;
    }
    w.next = w.prev = nullptr;
    w.watch = nullptr;
  }
};

// What the event layer needs from the loop that runs the awaiting coroutine. The Scheduler
// implements it; keeping it abstract here lets WaitableEvent::wait() exist without the event
// header including the scheduler (which sits above it).
class loop_hooks {
 public:
  // Links `w` (handle, generation, deadline already filled in) to the loop's watch of `ev`; the
  // watch's `loop` is this loop from then on until `w` is unlinked.
  virtual void add_event_waiter(WaitableEvent& ev, event_waiter& w) = 0;
  // The awaiting frame is being destroyed while still waiting: forget the waiter.
  virtual void remove_event_waiter(event_waiter& w) noexcept = 0;
  // `ev` is being destroyed: resume its waiters on this loop with operation_canceled.
  virtual void cancel_event_waiters(WaitableEvent& ev) noexcept = 0;
  // The loop's clock (real or virtual): deadlines of waiters are measured on it.
  virtual std::chrono::steady_clock::time_point now() const noexcept = 0;
  // Loop thread: queue h to resume in this turn or the next.
  virtual void make_ready(std::coroutine_handle<> h) = 0;
  // Any thread: resume h on the loop thread (never inline); wakes the loop.
  virtual void resume_soon(std::coroutine_handle<> h) = 0;
  // Any thread: deliver a stop request to `c` on the loop thread (cancel_point.hpp); wakes it.
  virtual void queue_cancel(cancel_request& c) noexcept = 0;
  // Loop thread: forget `c` if it is still queued (its wait ended first).
  virtual void unqueue_cancel(cancel_request& c) noexcept = 0;

 protected:
  ~loop_hooks() = default;
};

// The loop running on this thread (set for the duration of Scheduler::run*), or null.
//
// Read through a function that is never inlined: a coroutine that moved to another thread
// (resume_on) must not reuse a thread-local address computed before the move, which clang 14
// otherwise does across suspension points.
namespace current_loop_storage {
inline thread_local loop_hooks* value = nullptr;
}
[[gnu::noinline]] inline loop_hooks* current_loop() noexcept {
  return current_loop_storage::value;
}
[[gnu::noinline]] inline void set_current_loop(loop_hooks* loop) noexcept {
  current_loop_storage::value = loop;
}

}  // namespace coselect::detail
