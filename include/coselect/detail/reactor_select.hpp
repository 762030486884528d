// The select() reactor: coroutines waiting for fd readiness, asyncore-style dispatchers, and the
// extra read fds (event pipes) a loop sleeps on. Loop thread only.
#pragma once

#include <sys/select.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <coroutine>
#include <exception>
#include <optional>
#include <span>
#include <vector>

#include "../dispatcher.hpp"
#include "syscall.hpp"
#include "wait_node.hpp"

namespace coselect::detail {

// A coroutine waiting until `fd` is readable (or writable), linked into the reactor.
struct fd_waiter : timer_node {
  std::coroutine_handle<> handle{};
  fd_waiter* next = nullptr;
  fd_waiter* prev = nullptr;
  int fd = -1;
  int error = 0;  // errno when outcome == failed
  bool for_write = false;
  bool linked = false;
  bool has_deadline = false;
  wait_outcome outcome = wait_outcome::pending;
};

class select_reactor {
 public:
  bool has_interest() const noexcept { return head_ != nullptr || !dispatchers_.empty(); }

  void add(fd_waiter& w) noexcept {
    w.linked = true;
    w.next = nullptr;
    w.prev = tail_;
    if (tail_) {
      tail_->next = &w;
    } else {
      head_ = &w;
    }
    tail_ = &w;
  }

  void remove(fd_waiter& w) noexcept {
    if (!w.linked) return;
    if (w.prev) {
      w.prev->next = w.next;
    } else {
      head_ = w.next;
    }
    if (w.next) {
      w.next->prev = w.prev;
    } else {
      tail_ = w.prev;
    }
    w.next = w.prev = nullptr;
    w.linked = false;
  }

  void add_dispatcher(Dispatcher& d) {
    if (d.registered_) return;
    check_selectable_fd(d.fileno());
    dispatchers_.push_back(&d);
    d.registered_ = true;
  }

  void remove_dispatcher(Dispatcher& d) noexcept {
    if (!d.registered_) return;
    d.registered_ = false;
    dispatchers_.erase(std::remove(dispatchers_.begin(), dispatchers_.end(), &d),
                       dispatchers_.end());
    // A handler may remove (and delete) itself or others while poll() walks its snapshot.
    for (watched& w : snapshot_) {
      if (w.dispatcher == &d) w.dispatcher = nullptr;
    }
  }

  // One select() round: waits up to `timeout` (nullopt: until something happens) for the
  // registered fds and `extra_read_fds`. Ready waiters are unlinked and passed to `on_ready`
  // (also waiters whose fd was found closed, with outcome `failed`); dispatchers are called,
  // and an exception from one goes to `on_failure` without stopping the others. Returns whether
  // select() reported any fd of a waiter or dispatcher (the extra fds are the caller's to check).
  // EINTR counts as "nothing happened": the caller's deadlines are absolute.
  template <class OnReady, class OnFailure>
  bool poll(std::optional<std::chrono::nanoseconds> timeout, std::span<const int> extra_read_fds,
            OnReady&& on_ready, OnFailure&& on_failure) {
    fd_set readable, writable;
    FD_ZERO(&readable);
    FD_ZERO(&writable);
    int max_fd = -1;
    auto watch = [&](int fd, fd_set& set) {
      if (fd < 0 || fd >= FD_SETSIZE) return;  // never write outside the fd_set
      FD_SET(fd, &set);
      max_fd = std::max(max_fd, fd);
    };
    for (fd_waiter* w = head_; w; w = w->next)
      watch(w->fd, w->for_write ? writable : readable);
    for (int fd : extra_read_fds)
      watch(fd, readable);
    snapshot_.clear();
    for (Dispatcher* d : dispatchers_) {
      watched& w = snapshot_.emplace_back(watched{d, -1, false, false});
      guarded(on_failure, [&] {
        w.fd = d->fileno();
        w.read = d->readable();
        w.write = d->writable();
      });
      if (w.read) watch(w.fd, readable);
      if (w.write) watch(w.fd, writable);
    }

    timeval tv{};
    timeval* tvp = nullptr;
    if (timeout) {
      tv = to_select_timeout(*timeout);
      tvp = &tv;
    }
    const int n = ::select(max_fd + 1, &readable, &writable, nullptr, tvp);
    if (n < 0) {
      if (errno == EBADF) fail_closed_fds(on_ready, on_failure);
      return errno == EBADF;  // EINTR: the caller simply iterates again
    }
    if (n == 0) return false;
    bool dispatched = false;

    for (fd_waiter* w = head_; w;) {
      fd_waiter* next = w->next;
      if (FD_ISSET(w->fd, w->for_write ? &writable : &readable)) {
        remove(*w);
        w->outcome = wait_outcome::released;
        on_ready(*w);
        dispatched = true;
      }
      w = next;
    }
    for (std::size_t i = 0; i < snapshot_.size(); ++i) {
      const watched w = snapshot_[i];
      if (w.dispatcher == nullptr || w.fd < 0 || w.fd >= FD_SETSIZE) continue;
      if (w.read && FD_ISSET(w.fd, &readable)) {
        guarded(on_failure, [&] { w.dispatcher->handle_read(); });
        dispatched = true;
      }
      if (snapshot_[i].dispatcher != nullptr && w.write && FD_ISSET(w.fd, &writable)) {
        guarded(on_failure, [&] { w.dispatcher->handle_write(); });
        dispatched = true;
      }
    }
    return dispatched;
  }

  // Frees every waiter without resuming it (the loop is being destroyed).
  void forget_all() noexcept {
    while (head_)
      remove(*head_);
    for (Dispatcher* d : dispatchers_)
      d->registered_ = false;
    dispatchers_.clear();
  }

 private:
  struct watched {
    Dispatcher* dispatcher;  // null once removed during this round
    int fd;
    bool read;
    bool write;
  };

  template <class OnFailure, class F>
  static void guarded(OnFailure& on_failure, F&& f) {
    try {
      f();
    } catch (...) {
      on_failure(std::current_exception());
    }
  }

  template <class OnReady, class OnFailure>
  void fail_closed_fds(OnReady& on_ready, OnFailure& on_failure) {
    for (fd_waiter* w = head_; w;) {
      fd_waiter* next = w->next;
      if (!fd_is_open(w->fd)) {
        remove(*w);
        w->outcome = wait_outcome::failed;
        w->error = EBADF;
        on_ready(*w);
      }
      w = next;
    }
    for (std::size_t i = 0; i < snapshot_.size(); ++i) {
      const watched w = snapshot_[i];
      if (w.dispatcher == nullptr || fd_is_open(w.fd)) continue;
      remove_dispatcher(*w.dispatcher);
      guarded(on_failure, [&] { w.dispatcher->handle_close(); });
    }
  }

  fd_waiter* head_ = nullptr;
  fd_waiter* tail_ = nullptr;
  std::vector<Dispatcher*> dispatchers_;
  std::vector<watched> snapshot_;  // the dispatchers of the current round
};

}  // namespace coselect::detail
