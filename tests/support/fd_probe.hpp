// Test support: what an fd shows right now, asked with poll(2) and a zero timeout — never a wait.
#pragma once

#if !defined(_WIN32)
#include <poll.h>
#endif

#include <cerrno>
#include <cstring>

#include <gtest/gtest.h>
#include <coselect.hpp>

namespace coselect_test {

// Is fd readable right now? A poll() error or an invalid fd fails the calling test.
inline bool readable_now(coselect::native_handle fd) {
  pollfd p{fd, POLLIN, 0};
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
  return rc == 1 && (p.revents & POLLIN) != 0;
}

}  // namespace coselect_test
