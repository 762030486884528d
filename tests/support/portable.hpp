// Test support: the few handle operations tests need, the same on POSIX and Windows, so that a
// test of portable behaviour runs on both. On POSIX a "channel" is a pipe (read end, write end);
// on Windows, where only sockets can be awaited, it is a connected loopback socket pair. Tests of
// what Windows cannot do at all skip there with COSELECT_SKIP_ON_WINDOWS(reason).
#pragma once

#include <cstddef>
#include <string>
#include <system_error>

#include <gtest/gtest.h>
#include <coselect.hpp>

#if !defined(_WIN32)
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#endif

namespace coselect_test {

using coselect::native_handle;

#if defined(_WIN32)
inline constexpr bool kWindows = true;
#else
inline constexpr bool kWindows = false;
#endif

// Skips the current test on Windows, saying why (what Windows cannot do).
#define COSELECT_SKIP_ON_WINDOWS(reason)                   \
  do {                                                     \
    if (::coselect_test::kWindows) GTEST_SKIP() << reason; \
  } while (0)

// A non-blocking, non-inheritable one-way channel: bytes put into `write_end` make `read_end`
// readable. A pipe on POSIX, a loopback socket pair on Windows.
struct channel_ends {
  native_handle read_end;
  native_handle write_end;
};

inline channel_ends make_channel() {
#if defined(_WIN32)
  const auto ends = coselect::detail::make_pipe_or_throw("socket pair");
  // A small, fixed send buffer, closer to a pipe's capacity: tests that fill the channel stay
  // fast. (A small receive buffer would be worse: below the loopback MSS, window updates stall.)
  const int size = 16 * 1024;
  ::setsockopt(ends.write_end, SOL_SOCKET, SO_SNDBUF, reinterpret_cast<const char*>(&size),
               sizeof size);
  return {ends.read_end, ends.write_end};
#else
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    throw std::system_error(errno, std::system_category(), "pipe2");
  }
  return {fds[0], fds[1]};
#endif
}

// write()/send() of n bytes: the count written, or -1.
inline long write_some(native_handle h, const void* data, std::size_t n) {
#if defined(_WIN32)
  return ::send(h, static_cast<const char*>(data), static_cast<int>(n), 0);
#else
  return static_cast<long>(::write(h, data, n));
#endif
}

// read()/recv() of up to n bytes: the count read, 0 at the end, or -1.
inline long read_some(native_handle h, void* buffer, std::size_t n) {
#if defined(_WIN32)
  return ::recv(h, static_cast<char*>(buffer), static_cast<int>(n), 0);
#else
  return static_cast<long>(::read(h, buffer, n));
#endif
}

inline void close_handle(native_handle h) {
#if defined(_WIN32)
  ::closesocket(h);
#else
  ::close(h);
#endif
}

// Bytes waiting to be read from h (FIONREAD), or -1.
inline long bytes_pending(native_handle h) {
#if defined(_WIN32)
  u_long n = 0;
  return ::ioctlsocket(h, FIONREAD, &n) == 0 ? static_cast<long>(n) : -1;
#else
  int n = -1;
  return ::ioctl(h, FIONREAD, &n) == 0 ? n : -1;
#endif
}

// A handle number that is certainly not open (for EBADF tests).
inline native_handle closed_handle() {
  const channel_ends ends = make_channel();
  close_handle(ends.read_end);
  close_handle(ends.write_end);
  return ends.read_end;
}

}  // namespace coselect_test
