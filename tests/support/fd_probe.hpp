// Test support: what an fd shows right now, asked with poll(2) (WSAPoll on Windows) and a zero
// timeout — never a wait.
#pragma once

#if !defined(_WIN32)
#include <poll.h>
#endif

#include <cerrno>
#include <cstring>

#include <gtest/gtest.h>
#include <coselect.hpp>

namespace coselect_test {

// Does fd report `events` (POLLIN or POLLOUT) right now? A poll error or an invalid fd fails the
// calling test.
inline bool ready_now(coselect::native_handle fd, short events) {
  pollfd p{fd, events, 0};
  int rc;
#if defined(_WIN32)
  rc = ::WSAPoll(&p, 1, 0);
  EXPECT_GE(rc, 0) << "WSAPoll error " << ::WSAGetLastError();
#else
  do {
    rc = ::poll(&p, 1, 0);
  } while (rc < 0 && errno == EINTR);
  EXPECT_GE(rc, 0) << std::strerror(errno);
#endif
  EXPECT_EQ(p.revents & (POLLNVAL | POLLERR), 0) << "fd " << fd;
  return rc == 1 && (p.revents & events) != 0;
}

// Is fd readable right now?
inline bool readable_now(coselect::native_handle fd) {
  return ready_now(fd, POLLIN);
}

// Is fd writable right now?
inline bool writable_now(coselect::native_handle fd) {
  return ready_now(fd, POLLOUT);
}

}  // namespace coselect_test
