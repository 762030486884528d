// The poll() reactor, and the round structure it shares with the select() reactor: both rebuild
// their interest from the waiters every round (O(watched fds) per wait) and keep nothing in the
// kernel between rounds. Loop thread only.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <span>
#include <vector>

#include "reactor.hpp"
#include "syscall.hpp"

namespace coselect::detail {

// A reactor that describes each round as an array of pollfd: one entry per fd with waiters,
// then the extra read fds, then one per dispatcher. Derived classes may replace the system call
// (wait_round) that fills in the revents.
class round_reactor : public reactor {
 public:
  bool wait(std::optional<std::chrono::nanoseconds> timeout,
            std::span<const native_handle> extra_read_fds, reactor_sink& sink) override {
    round_.clear();
    for (native_handle fd : active_fds_)
      round_.push_back(pollfd{fd, wanted_by_waiters(fd), 0});
    const std::size_t waiter_entries = round_.size();
    for (native_handle fd : extra_read_fds)
      round_.push_back(pollfd{fd, POLLIN, 0});
    const std::size_t dispatcher_entries = round_.size();
    snapshot_dispatchers(sink);
    for (const watched& w : round_dispatchers_) {
      const short events = static_cast<short>((w.read ? POLLIN : 0) | (w.write ? POLLOUT : 0));
      // A dispatcher that wants nothing (or whose fileno() threw) keeps its place, ignored.
      round_.push_back(pollfd{events != 0 ? w.fd : invalid_handle, events, 0});
    }

    if (!wait_round(round_, timeout)) return false;

    bool served = false;
    for (std::size_t i = 0; i < waiter_entries; ++i) {
      if (round_[i].revents != 0) served |= complete(round_[i].fd, round_[i].revents, sink);
    }
    served |= serve_dispatchers(
        [&](std::size_t i) { return round_[dispatcher_entries + i].revents; }, sink);
    return served;
  }

 protected:
  // Waits for `fds` and fills in their revents (POLLNVAL for a closed fd). Returns false if
  // nothing is to be looked at (timeout, EINTR); throws std::system_error on other failures.
  virtual bool wait_round(std::vector<pollfd>& fds,
                          std::optional<std::chrono::nanoseconds> timeout) {
    return poll_round(fds, timeout);
  }

 private:
  std::vector<pollfd> round_;
};

// Backend::poll.
class poll_reactor final : public round_reactor {
 public:
  Backend backend() const noexcept override { return Backend::poll; }
};

}  // namespace coselect::detail
