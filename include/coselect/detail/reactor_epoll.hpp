// The epoll reactor (Backend::epoll, Linux): registrations persist across rounds, so a wait
// costs O(ready fds), not O(watched). Loop thread only.
//
// How registrations are kept
//  * One-shot, level-triggered: after epoll reports an fd, the kernel disarms it until the next
//    epoll_ctl(MOD). An fd that stays ready with nobody waiting is therefore reported at most
//    once (an idle loop never spins on it), and re-arming costs one epoll_ctl per wait that
//    follows a report, exactly when the interest is needed again.
//  * Lazy: when the last waiter of an fd leaves, nothing is told to the kernel. The fd may be
//    closed and its number reused for another file at any moment after that, so the slot forgets
//    what it knew (`known`), and the next waiter re-registers with MOD, falling back to ADD
//    (ENOENT: the old registration vanished with its file).
//  * Every registration carries a generation in its user data: a report from a registration
//    that outlived its fd number (the file stayed open elsewhere, e.g. in a forked child) is
//    recognised as stale and ignored.
//  * The loop's own wake-up fd is registered once, level-triggered and persistent.
//  * epoll refuses regular files (EPERM): waiters on such an fd are ready at once, as select()
//    would say. A closed fd (EBADF) fails its waiters with EBADF.
// The extra read fds of a round (event pipes) and the dispatchers' interest are merged into the
// same registrations, since an fd can be in an epoll set only once.
#pragma once

#include <poll.h>
#include <sys/epoll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "reactor.hpp"
#include "syscall.hpp"

namespace coselect::detail {

class epoll_reactor final : public reactor {
 public:
  epoll_reactor() : epfd_(::epoll_create1(EPOLL_CLOEXEC)) {
    if (epfd_ < 0) throw_errno(errno, "coselect: epoll_create1");
  }
  ~epoll_reactor() override { close_fd(epfd_); }

  Backend backend() const noexcept override { return Backend::epoll; }

  void pin(int fd) override {
    entry& e = entry_of(fd);
    e.generation = ++generation_;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag(fd, e.generation);
    if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) throw_errno(errno, "coselect: epoll_ctl");
    e.pinned = true;
  }

  bool wait(std::optional<std::chrono::nanoseconds> timeout, std::span<const int> extra_read_fds,
            reactor_sink& sink) override {
    // 1. This round's interest beyond the waiters': event pipes and dispatchers.
    snapshot_dispatchers(sink);
    for (const watched& w : round_dispatchers_) {
      if (w.fd < 0) continue;
      add_round_interest(w.fd, (w.read ? EPOLLIN : 0u) | (w.write ? EPOLLOUT : 0u));
    }
    for (int fd : extra_read_fds)
      add_round_interest(fd, EPOLLIN);

    // 2. Bring the kernel in line with what changed. Refused and failed fds are served now.
    bool served = sync(sink);
    if (!refused_.empty()) timeout = std::chrono::nanoseconds::zero();

    // 3. Wait.
    const int n = wait_events(timeout);
    if (n < 0 && errno != EINTR) throw_errno(errno, "coselect: epoll_wait");
    for (int i = 0; i < n; ++i) {
      const int fd = static_cast<int>(events_[static_cast<std::size_t>(i)].data.u64 & 0xFFFFFFFFu);
      const auto generation =
          static_cast<std::uint32_t>(events_[static_cast<std::size_t>(i)].data.u64 >> 32);
      entry& e = entries_[static_cast<std::size_t>(fd)];
      if (e.generation != generation || e.pinned) continue;  // stale, or the wake-up fd
      e.armed = 0;                                           // one-shot: disarmed now
      e.got = static_cast<short>(e.got | to_poll(events_[static_cast<std::size_t>(i)].events));
      mark_dirty(fd);
      reported_.push_back(fd);
    }
    for (int fd : refused_) {
      entry_of(fd).got = POLLIN | POLLOUT;
      reported_.push_back(fd);
    }
    refused_.clear();

    // 4. Serve waiters, then dispatchers (reported_ may name an fd twice: got is reset below).
    for (int fd : reported_) {
      const short got = entries_[static_cast<std::size_t>(fd)].got;
      if (got != 0) served |= complete(fd, got, sink);
    }
    served |= serve_dispatchers(
        [&](std::size_t i) {
          const int fd = round_dispatchers_[i].fd;
          const entry& e = entries_[static_cast<std::size_t>(fd)];
          return e.error == EBADF ? static_cast<short>(POLLNVAL) : e.got;
        },
        sink);

    // 5. Forget the round.
    for (int fd : reported_)
      entries_[static_cast<std::size_t>(fd)].got = 0;
    reported_.clear();
    for (int fd : round_fds_) {
      entry& e = entries_[static_cast<std::size_t>(fd)];
      e.round = 0;
      e.error = 0;
      forget_if_unused(fd);
      mark_dirty(fd);
    }
    round_fds_.clear();
    if (events_.size() == static_cast<std::size_t>(n) && n < max_events) {
      events_.resize(events_.size() * 2);  // a full batch: take more next time
    }
    return served;
  }

 protected:
  void fd_table_grew(std::size_t count) override { entry_of(static_cast<int>(count) - 1); }
  void interest_changed(int fd) noexcept override {
    forget_if_unused(fd);
    mark_dirty(fd);
  }

 private:
  static constexpr int max_events = 4096;

  struct entry {
    std::uint32_t armed = 0;       // events armed in the kernel (0 after a one-shot report)
    std::uint32_t round = 0;       // this round's interest from extra fds and dispatchers
    std::uint32_t generation = 0;  // of the registration we last made for this fd
    short got = 0;                 // poll() bits reported this round
    int error = 0;                 // errno of a failed epoll_ctl this round
    bool known = false;            // `armed` is what the kernel has for this fd and file
    bool dirty = false;            // in dirty_: look at it before the next wait
    bool pinned = false;           // the loop's wake-up fd
  };

  static std::uint64_t tag(int fd, std::uint32_t generation) noexcept {
    return (std::uint64_t{generation} << 32) | static_cast<std::uint32_t>(fd);
  }

  static short to_poll(std::uint32_t events) noexcept {
    return static_cast<short>(
        ((events & EPOLLIN) ? POLLIN : 0) | ((events & EPOLLPRI) ? POLLPRI : 0) |
        ((events & EPOLLOUT) ? POLLOUT : 0) | ((events & EPOLLERR) ? POLLERR : 0) |
        ((events & EPOLLHUP) ? POLLHUP : 0));
  }

  entry& entry_of(int fd) {
    const auto index = static_cast<std::size_t>(fd);
    if (index >= entries_.size()) {
      entries_.resize(std::max(index + 1, entries_.size() * 2));
      dirty_.reserve(entries_.size());  // an fd is in dirty_ at most once: mark_dirty never throws
    }
    return entries_[index];
  }

  void mark_dirty(int fd) noexcept {
    entry& e = entries_[static_cast<std::size_t>(fd)];
    if (e.dirty) return;
    e.dirty = true;
    dirty_.push_back(fd);  // within the capacity entry_of reserved
  }

  // Nobody needs the fd any more: from now on it may be closed and its number reused for
  // another file, so what we knew of its registration is no longer to be trusted. (Decided
  // here, at once: a new waiter may arrive before the next sync.)
  void forget_if_unused(int fd) noexcept {
    entry& e = entries_[static_cast<std::size_t>(fd)];
    if (e.round == 0 && !has_waiters(fd)) e.known = false;
  }

  void add_round_interest(int fd, std::uint32_t events) {
    if (events == 0) return;
    entry& e = entry_of(fd);
    if (e.pinned) return;
    if (e.round == 0) round_fds_.push_back(fd);
    e.round |= events;
    mark_dirty(fd);
  }

  // Applies the interest changes since the last round. Returns whether waiters were served
  // (an fd the kernel refused with an error other than EPERM).
  bool sync(reactor_sink& sink) {
    bool served = false;
    for (int fd : dirty_) {
      entry& e = entries_[static_cast<std::size_t>(fd)];
      e.dirty = false;
      if (e.pinned) continue;
      const short by_waiters = wanted_by_waiters(fd);
      const std::uint32_t want = e.round | ((by_waiters & POLLIN) ? EPOLLIN : 0u) |
                                 ((by_waiters & POLLOUT) ? EPOLLOUT : 0u);
      // Nobody needs it: leave the kernel alone (a one-shot registration fires at most once
      // more; forget_if_unused already stopped trusting it).
      if (want == 0) continue;
      if (e.known && e.armed == want) continue;
      const int error = arm(fd, e, want);
      if (error == 0) continue;
      if (error == EPERM) {  // a regular file or the like: always ready
        refused_.push_back(fd);
        continue;
      }
      if (e.round != 0) {
        // An event pipe or a dispatcher: a pipe that cannot be watched would be a lost wake-up,
        // so anything but a closed dispatcher fd (handle_close, below) is the caller's error.
        if (error != EBADF) throw_errno(error, "coselect: epoll_ctl");
        e.error = error;  // reset with the round's interest
      }
      if (by_waiters != 0) {
        finish_all(fd, wait_outcome::failed, error, sink);
        served = true;
      }
    }
    dirty_.clear();
    return served;
  }

  // Registers `fd` for `want` (one-shot), as MOD or ADD, whichever the kernel accepts.
  int arm(int fd, entry& e, std::uint32_t want) noexcept {
    epoll_event ev{};
    ev.events = want | EPOLLONESHOT;
    ev.data.u64 = tag(fd, e.generation);
    int rc = -1;
    if (e.generation != 0) rc = ::epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev);
    if (e.generation == 0 || (rc != 0 && errno == ENOENT)) {
      e.generation = ++generation_;
      if (e.generation == 0) e.generation = ++generation_;
      ev.data.u64 = tag(fd, e.generation);
      rc = ::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
      if (rc != 0 && errno == EEXIST) rc = ::epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev);
    }
    if (rc != 0) {
      e.known = false;
      return errno;
    }
    e.armed = want;
    e.known = true;
    return 0;
  }

  int wait_events(std::optional<std::chrono::nanoseconds> timeout) {
    constexpr std::chrono::nanoseconds cap = std::chrono::hours(24);
    if (events_.empty()) events_.resize(64);
    const int count = static_cast<int>(events_.size());
    if (use_pwait2_) {
      timespec ts{};
      if (timeout) ts = to_timespec(std::min(*timeout, cap));
      const int n = ::epoll_pwait2(epfd_, events_.data(), count, timeout ? &ts : nullptr, nullptr);
      if (n >= 0 || errno != ENOSYS) return n;
      use_pwait2_ = false;  // an older kernel (or valgrind): milliseconds, rounded up
    }
    int ms = -1;
    if (timeout) {
      const auto capped = std::clamp(*timeout, std::chrono::nanoseconds::zero(), cap);
      ms = static_cast<int>((capped.count() + 999'999) / 1'000'000);
    }
    return ::epoll_wait(epfd_, events_.data(), count, ms);
  }

  int epfd_;
  std::uint32_t generation_ = 0;
  bool use_pwait2_ = true;
  std::vector<entry> entries_;  // indexed by fd
  std::vector<int> dirty_;
  std::vector<int> round_fds_;
  std::vector<int> reported_;
  std::vector<int> refused_;
  std::vector<epoll_event> events_;
};

}  // namespace coselect::detail
