// Thin, EINTR-aware wrappers over the system calls coselect makes, and the conversions between
// std::chrono and the kernel's time formats. Lowest layer: includes nothing of coselect.
//
// Error policy: functions named *_or_throw report failure as std::system_error carrying errno;
// the others return the raw result and are async-signal-safe (they touch only errno).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>
#include <system_error>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

namespace coselect::detail {

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

// The check that costs no system call: a negative fd is EINVAL.
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

// ---- time ------------------------------------------------------------------------------------

// Converts any duration to nanoseconds, saturating instead of overflowing (a "huge" timeout of
// hours::max() must mean "practically forever", not a negative number).
template <class Rep, class Period>
constexpr std::chrono::nanoseconds saturating_ns(std::chrono::duration<Rep, Period> d) noexcept {
  using std::chrono::nanoseconds;
  using wide = std::chrono::duration<long double, std::nano>;
  // Half the range: room to add the result to a clock reading without overflowing.
  constexpr nanoseconds::rep ceiling = std::numeric_limits<nanoseconds::rep>::max() / 2;
  const long double ns = std::chrono::duration_cast<wide>(d).count();
  if (!(ns == ns)) return nanoseconds::zero();  // NaN: treat as a poll
  if (ns >= static_cast<long double>(ceiling)) return nanoseconds(ceiling);
  if (ns <= static_cast<long double>(-ceiling)) return nanoseconds(-ceiling);
  // Round up so that a timeout never fires early.
  auto whole = std::chrono::duration_cast<nanoseconds>(d);
  if (std::chrono::duration_cast<wide>(whole).count() < ns) ++whole;
  return whole;
}

// `now + d` without overflow: the result saturates at the time_point's min() and max().
template <class Clock, class Rep, class Period>
typename Clock::time_point saturating_add(typename Clock::time_point now,
                                          std::chrono::duration<Rep, Period> d) noexcept {
  using tp = typename Clock::time_point;
  using rep = std::chrono::nanoseconds::rep;
  const auto base = std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch());
  const auto step = saturating_ns(d);
  // Saturate at the ends of the clock's range (a virtual clock may start centuries ahead).
  if (step.count() > 0 && base.count() > std::numeric_limits<rep>::max() - step.count()) {
    return tp::max();
  }
  if (step.count() < 0 && base.count() < std::numeric_limits<rep>::min() - step.count()) {
    return tp::min();
  }
  return now + std::chrono::duration_cast<typename tp::duration>(step);
}

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
