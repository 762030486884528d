// coselect::Backend: which system call a Scheduler sleeps in (DESIGN §7).
#pragma once

#include <optional>
#include <string_view>

namespace coselect {

// Backend — the readiness mechanism of a Scheduler, chosen when it is constructed.
//
//  * select: the default. Rebuilds its fd sets every round (O(watched fds) per wait); a round
//    that watches an fd >= FD_SETSIZE uses poll() instead, so there is no fd cap.
//  * poll:   poll() every round (O(watched) per wait), any fd number.
//  * epoll:  Linux only. Keeps registrations across rounds (O(ready) per wait). Closing an fd
//            drops it from the kernel's epoll set silently, so a program must not close an fd
//            while a coroutine waits on it: Scheduler::cancel_io(fd) first.
// Every backend gives the same observable behaviour otherwise.
enum class Backend { select, poll, epoll };

// Whether this platform has the backend (epoll: Linux only).
constexpr bool backend_available(Backend b) noexcept {
#if defined(__linux__)
  (void)b;
  return true;
#else
  return b != Backend::epoll;
#endif
}

constexpr std::string_view to_string(Backend b) noexcept {
  switch (b) {
    case Backend::select:
      return "select";
    case Backend::poll:
      return "poll";
    case Backend::epoll:
      return "epoll";
  }
  return "?";
}

// "select", "poll" or "epoll" -> the backend; anything else -> nullopt.
constexpr std::optional<Backend> backend_from_string(std::string_view name) noexcept {
  for (Backend b : {Backend::select, Backend::poll, Backend::epoll}) {
    if (name == to_string(b)) return b;
  }
  return std::nullopt;
}

}  // namespace coselect
