// The reactor: what a Scheduler sleeps in. It keeps who waits on which fd (coroutines, as
// fd_waiter nodes), the asyncore-style dispatchers, and, per round, the extra read fds the loop
// watches (event pipes). That bookkeeping is shared; each backend supplies the wait itself:
// reactor_select.hpp, reactor_poll.hpp, reactor_epoll.hpp. Loop thread only.
//
// Readiness is spoken in poll()'s bits everywhere (POLLIN, POLLOUT, POLLERR, POLLHUP, POLLNVAL);
// a backend translates its own report into them.
#pragma once

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <span>
#include <vector>

#include "../backend.hpp"
#include "../dispatcher.hpp"
#include "syscall.hpp"
#include "wait_node.hpp"

namespace coselect::detail {

// A coroutine waiting until `fd` is readable (or writable), linked FIFO into its fd's slot.
struct fd_waiter : timer_node {
  std::coroutine_handle<> handle{};
  fd_waiter* next = nullptr;
  fd_waiter* prev = nullptr;
  native_handle fd = invalid_handle;
  int error = 0;  // errno when outcome == failed
  bool for_write = false;
  bool linked = false;
  wait_outcome outcome = wait_outcome::pending;
};

// What a reactor hands back to its loop during a round.
class reactor_sink {
 public:
  // `w` is unlinked and its outcome set; the loop resumes it (never inline).
  virtual void fd_ready(fd_waiter& w) noexcept = 0;
  // A dispatcher's handler (or its readable()/writable()/fileno()) threw.
  virtual void dispatch_failed(std::exception_ptr e) noexcept = 0;

 protected:
  ~reactor_sink() = default;
};

// What any poll()-style result means to a waiter: ready, or the fd was closed.
inline constexpr short poll_readable = POLLIN | POLLPRI | POLLERR | POLLHUP;
inline constexpr short poll_writable = POLLOUT | POLLERR | POLLHUP;

class reactor {
 public:
  reactor() = default;
  reactor(const reactor&) = delete;
  reactor& operator=(const reactor&) = delete;
  virtual ~reactor() = default;

  virtual Backend backend() const noexcept = 0;

  // The loop's own wake-up fd: watched in every blocking round for the reactor's whole life.
  virtual void pin(native_handle fd) { (void)fd; }

  // One round: waits up to `timeout` (nullopt: until something happens; zero: a poll) for the
  // fds that have waiters or dispatchers and for `extra_read_fds` (whose readiness the caller
  // checks itself). Waiters whose fd is ready (or closed: outcome `failed`, EBADF) are unlinked
  // and handed to `sink`; dispatchers are called, an exception from one going to the sink
  // without stopping the others. Returns whether any waiter or dispatcher was served. EINTR
  // counts as "nothing happened": the caller's deadlines are absolute. Other errors throw.
  virtual bool wait(std::optional<std::chrono::nanoseconds> timeout,
                    std::span<const native_handle> extra_read_fds, reactor_sink& sink) = 0;

  bool has_interest() const noexcept { return waiters_ != 0 || !dispatchers_.empty(); }

  // Links a waiter (fd, for_write, handle already filled in). Throws only std::bad_alloc, before
  // anything changed.
  void add(fd_waiter& w) {
    fd_slot& s = slot(w.fd);
    w.linked = true;
    w.outcome = wait_outcome::pending;
    w.next = nullptr;
    w.prev = s.tail;
    (s.tail ? s.tail->next : s.head) = &w;
    s.tail = &w;
    ++waiters_;
    const bool first_of_kind = (w.for_write ? s.writers++ : s.readers++) == 0;
    if (s.readers + s.writers == 1) {
      s.active_index = active_fds_.size();
      active_fds_.push_back(w.fd);
    }
    if (first_of_kind) interest_changed(w.fd);
  }

  // Unlinks a waiter that is still linked (a no-op otherwise).
  void remove(fd_waiter& w) noexcept {
    if (!w.linked) return;
    fd_slot& s = slots_[static_cast<std::size_t>(w.fd)];
    (w.prev ? w.prev->next : s.head) = w.next;
    (w.next ? w.next->prev : s.tail) = w.prev;
    w.next = w.prev = nullptr;
    w.linked = false;
    --waiters_;
    const bool last_of_kind = --(w.for_write ? s.writers : s.readers) == 0;
    if (s.readers + s.writers == 0) {
      const native_handle moved = active_fds_.back();
      slots_[static_cast<std::size_t>(moved)].active_index = s.active_index;
      active_fds_[s.active_index] = moved;
      active_fds_.pop_back();
      s.active_index = fd_slot::inactive;
    }
    if (last_of_kind) interest_changed(w.fd);
  }

  // Every waiter on `fd` ends with `outcome` (and `error`) and goes to the sink, oldest first.
  void finish_all(native_handle fd, wait_outcome outcome, int error, reactor_sink& sink) noexcept {
    // An invalid handle converts to a huge index: no slot.
    if (static_cast<std::size_t>(fd) >= slots_.size()) return;
    while (fd_waiter* w = slots_[static_cast<std::size_t>(fd)].head) {
      finish(*w, outcome, error, sink);
    }
  }

  void add_dispatcher(Dispatcher& d) {
    if (d.registered_) return;
    check_fd(d.fileno());
    dispatchers_.push_back(&d);
    d.registered_ = true;
  }

  void remove_dispatcher(Dispatcher& d) noexcept {
    if (!d.registered_) return;
    d.registered_ = false;
    dispatchers_.erase(std::remove(dispatchers_.begin(), dispatchers_.end(), &d),
                       dispatchers_.end());
    // A handler may remove (and delete) itself or others while a round walks its snapshot.
    for (watched& w : round_dispatchers_) {
      if (w.dispatcher == &d) w.dispatcher = nullptr;
    }
  }

  // Forgets every waiter without resuming it, and every dispatcher (the loop is being destroyed).
  void forget_all() noexcept {
    while (!active_fds_.empty()) {
      fd_slot& s = slots_[static_cast<std::size_t>(active_fds_.back())];
      while (s.head != nullptr)
        remove(*s.head);
    }
    for (Dispatcher* d : dispatchers_)
      d->registered_ = false;
    dispatchers_.clear();
  }

 protected:
  // The dispatchers of the current round, as asked before the wait.
  struct watched {
    Dispatcher* dispatcher;  // null once removed during this round
    native_handle fd;
    bool read;
    bool write;
  };

  // The waiters of one fd, oldest first.
  struct fd_slot {
    static constexpr std::size_t inactive = static_cast<std::size_t>(-1);
    fd_waiter* head = nullptr;
    fd_waiter* tail = nullptr;
    std::uint32_t readers = 0;
    std::uint32_t writers = 0;
    std::size_t active_index = inactive;  // in active_fds_ while it has waiters
  };

  // Waiters may now be added for fds below `count`: a backend that keeps per-fd state grows it
  // here, where throwing is still allowed (interest_changed must not throw).
  virtual void fd_table_grew(std::size_t count) { (void)count; }

  // The fd's waiters changed between "some readers" and "none", or "some writers" and "none".
  virtual void interest_changed(native_handle fd) noexcept { (void)fd; }

  // poll() events the waiters of `fd` want (0 if none).
  short wanted_by_waiters(native_handle fd) const noexcept {
    if (static_cast<std::size_t>(fd) >= slots_.size()) return 0;
    const fd_slot& s = slots_[static_cast<std::size_t>(fd)];
    return static_cast<short>((s.readers ? POLLIN : 0) | (s.writers ? POLLOUT : 0));
  }
  bool has_waiters(native_handle fd) const noexcept { return wanted_by_waiters(fd) != 0; }

  // Serves the waiters of `fd` that `revents` satisfies; POLLNVAL fails them all with EBADF.
  bool complete(native_handle fd, short revents, reactor_sink& sink) noexcept {
    if (static_cast<std::size_t>(fd) >= slots_.size()) return false;
    if (revents & POLLNVAL) {
      const bool any = has_waiters(fd);
      finish_all(fd, wait_outcome::failed, EBADF, sink);
      return any;
    }
    bool served = false;
    for (fd_waiter* w = slots_[static_cast<std::size_t>(fd)].head; w != nullptr;) {
      fd_waiter* next = w->next;
      if (revents & (w->for_write ? poll_writable : poll_readable)) {
        finish(*w, wait_outcome::released, 0, sink);
        served = true;
      }
      w = next;
    }
    return served;
  }

  // Asks every dispatcher what it wants this round (round_dispatchers_).
  void snapshot_dispatchers(reactor_sink& sink) {
    round_dispatchers_.clear();
    for (Dispatcher* d : dispatchers_) {
      watched& w = round_dispatchers_.emplace_back(watched{d, invalid_handle, false, false});
      guarded(sink, [&] {
        w.fd = d->fileno();
        w.read = d->readable();
        w.write = d->writable();
      });
    }
  }

  // Calls the handlers of this round's dispatchers; `revents_of(i)` is what the wait reported
  // for round_dispatchers_[i]. A closed fd (POLLNVAL) removes the dispatcher and calls
  // handle_close(). Handlers may add and remove dispatchers (and delete themselves).
  template <class Revents>
  bool serve_dispatchers(Revents&& revents_of, reactor_sink& sink) {
    bool served = false;
    for (std::size_t i = 0; i < round_dispatchers_.size(); ++i) {
      const watched w = round_dispatchers_[i];
      if (w.dispatcher == nullptr || w.fd == invalid_handle || !(w.read || w.write)) continue;
      const short revents = revents_of(i);
      if (revents & POLLNVAL) {
        remove_dispatcher(*w.dispatcher);
        guarded(sink, [&] { w.dispatcher->handle_close(); });
        served = true;
        continue;
      }
      if (w.read && (revents & poll_readable)) {
        guarded(sink, [&] { w.dispatcher->handle_read(); });
        served = true;
      }
      if (round_dispatchers_[i].dispatcher != nullptr && w.write && (revents & poll_writable)) {
        guarded(sink, [&] { w.dispatcher->handle_write(); });
        served = true;
      }
    }
    return served;
  }

  template <class F>
  static void guarded(reactor_sink& sink, F&& f) noexcept {
    try {
      f();
    } catch (...) {
      sink.dispatch_failed(std::current_exception());
    }
  }

  std::vector<native_handle> active_fds_;  // fds that have waiters, in no particular order
  std::vector<watched> round_dispatchers_;

 private:
  fd_slot& slot(native_handle fd) {
    const auto index = static_cast<std::size_t>(fd);
    if (index >= slots_.size()) {
      slots_.resize(std::max(index + 1, slots_.size() * 2));
      fd_table_grew(slots_.size());
    }
    return slots_[index];
  }

  void finish(fd_waiter& w, wait_outcome outcome, int error, reactor_sink& sink) noexcept {
    remove(w);
    w.outcome = outcome;
    w.error = error;
    sink.fd_ready(w);
  }

  std::vector<fd_slot> slots_;  // indexed by fd
  std::size_t waiters_ = 0;
  std::vector<Dispatcher*> dispatchers_;
};

}  // namespace coselect::detail
