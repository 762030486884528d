// The select() reactor (Backend::select, the default): the poll reactor's rounds, waited for
// with select(). A round that watches an fd >= FD_SETSIZE, which select() cannot take, is waited
// for with poll() instead: no fd cap, no nap. Loop thread only.
#pragma once

#include <poll.h>
#include <sys/select.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <optional>
#include <vector>

#include "reactor_poll.hpp"
#include "syscall.hpp"

namespace coselect::detail {

class select_reactor final : public round_reactor {
 public:
  Backend backend() const noexcept override { return Backend::select; }

 protected:
  bool wait_round(std::vector<pollfd>& fds,
                  std::optional<std::chrono::nanoseconds> timeout) override {
    int max_fd = -1;
    for (const pollfd& p : fds)
      max_fd = std::max(max_fd, p.fd);
    if (max_fd >= FD_SETSIZE) return round_reactor::wait_round(fds, timeout);

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
};

}  // namespace coselect::detail
