// coselect::WaitableEvent: a manual-reset event that threads block on, coroutines co_await, and
// any fd-based loop can watch through fileno().
#pragma once

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "detail/cancel_point.hpp"
#include "detail/syscall.hpp"
#include "detail/wait_node.hpp"

namespace coselect {

namespace detail {
struct event_access;
}

// WaitableEvent — a manual-reset event backed by a pipe (BACpypes' event.WaitableEvent).
//
// Contract
//  * set(), clear(), is_set(), fileno(): any thread. set() is also async-signal-safe (it uses
//    only atomics, write() and futex()); it may interrupt any other member on the same thread.
//  * wait_blocking(): plain threads. Returns true once the event is set, or once a set() happened
//    after the wait began even if clear() followed at once (a pulse releases every waiter).
//  * co_await wait() / wait(timeout): coroutines running on a Scheduler; they resume on that
//    scheduler's thread, in the order they began waiting, never inside set(). Awaiting where no
//    scheduler runs throws std::logic_error.
//  * fileno(): the read end, readable while the event is set (once concurrent set()/clear()
//    calls have returned). A set();clear() pulse may leave no trace on it; use is_set() or a
//    wait for pulses. Do not read from or close it.
//  * Writes made before set() are visible to waiters released by it (release/acquire).
//  * The constructor throws std::system_error (e.g. errc::too_many_files_open) if no pipe can
//    be had. The destructor closes both ends; coroutines of this thread's scheduler still
//    waiting resume with std::system_error(errc::operation_canceled). A thread that a set()
//    released (or that saw is_set()) may destroy the event at once, even while that set() is
//    still finishing or other released threads are still returning: the destructor waits for
//    them. Destroying an event while another thread blocks on it (the destructor would wait
//    for that wait to end), or while another thread's scheduler has coroutines waiting on it,
//    is a precondition violation.
//
// State machine. One 64-bit atomic word holds everything set() needs to decide, so each
// operation is one compare-and-swap followed, only if needed, by system calls:
//
//   bit 0     set        the logical flag
//   bit 1     byte       the pipe holds our one byte (true whenever `syncing` is clear)
//   bit 2     exported   fileno() was handed out: the pipe must mirror `set`
//   bit 3     syncing    one caller owns the pipe and is bringing it in line with the state
//   bit 4     dirty      the state changed while someone was syncing: the owner looks again
//   bit 5     pulsed     a set() happened while loops were selecting on the pipe
//   bits 6-15  loops     schedulers blocked in select() on the read end right now
//   bits 16-25 blocked   threads in wait_blocking() (at most 1023)
//   bits 26-31 setting   set() calls past their publishing CAS with work left (waking, pipe)
//   bits 32-63 generation, +1 at every unset->set transition
//
// Invariants
//  I1  The pipe holds at most one byte, and only its owner (`syncing`) reads or writes it.
//  I2  The byte must be present when  set && (exported || loops)   or   pulsed && loops.
//      The byte must be absent when   !set && !(pulsed && loops).   Otherwise either is fine, so
//      a set event nobody watches costs no system call, and a byte that is already there stays.
//  I3  `pulsed` is cleared when the last selecting loop leaves: a set();clear() pulse keeps the
//      byte until every loop that was asleep at the pulse has woken (select() re-checks its fds
//      after a wake-up, and a byte that vanished would put it back to sleep: a lost wake-up).
//  I4  Blocked threads sleep on a futex word that set() bumps when `blocked` > 0; a thread
//      registers in `blocked` with the same CAS that checks `set`, so no set() can slip between.
//  I5  Coroutine waiters are never touched by set(). They record `generation` when they start
//      waiting; their loop releases every waiter whose generation is stale, or all when `set`.
//      A loop about to sleep registers in `loops` with a CAS that fails if the generation moved
//      (so it cannot sleep through a set()), and set() writes the byte when `loops` > 0.
//  I6  A waiter released by set() may destroy the event at once (threading.Event allows it):
//      set() announces in `setting`, with the same CAS that publishes `set`, that it will still
//      touch the event, a blocked waiter's last touch is leaving `blocked`, and the destructor
//      waits until both counts are zero. A set() with nothing left to do (no blocked thread,
//      no pipe I/O) announces nothing and costs one CAS.
//
// Pipe reconciliation is a lock-free "combining" step: whoever finds the pipe out of line with
// I2 takes `syncing`, does the write()/read(), and publishes `byte`; concurrent callers (a
// signal handler on the owner's own thread included) only mark `dirty` and leave, and the owner
// loops until the state it publishes is clean. Nobody ever waits for anybody.
class WaitableEvent {
 public:
  class wait_awaiter;
  class timed_wait_awaiter;

  WaitableEvent() {
    const auto fds = detail::make_pipe_or_throw("coselect::WaitableEvent: pipe");
    read_fd_ = fds.read_end;
    write_fd_ = fds.write_end;
    primary_watch_.event = this;
  }

  WaitableEvent(const WaitableEvent&) = delete;
  WaitableEvent& operator=(const WaitableEvent&) = delete;

  ~WaitableEvent() {
    // A set() that released a waiter, or another released waiter, may still be on its way out
    // (I6): wait until they are gone.
    for (std::uint64_t s = state_.load(std::memory_order_acquire);
         setting(s) != 0 || blocked(s) != 0; s = state_.load(std::memory_order_acquire)) {
      std::this_thread::yield();
    }
    const std::uintptr_t claim = primary_watch_.claim.load(std::memory_order_acquire);
    detail::loop_hooks* owner = nullptr;
    if (claim & detail::event_watch::kParked) {
      // Emptied and out of its loop's list: nobody looks at it, the loop may even be gone.
      primary_watch_.claim.store(0, std::memory_order_relaxed);
      detail::event_watch::holder(claim)->release();
    } else if (claim != 0) {
      owner = detail::event_watch::holder(claim)->loop;  // waiters linked: the loop lives
      owner->cancel_event_waiters(*this);
    }
    detail::loop_hooks* here = detail::current_loop();
    if (here != nullptr && here != owner) here->cancel_event_waiters(*this);
    detail::close_fd(read_fd_);
    detail::close_fd(write_fd_);
  }

  void set() noexcept {
    std::uint64_t s = state_.load(std::memory_order_relaxed);
    std::uint64_t n;
    bool more_to_do;
    for (;;) {
      if (s & kSet) return;
      n = (s | kSet) + kGenerationOne;
      if (loops(s) != 0) n |= kPulsed;
      // Work left after this CAS (waking threads, the pipe) is announced in the same CAS, so
      // that a waiter released by it may destroy the event: the destructor waits for us (I6).
      more_to_do = blocked(n) != 0 || needs_pipe_io(n);
      if (more_to_do && setting(s) == setting(kSettingMask)) {
        std::this_thread::yield();  // 63 setters mid-way (rapid pulses): let one finish
        s = state_.load(std::memory_order_relaxed);
        continue;
      }
      if (more_to_do) n += kSettingOne;
      if (state_.compare_exchange_weak(s, n, std::memory_order_acq_rel,
                                       std::memory_order_relaxed)) {
        break;
      }
    }
    if (!more_to_do) return;  // the common in-loop case: one CAS, nothing else
    if (blocked(n) != 0) {
      wake_sequence_.fetch_add(1, std::memory_order_release);
      detail::futex_wake_all(futex_word());
    }
    if (needs_pipe_io(n)) reconcile_pipe();
    state_.fetch_sub(kSettingOne, std::memory_order_release);  // last touch of *this
  }

  void clear() noexcept {
    std::uint64_t s = state_.load(std::memory_order_relaxed);
    std::uint64_t n;
    do {
      if (!(s & kSet)) return;
      n = s & ~kSet;
    } while (
        !state_.compare_exchange_weak(s, n, std::memory_order_acq_rel, std::memory_order_relaxed));
    if (needs_pipe_io(n)) reconcile_pipe();
  }

  bool is_set() const noexcept { return (state_.load(std::memory_order_acquire) & kSet) != 0; }

  native_handle fileno() const noexcept {
    if (!(state_.load(std::memory_order_relaxed) & kExported)) {
      const std::uint64_t n = state_.fetch_or(kExported, std::memory_order_acq_rel) | kExported;
      if (needs_pipe_io(n)) reconcile_pipe();
    }
    return read_fd_;
  }

  bool wait_blocking() { return wait_blocking_until(nullptr); }

  template <class Rep, class Period>
  bool wait_blocking(std::chrono::duration<Rep, Period> timeout) {
    if (is_set()) return true;
    const auto step = detail::saturating_ns(timeout);
    if (step.count() <= 0) return is_set();
    const auto deadline =
        detail::saturating_add<std::chrono::steady_clock>(std::chrono::steady_clock::now(), step);
    const timespec ts = detail::to_timespec(deadline.time_since_epoch());
    return wait_blocking_until(&ts);
  }

  // co_await ev.wait(): resumes (on the awaiting coroutine's scheduler) once the event is set.
  // Cancellation point (DESIGN.md §8): a stop of the awaiting coroutine's token while it waits
  // unlinks the waiter and throws operation_canceled, leaving the event as it was; a set()
  // racing with the stop resumes it once, with one of the two outcomes.
  wait_awaiter wait() noexcept;
  // co_await ev.wait(timeout): true if set, false if the timeout passed first; <= 0 polls.
  // Cancellation point like wait(): a stop while waiting also disarms the timeout.
  template <class Rep, class Period>
  timed_wait_awaiter wait(std::chrono::duration<Rep, Period> timeout) noexcept;

  // Asyncore's file_dispatcher view (the BACpypes seed): always interested in reading, never in
  // writing; reading does nothing, so the fd stays readable while the event is set.
  static constexpr bool readable() noexcept { return true; }
  static constexpr bool writable() noexcept { return false; }

 private:
  friend struct detail::event_access;

  static constexpr std::uint64_t kSet = 1u << 0;
  static constexpr std::uint64_t kByte = 1u << 1;
  static constexpr std::uint64_t kExported = 1u << 2;
  static constexpr std::uint64_t kSyncing = 1u << 3;
  static constexpr std::uint64_t kDirty = 1u << 4;
  static constexpr std::uint64_t kPulsed = 1u << 5;
  static constexpr std::uint64_t kLoopOne = 1u << 6;
  static constexpr std::uint64_t kLoopMask = 0x3FFu << 6;
  static constexpr std::uint64_t kBlockedOne = 1u << 16;
  static constexpr std::uint64_t kBlockedMask = 0x3FFu << 16;
  static constexpr std::uint64_t kSettingOne = 1u << 26;
  static constexpr std::uint64_t kSettingMask = 0x3Fu << 26;
  static constexpr std::uint64_t kGenerationOne = std::uint64_t{1} << 32;

  static constexpr std::uint32_t loops(std::uint64_t s) noexcept {
    return static_cast<std::uint32_t>((s & kLoopMask) >> 6);
  }
  static constexpr std::uint32_t blocked(std::uint64_t s) noexcept {
    return static_cast<std::uint32_t>((s & kBlockedMask) >> 16);
  }
  static constexpr std::uint32_t setting(std::uint64_t s) noexcept {
    return static_cast<std::uint32_t>((s & kSettingMask) >> 26);
  }
  static constexpr std::uint32_t generation(std::uint64_t s) noexcept {
    return static_cast<std::uint32_t>(s >> 32);
  }
  static constexpr bool byte_required(std::uint64_t s) noexcept {
    const bool loops_asleep = loops(s) != 0;
    return ((s & kSet) && ((s & kExported) || loops_asleep)) || ((s & kPulsed) && loops_asleep);
  }
  static constexpr bool byte_forbidden(std::uint64_t s) noexcept {
    return !(s & kSet) && !((s & kPulsed) && loops(s) != 0);
  }
  // I2 is violated (and nobody is already fixing it).
  static constexpr bool needs_pipe_io(std::uint64_t s) noexcept {
    if (s & kSyncing) return true;  // tell the owner to look again
    return (s & kByte) ? byte_forbidden(s) : byte_required(s);
  }

  const std::uint32_t* futex_word() const noexcept {
    static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
    return reinterpret_cast<const std::uint32_t*>(&wake_sequence_);
  }
  const std::uint32_t* sync_word() const noexcept {
    return reinterpret_cast<const std::uint32_t*>(&sync_sequence_);
  }

  // Brings the pipe in line with I2, or hands the job to whoever already owns it. Lock-free and
  // async-signal-safe: see the class comment.
  void reconcile_pipe() const noexcept {
    std::uint64_t s = state_.load(std::memory_order_acquire);
    for (;;) {
      if (s & kSyncing) {
        if (s & kDirty) return;
        if (state_.compare_exchange_weak(s, s | kDirty, std::memory_order_acq_rel)) return;
        continue;
      }
      if (!needs_pipe_io(s)) return;
      if (state_.compare_exchange_weak(s, s | kSyncing, std::memory_order_acq_rel)) {
        s |= kSyncing;
        break;
      }
    }
    for (;;) {
      const bool want_byte = (s & kByte) ? !byte_forbidden(s) : byte_required(s);
      if (want_byte != static_cast<bool>(s & kByte)) {
        if (want_byte) {
          detail::write_byte(write_fd_);
        } else {
          detail::drain(read_fd_);
        }
      }
      for (;;) {
        std::uint64_t n = (s & ~(kByte | kDirty)) | (want_byte ? kByte : 0);
        if (!(s & kDirty)) n &= ~kSyncing;
        // seq_cst, with the load of sync_waiters_ after it: a loop waiting for us either sees
        // `syncing` gone or is seen (event_access::wait_for_pipe_owner).
        if (state_.compare_exchange_weak(s, n, std::memory_order_seq_cst)) {
          if (!(n & kSyncing)) {
            if (sync_waiters_.load(std::memory_order_seq_cst) != 0) {
              sync_sequence_.fetch_add(1, std::memory_order_release);
              detail::futex_wake_all(sync_word());
            }
            return;
          }
          s = n;
          break;  // someone changed the state meanwhile: evaluate again
        }
      }
    }
  }

  bool wait_blocking_until(const timespec* deadline) {
    const std::uint32_t sequence = wake_sequence_.load(std::memory_order_acquire);
    std::uint64_t s = state_.load(std::memory_order_acquire);
    do {
      if (s & kSet) return true;
      if (blocked(s) == blocked(kBlockedMask)) {
        throw std::system_error(EAGAIN, detail::errno_category(),
                                "coselect::WaitableEvent: too many blocked threads");
      }
    } while (!state_.compare_exchange_weak(s, s + kBlockedOne, std::memory_order_acq_rel,
                                           std::memory_order_acquire));
    // EINTR and spurious wake-ups land back here; the absolute deadline keeps the total wait
    // exact, neither shortened nor restarted.
    while (wake_sequence_.load(std::memory_order_acquire) == sequence) {
      if (!detail::futex_wait(futex_word(), sequence, deadline)) break;  // timed out
    }
    const bool pulsed = wake_sequence_.load(std::memory_order_acquire) != sequence;
    // Last touch of *this: another released thread may destroy the event right after (I6).
    const std::uint64_t after = state_.fetch_sub(kBlockedOne, std::memory_order_acq_rel);
    return pulsed || (after & kSet);
  }

  mutable std::atomic<std::uint64_t> state_{0};
  std::atomic<std::uint32_t> wake_sequence_{0};
  // Loops waiting for the pipe's owner to finish (wait_for_pipe_owner), and the futex word
  // the owner bumps when it finishes and finds any.
  mutable std::atomic<std::uint32_t> sync_waiters_{0};
  mutable std::atomic<std::uint32_t> sync_sequence_{0};
  native_handle read_fd_ = detail::invalid_handle;
  native_handle write_fd_ = detail::invalid_handle;
  detail::event_watch primary_watch_;
};

namespace detail {

// The loop's side of the state machine (I5). Only the Scheduler uses this.
struct event_access {
  static native_handle read_fd(const WaitableEvent& ev) noexcept { return ev.read_fd_; }
  static event_watch& primary_watch(WaitableEvent& ev) noexcept { return ev.primary_watch_; }

  static std::uint64_t load(const WaitableEvent& ev) noexcept {
    return ev.state_.load(std::memory_order_acquire);
  }
  static bool is_set(std::uint64_t s) noexcept { return (s & WaitableEvent::kSet) != 0; }
  static std::uint32_t generation(std::uint64_t s) noexcept { return WaitableEvent::generation(s); }

  // Registers a loop that is about to sleep in select() on the read end, unless the event was
  // set, or set and cleared, since `expected_generation`: then returns false and the caller
  // must not sleep. Also false if 1023 loops already sleep on it (the caller then naps briefly).
  static bool enter_select(const WaitableEvent& ev, std::uint32_t expected_generation) noexcept {
    std::uint64_t s = ev.state_.load(std::memory_order_acquire);
    std::uint64_t n;
    do {
      if ((s & WaitableEvent::kSet) || WaitableEvent::generation(s) != expected_generation) {
        return false;
      }
      if ((s & WaitableEvent::kLoopMask) == WaitableEvent::kLoopMask) return false;
      n = s + WaitableEvent::kLoopOne;
    } while (!ev.state_.compare_exchange_weak(s, n, std::memory_order_acq_rel,
                                              std::memory_order_acquire));
    if (WaitableEvent::needs_pipe_io(n)) ev.reconcile_pipe();
    return true;
  }

  // A loop whose select() woke for nothing: the pipe may still hold a byte that the thread
  // owning it (`syncing`) is about to drain, quite likely preempted by this very wake-up on a
  // busy CPU. Selecting again would spin until it runs; instead sleep until it is done (or
  // until `deadline`, CLOCK_MONOTONIC, should it be stopped). Returns false at once if nobody
  // owns the pipe.
  static bool wait_for_pipe_owner(const WaitableEvent& ev, const timespec& deadline) noexcept {
    if (!(ev.state_.load(std::memory_order_acquire) & WaitableEvent::kSyncing)) return false;
    // Most often the owner is about to finish: running on another CPU, or preempted on this
    // one, where a yield hands it the CPU. Sleep only if that was not enough: a futex sleep and
    // wake cost more than the owner's remaining work.
    std::this_thread::yield();
    const std::uint32_t sequence = ev.sync_sequence_.load(std::memory_order_acquire);
    if (!(ev.state_.load(std::memory_order_acquire) & WaitableEvent::kSyncing)) return true;
    ev.sync_waiters_.fetch_add(1, std::memory_order_seq_cst);
    while ((ev.state_.load(std::memory_order_seq_cst) & WaitableEvent::kSyncing) &&
           ev.sync_sequence_.load(std::memory_order_acquire) == sequence) {
      if (!futex_wait(ev.sync_word(), sequence, &deadline)) break;  // timed out
    }
    ev.sync_waiters_.fetch_sub(1, std::memory_order_release);
    return true;
  }

  static void leave_select(const WaitableEvent& ev) noexcept {
    std::uint64_t s = ev.state_.load(std::memory_order_relaxed);
    std::uint64_t n;
    do {
      n = s - WaitableEvent::kLoopOne;
      if (WaitableEvent::loops(n) == 0) n &= ~WaitableEvent::kPulsed;
    } while (!ev.state_.compare_exchange_weak(s, n, std::memory_order_acq_rel,
                                              std::memory_order_relaxed));
    if (WaitableEvent::needs_pipe_io(n)) ev.reconcile_pipe();
  }
};

[[noreturn]] inline void throw_no_scheduler(const char* what) {
  throw std::logic_error(std::string("coselect: ") + what +
                         " awaited on a thread where no coselect::Scheduler is running");
}

}  // namespace detail

namespace detail {

// The body of both event awaiters, over the waiter node they keep in the awaiting frame
// (event_waiter, or timed_event_waiter with its timer node). Lives in the awaiting frame; if the
// frame is destroyed while waiting, it unlinks itself from the loop. Movable until awaited. The
// loop is not stored: while the node is linked its watch knows it, and that is the only time
// it is needed after await_suspend.
template <class Node>
class event_wait {
 public:
  explicit event_wait(WaitableEvent& ev) noexcept : event_(ev) {}
  // Moved only before it is awaited: nothing is linked or armed yet, so nothing is taken over.
  event_wait(event_wait&& other) noexcept : event_(other.event_), node_(), cancel_() {}
  event_wait& operator=(const event_wait&) = delete;
  ~event_wait() {
    cancel_.disarm();
    if (node_.watch != nullptr) node_.watch->loop->remove_event_waiter(node_);
  }

  bool await_ready() {
    if (current_loop() == nullptr) throw_no_scheduler("WaitableEvent::wait()");
    // Decide here, once: re-reading is_set() later could see a clear() from another thread.
    if (!event_.is_set()) return false;
    node_.outcome = wait_outcome::released;
    return true;
  }

 protected:
  static constexpr const char* kStopped = "coselect::WaitableEvent::wait() canceled";

  template <class Promise>
  bool suspend(std::coroutine_handle<Promise> h, loop_hooks& loop) {
    const std::uint64_t s = event_access::load(event_);
    if (event_access::is_set(s)) {
      node_.outcome = wait_outcome::released;
      return false;
    }
    const std::stop_token* token = stop_token_of(h);
    cancel_point::check(token, kStopped);
    node_.handle = h;
    node_.generation = event_access::generation(s);
    loop.add_event_waiter(event_, node_);
    cancel_.arm(token, loop, &on_cancel, this);
    return true;
  }

  // Every way out of a wait: no stop request can arrive any more; throws if canceled.
  void end_wait() {
    cancel_.disarm();
    if (node_.outcome == wait_outcome::canceled) [[unlikely]] {
      throw_operation_canceled(
          node_.stopped ? kStopped
                        : "coselect::WaitableEvent destroyed while a coroutine waited on it");
    }
  }

  WaitableEvent& event_;
  Node node_;
  cancel_point cancel_;

 private:
  static void on_cancel(void* self) noexcept {
    auto& a = *static_cast<event_wait*>(self);
    if (a.node_.watch == nullptr) return;  // already released (or timed out): that stands
    loop_hooks& loop = *a.node_.watch->loop;
    loop.remove_event_waiter(a.node_);
    a.node_.outcome = wait_outcome::canceled;
    a.node_.stopped = true;
    loop.make_ready(a.node_.handle);
  }
};

}  // namespace detail

// Awaiter of `co_await ev.wait()`.
class WaitableEvent::wait_awaiter : private detail::event_wait<detail::event_waiter> {
 public:
  explicit wait_awaiter(WaitableEvent& ev) noexcept : event_wait(ev) {}
  wait_awaiter(wait_awaiter&& other) noexcept = default;

  using event_wait::await_ready;

  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> h) {
    return suspend(h, *detail::current_loop());
  }

  void await_resume() { end_wait(); }
};

// Awaiter of `co_await ev.wait(timeout)`: true if set, false on timeout.
class WaitableEvent::timed_wait_awaiter : private detail::event_wait<detail::timed_event_waiter> {
 public:
  timed_wait_awaiter(WaitableEvent& ev, std::chrono::nanoseconds timeout) noexcept
      : event_wait(ev), timeout_(timeout) {}
  timed_wait_awaiter(timed_wait_awaiter&& other) noexcept = default;

  bool await_ready() {
    if (event_wait::await_ready()) return true;
    if (timeout_.count() > 0) return false;
    node_.outcome = detail::wait_outcome::timed_out;  // a poll that found the event clear
    return true;
  }

  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> h) {
    detail::loop_hooks& loop = *detail::current_loop();
    node_.due = detail::saturating_add<std::chrono::steady_clock>(loop.now(), timeout_);
    return suspend(h, loop);
  }

  bool await_resume() {
    end_wait();
    return node_.outcome == detail::wait_outcome::released;
  }

 private:
  std::chrono::nanoseconds timeout_;
};

inline WaitableEvent::wait_awaiter WaitableEvent::wait() noexcept {
  return wait_awaiter(*this);
}

template <class Rep, class Period>
WaitableEvent::timed_wait_awaiter WaitableEvent::wait(
    std::chrono::duration<Rep, Period> timeout) noexcept {
  return timed_wait_awaiter(*this, detail::saturating_ns(timeout));
}

}  // namespace coselect
