// The select() reactor (Backend::select, the default): the poll reactor's rounds, waited for
// with select() (platform room: select_round). On POSIX a round that watches an fd >=
// FD_SETSIZE, which select() cannot take, is waited for with poll() instead; on Windows the sets
// are sized to the round. No fd cap, no nap. Loop thread only.
#pragma once

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
    return select_round(fds, timeout);
  }
};

}  // namespace coselect::detail
