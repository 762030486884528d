// The POSIX room of the platform layer (platform.hpp): pipes, fcntl, poll()/ppoll(), select()
// and the Linux futex. EINTR-aware; the functions not named *_or_throw are async-signal-safe
// (they touch only errno).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <system_error>
#include <vector>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

namespace coselect {

// native_handle — what WaitableEvent::fileno() returns and readable()/writable()/cancel_io()
// take: a file descriptor on POSIX (a SOCKET on Windows).
using native_handle = int;

}  // namespace coselect

namespace coselect::detail {

inline constexpr native_handle invalid_handle = -1;

// The category of the errno values coselect reports (EINVAL, EBADF, EAGAIN).
inline const std::error_category& errno_category() noexcept {
  return std::system_category();
}

[[noreturn]] inline void throw_errno(int error, const char* what) {
  throw std::system_error(error, std::system_category(), what);
}

// The two ends of a pipe. Both are non-blocking and close-on-exec from birth (pipe2), so no
// other thread's fork+exec can inherit them.
struct pipe_fds {
  int read_end = -1;
  int write_end = -1;
};

inline pipe_fds make_pipe_or_throw(const char* what) {
  int fds[2];
#if defined(__linux__) || defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__)
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) throw_errno(errno, what);
#else
  if (::pipe(fds) != 0) throw_errno(errno, what);
  for (int fd : fds) {
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  }
#endif
  return {fds[0], fds[1]};
}

// close() must not be retried on EINTR (Linux releases the descriptor anyway).
inline void close_fd(int fd) noexcept {
  if (fd >= 0) ::close(fd);
}

// Writes one byte; async-signal-safe. The pipe never holds more than one byte of ours, so
// EAGAIN cannot happen; EINTR is retried.
inline void write_byte(int fd) noexcept {
  const char byte = 1;
  while (::write(fd, &byte, 1) < 0 && errno == EINTR) {
  }
}

// Drains whatever the (non-blocking) read end holds; async-signal-safe.
inline void drain(int fd) noexcept {
  char buffer[64];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n > 0 && static_cast<size_t>(n) == sizeof buffer) continue;
    if (n < 0 && errno == EINTR) continue;
    return;
  }
}

// Is fd an open descriptor? (select() reports EBADF for the whole set; this finds the culprit.)
inline bool fd_is_open(int fd) noexcept {
  return ::fcntl(fd, F_GETFD) != -1 || errno != EBADF;
}

// The check that costs no system call, before a coroutine waits on an fd: a negative one is
// EINVAL. A closed one is reported by the backend's own wait (select's EBADF, poll's POLLNVAL,
// epoll_ctl's EBADF), so readable()/writable() make no extra system call per wake.
inline void check_fd_number(int fd) {
  if (fd < 0) {
    throw std::system_error(EINVAL, std::system_category(), "coselect: fd is negative");
  }
}

// Checks an fd before it is registered for good (a dispatcher): any open descriptor will do (no
// backend has an fd cap); a negative one is EINVAL, a closed one EBADF.
inline void check_fd(int fd) {
  check_fd_number(fd);
  if (!fd_is_open(fd)) {
    throw std::system_error(EBADF, std::system_category(), "coselect: fd is not open");
  }
}

// A timespec from a non-negative duration (negative: zero): futex and ppoll timeouts.
inline timespec to_timespec(std::chrono::nanoseconds d) noexcept {
  if (d.count() < 0) d = std::chrono::nanoseconds::zero();
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(d.count() / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(d.count() % 1'000'000'000);
  return ts;
}

// select() takes a timeval; cap at one day so no platform rejects it with EINVAL. The caller
// loops until its real deadline, so the cap never shortens a wait.
inline timeval to_select_timeout(std::chrono::nanoseconds d) noexcept {
  constexpr std::chrono::nanoseconds cap = std::chrono::hours(24);
  if (d.count() < 0) d = std::chrono::nanoseconds::zero();
  if (d > cap) d = cap;
  // Round up to whole microseconds: waking a little late is allowed, early is not.
  const auto us = (d.count() + 999) / 1000;
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(us / 1'000'000);
  tv.tv_usec = static_cast<suseconds_t>(us % 1'000'000);
  return tv;
}

// poll() with a nanosecond timeout (nullopt: none), capped at a day like select()'s; the
// caller loops until its real deadline. Returns poll()'s result; errno as poll() leaves it.
inline int poll_for(pollfd* fds, std::size_t count,
                    std::optional<std::chrono::nanoseconds> timeout) noexcept {
  constexpr std::chrono::nanoseconds cap = std::chrono::hours(24);
#if defined(__linux__) || defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__)
  timespec ts{};
  if (timeout) ts = to_timespec(std::min(*timeout, cap));
  return ::ppoll(fds, static_cast<nfds_t>(count), timeout ? &ts : nullptr, nullptr);
#else
  int ms = -1;
  if (timeout) {  // whole milliseconds, rounded up: late is allowed, early is not
    const auto capped = std::clamp(*timeout, std::chrono::nanoseconds::zero(), cap);
    ms = static_cast<int>((capped.count() + 999'999) / 1'000'000);
  }
  return ::poll(fds, static_cast<nfds_t>(count), ms);
#endif
}

// One round of Backend::poll: waits for `fds` and fills in their revents (POLLNVAL for a closed
// fd). Returns false if nothing is to be looked at (timeout, EINTR); throws std::system_error on
// other failures.
inline bool poll_round(std::vector<pollfd>& fds, std::optional<std::chrono::nanoseconds> timeout) {
  const int n = poll_for(fds.data(), fds.size(), timeout);
  if (n < 0 && errno != EINTR) throw_errno(errno, "coselect: poll");
  return n > 0;
}

// One round of Backend::select, with poll_round()'s contract. A round that watches an fd >=
// FD_SETSIZE, which select() cannot take, is waited for with poll() instead: no fd cap, no nap.
inline bool select_round(std::vector<pollfd>& fds,
                         std::optional<std::chrono::nanoseconds> timeout) {
  int max_fd = -1;
  for (const pollfd& p : fds)
    max_fd = std::max(max_fd, p.fd);
  if (max_fd >= FD_SETSIZE) return poll_round(fds, timeout);

  fd_set readable, writable;
  FD_ZERO(&readable);
  FD_ZERO(&writable);
  for (const pollfd& p : fds) {
    if (p.fd < 0) continue;
    if (p.events & POLLIN) FD_SET(p.fd, &readable);
    if (p.events & POLLOUT) FD_SET(p.fd, &writable);
  }
  timeval tv{};
  if (timeout) tv = to_select_timeout(*timeout);
  const int n = ::select(max_fd + 1, &readable, &writable, nullptr, timeout ? &tv : nullptr);
  if (n < 0) {
    if (errno == EINTR) return false;
    if (errno != EBADF) throw_errno(errno, "coselect: select");
    // select() names no culprit: find the closed fds and report them as poll() would.
    for (pollfd& p : fds) {
      if (p.fd >= 0 && !fd_is_open(p.fd)) p.revents = POLLNVAL;
    }
    return true;
  }
  if (n == 0) return false;
  for (pollfd& p : fds) {
    if (p.fd < 0) continue;
    p.revents = static_cast<short>((FD_ISSET(p.fd, &readable) ? POLLIN : 0) |
                                   (FD_ISSET(p.fd, &writable) ? POLLOUT : 0));
  }
  return true;
}

// ---- signals (SignalSet) --------------------------------------------------------------------

// What a SignalSet replaced and puts back.
using signal_disposition = struct sigaction;

// Signals a SignalSet may catch: 1..63 but SIGKILL and SIGSTOP.
inline constexpr bool signal_catchable(int sig) noexcept {
  return sig > 0 && sig < 64 && sig != SIGKILL && sig != SIGSTOP;
}
inline constexpr const char* kSignalNotCatchable = "coselect::SignalSet: signal cannot be caught";

// Installs `handler` for `sig` (SA_RESTART), keeping the previous disposition. Returns 0 or the
// errno of sigaction().
inline int install_signal_handler(int sig, void (*handler)(int),
                                  signal_disposition& previous) noexcept {
  struct sigaction action {};
  action.sa_handler = handler;
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  return ::sigaction(sig, &action, &previous) == 0 ? 0 : errno;
}

inline void restore_signal_handler(int sig, const signal_disposition& previous) noexcept {
  ::sigaction(sig, &previous, nullptr);
}

// ---- futex: how a plain thread sleeps on a 32-bit word --------------------------------------

#if defined(__linux__)
// Sleeps while *word == expected, until woken or the absolute CLOCK_MONOTONIC deadline passes
// (deadline == nullptr: no deadline). Returns false on timeout. Spurious returns are allowed;
// callers re-check their condition. Async-signal-safe.
inline bool futex_wait(const std::uint32_t* word, std::uint32_t expected,
                       const timespec* absolute_monotonic_deadline) noexcept {
  const long rc = ::syscall(SYS_futex, word, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, expected,
                            absolute_monotonic_deadline, nullptr, FUTEX_BITSET_MATCH_ANY);
  return !(rc != 0 && errno == ETIMEDOUT);
}

inline void futex_wake_all(const std::uint32_t* word) noexcept {
  ::syscall(SYS_futex, word, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, std::numeric_limits<int>::max(),
            nullptr, nullptr, 0);
}
#else
#error "coselect: blocking waits need a futex-like primitive; only Linux is supported so far"
#endif

}  // namespace coselect::detail
