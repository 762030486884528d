// The Windows room of the platform layer (platform.hpp), on Winsock 2 and the Win32 wait-on-
// address API (Windows 8 or later; link ws2_32 and synchronization, which the CMake target
// does). The event's "pipe" is a connected loopback TCP socket pair, so that select() and
// WSAPoll(), which take only sockets, can watch it; blocking waits use WaitOnAddress.
// The functions not named *_or_throw touch only thread-local error state and are safe from a
// console control handler (Windows' nearest thing to a signal handler).
#pragma once

#if !defined(WIN32_LEAN_AND_MEAN)
#define WIN32_LEAN_AND_MEAN
#endif
#if !defined(NOMINMAX)
#define NOMINMAX
#endif
#include <winsock2.h>
#include <ws2tcpip.h>
// winsock2.h first: windows.h would otherwise pull in the old winsock.h.
#include <signal.h>
#include <synchapi.h>
#include <time.h>
#include <windows.h>

#if defined(_WIN32_WINNT) && _WIN32_WINNT < 0x0602
#error "coselect needs _WIN32_WINNT >= 0x0602 (Windows 8: WaitOnAddress, WSAPoll)"
#endif

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#if defined(_MSC_VER)
#pragma comment(lib, "ws2_32")
#pragma comment(lib, "synchronization")
#endif

namespace coselect {

// native_handle — what WaitableEvent::fileno() returns and readable()/writable()/cancel_io()
// take: a SOCKET on Windows (a file descriptor on POSIX). Only sockets can be awaited here.
using native_handle = SOCKET;

}  // namespace coselect

namespace coselect::detail {

inline constexpr native_handle invalid_handle = INVALID_SOCKET;

// The errno-style codes coselect reports itself (EINVAL, EBADF, EAGAIN) are generic ones here:
// Windows' system category speaks Win32 error numbers.
inline const std::error_category& errno_category() noexcept {
  return std::generic_category();
}

[[noreturn]] inline void throw_errno(int error, const char* what) {
  throw std::system_error(error, errno_category(), what);
}

// Winsock failures carry their WSA error number in the system category, and in the message
// (not every libstdc++ can describe Win32 error numbers).
[[noreturn]] inline void throw_wsa(const char* what) {
  const int error = ::WSAGetLastError();
  throw std::system_error(error, std::system_category(),
                          std::string(what) + " (WSA error " + std::to_string(error) + ")");
}

// WSAStartup, once per process (thread-safe static initialisation); never undone, since
// sockets of ours may outlive any object that could undo it.
inline void winsock_ready_or_throw() {
  static const int started = [] {
    WSADATA data;
    return ::WSAStartup(MAKEWORD(2, 2), &data);
  }();
  if (started != 0) {
    throw std::system_error(started, std::system_category(), "coselect: WSAStartup");
  }
}

// The two ends of the event's "pipe": a connected loopback TCP socket pair, both non-blocking,
// not inheritable (no child process gets them), Nagle off (one byte must leave at once).
struct pipe_fds {
  native_handle read_end = INVALID_SOCKET;
  native_handle write_end = INVALID_SOCKET;
};

inline void close_fd(native_handle s) noexcept {
  if (s != INVALID_SOCKET) ::closesocket(s);
}

inline native_handle loopback_socket() noexcept {
  return ::WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, nullptr, 0, WSA_FLAG_NO_HANDLE_INHERIT);
}

inline bool tune_pipe_end(native_handle s) noexcept {
  u_long non_blocking = 1;
  BOOL no_delay = TRUE;
  ::SetHandleInformation(reinterpret_cast<HANDLE>(s), HANDLE_FLAG_INHERIT, 0);
  return ::ioctlsocket(s, FIONBIO, &non_blocking) == 0 &&
         ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, reinterpret_cast<const char*>(&no_delay),
                      sizeof no_delay) == 0;
}

inline pipe_fds make_pipe_or_throw(const char* what) {
  winsock_ready_or_throw();
  pipe_fds ends;
  native_handle listener = loopback_socket();
  auto fail = [&] {
    const int error = ::WSAGetLastError();
    close_fd(listener);
    close_fd(ends.read_end);
    close_fd(ends.write_end);
    throw std::system_error(error, std::system_category(), what);
  };
  if (listener == INVALID_SOCKET) fail();
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int length = sizeof address;
  if (::bind(listener, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length) != 0 ||
      ::listen(listener, 1) != 0) {
    fail();
  }
  ends.write_end = loopback_socket();
  if (ends.write_end == INVALID_SOCKET ||
      ::connect(ends.write_end, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    fail();
  }
  // Another local process may connect to the listener first: accept until the peer is the
  // socket just connected (same local address), so no stranger can hold the event's pipe.
  sockaddr_in mine{};
  int mine_length = sizeof mine;
  if (::getsockname(ends.write_end, reinterpret_cast<sockaddr*>(&mine), &mine_length) != 0) fail();
  for (;;) {
    sockaddr_in peer{};
    int peer_length = sizeof peer;
    const native_handle s = ::accept(listener, reinterpret_cast<sockaddr*>(&peer), &peer_length);
    if (s == INVALID_SOCKET) fail();
    if (peer.sin_port == mine.sin_port && peer.sin_addr.s_addr == mine.sin_addr.s_addr) {
      ends.read_end = s;
      break;
    }
    close_fd(s);
  }
  close_fd(listener);
  listener = INVALID_SOCKET;
  if (!tune_pipe_end(ends.read_end) || !tune_pipe_end(ends.write_end)) fail();
  return ends;
}

// Sends one byte. The pair never holds more than one byte of ours, so WSAEWOULDBLOCK cannot
// happen.
inline void write_byte(native_handle s) noexcept {
  const char byte = 1;
  while (::send(s, &byte, 1, 0) < 0 && ::WSAGetLastError() == WSAEINTR) {
  }
}

// Drains whatever the (non-blocking) read end holds.
inline void drain(native_handle s) noexcept {
  char buffer[64];
  for (;;) {
    const int n = ::recv(s, buffer, sizeof buffer, 0);
    if (n > 0 && static_cast<std::size_t>(n) == sizeof buffer) continue;
    if (n < 0 && ::WSAGetLastError() == WSAEINTR) continue;
    return;
  }
}

// Is s an open socket? (select() fails the whole set with WSAENOTSOCK; this finds the culprit.)
inline bool fd_is_open(native_handle s) noexcept {
  int type = 0;
  int length = sizeof type;
  return ::getsockopt(s, SOL_SOCKET, SO_TYPE, reinterpret_cast<char*>(&type), &length) == 0 ||
         ::WSAGetLastError() != WSAENOTSOCK;
}

// Checks a handle before a coroutine waits on it: any open socket will do; INVALID_SOCKET is
// EINVAL, anything else that is not an open socket (a closed one, a file, a pipe) EBADF, since
// Winsock can watch sockets only.
inline void check_fd(native_handle s) {
  winsock_ready_or_throw();
  if (s == INVALID_SOCKET) {
    throw std::system_error(EINVAL, errno_category(), "coselect: handle is INVALID_SOCKET");
  }
  if (!fd_is_open(s)) {
    throw std::system_error(
        EBADF, errno_category(),
        "coselect: handle is not an open socket (Windows can await sockets only)");
  }
}

// Before a coroutine waits: the full check. (WSAPoll of one closed socket may report nothing
// rather than POLLNVAL, so a zero-timeout wait could not tell "closed" from "not ready".)
inline void check_fd_number(native_handle s) {
  check_fd(s);
}

// A timespec from a non-negative duration (negative: zero): blocking waits' deadlines.
inline timespec to_timespec(std::chrono::nanoseconds d) noexcept {
  if (d.count() < 0) d = std::chrono::nanoseconds::zero();
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(d.count() / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(d.count() % 1'000'000'000);
  return ts;
}

// Whole milliseconds for a Win32 timeout, rounded up (late is allowed, early is not) and capped
// at a day; the callers loop until their real deadline, so the cap never shortens a wait.
inline DWORD to_milliseconds(std::chrono::nanoseconds d) noexcept {
  const auto capped = std::clamp(d, std::chrono::nanoseconds::zero(),
                                 std::chrono::nanoseconds(std::chrono::hours(24)));
  return static_cast<DWORD>((capped.count() + 999'999) / 1'000'000);
}

// ---- readiness: WSAPoll and select --------------------------------------------------------

// WSAPoll with a nanosecond timeout (nullopt: none). Entries whose fd is INVALID_SOCKET are
// left out of the call (revents 0), as poll() ignores negative fds; WSAPoll rejects an empty
// array, so a round with nothing to watch just sleeps. Returns WSAPoll's result (SOCKET_ERROR:
// see WSAGetLastError).
inline int poll_for(pollfd* fds, std::size_t count,
                    std::optional<std::chrono::nanoseconds> timeout) noexcept {
  const INT ms = timeout ? static_cast<INT>(to_milliseconds(*timeout)) : -1;
  std::size_t valid = 0;
  for (std::size_t i = 0; i < count; ++i) {
    fds[i].revents = 0;
    if (fds[i].fd != INVALID_SOCKET) ++valid;
  }
  if (valid == 0) {
    ::Sleep(ms < 0 ? INFINITE : static_cast<DWORD>(ms));
    return 0;
  }
  if (valid == count) return ::WSAPoll(fds, static_cast<ULONG>(count), ms);
  std::vector<pollfd> compact;
  try {
    compact.reserve(valid);
  } catch (...) {
    ::WSASetLastError(WSAENOBUFS);
    return SOCKET_ERROR;
  }
  for (std::size_t i = 0; i < count; ++i) {
    if (fds[i].fd != INVALID_SOCKET) compact.push_back(fds[i]);
  }
  const int n = ::WSAPoll(compact.data(), static_cast<ULONG>(compact.size()), ms);
  for (std::size_t i = 0, j = 0; i < count; ++i) {
    if (fds[i].fd != INVALID_SOCKET) fds[i].revents = compact[j++].revents;
  }
  return n;
}

// One round of Backend::poll: waits for `fds` and fills in their revents (POLLNVAL for a closed
// socket). Returns false if nothing is to be looked at (timeout, WSAEINTR); throws
// std::system_error on other failures.
inline bool poll_round(std::vector<pollfd>& fds, std::optional<std::chrono::nanoseconds> timeout) {
  const int n = poll_for(fds.data(), fds.size(), timeout);
  if (n == SOCKET_ERROR) {
    const int error = ::WSAGetLastError();
    if (error == WSAEINTR) return false;
    if (error != WSAENOTSOCK) throw_wsa("coselect: WSAPoll");
    // Windows reports a closed socket as POLLNVAL, wine fails the call: find the culprits.
    for (pollfd& p : fds) {
      if (p.fd != INVALID_SOCKET && !fd_is_open(p.fd)) p.revents = POLLNVAL;
    }
    return true;
  }
  return n > 0;
}

// A Winsock fd_set sized to the round: the struct is a count followed by an array, so building
// it in our own storage lifts the FD_SETSIZE (64) cap without redefining anybody's FD_SETSIZE.
class dynamic_fd_set {
 public:
  void reset() { storage_.assign(1, 0); }
  void add(native_handle s) { storage_.push_back(s); }
  bool empty() const noexcept { return storage_.size() <= 1; }
  fd_set* get() noexcept {
    const u_int count = static_cast<u_int>(storage_.size() - 1);
    std::memcpy(storage_.data(), &count, sizeof count);  // fd_count, then fd_array at slot 1
    return reinterpret_cast<fd_set*>(storage_.data());
  }
  // After select(): the sockets it reported, sorted for lookups.
  void sort_result() {
    u_int count = 0;
    std::memcpy(&count, storage_.data(), sizeof count);
    storage_.resize(count + 1);
    std::sort(storage_.begin() + 1, storage_.end());
  }
  bool contains(native_handle s) const noexcept {
    return std::binary_search(storage_.begin() + 1, storage_.end(), s);
  }

 private:
  static_assert(offsetof(fd_set, fd_array) == sizeof(SOCKET), "fd_set layout");
  std::vector<SOCKET> storage_{0};
};

// One round of Backend::select, with poll_round()'s contract: Winsock select() on sets as large
// as the round needs.
inline bool select_round(std::vector<pollfd>& fds,
                         std::optional<std::chrono::nanoseconds> timeout) {
  thread_local dynamic_fd_set readable, writable;
  readable.reset();
  writable.reset();
  for (const pollfd& p : fds) {
    if (p.fd == INVALID_SOCKET) continue;
    if (p.events & POLLIN) readable.add(p.fd);
    if (p.events & POLLOUT) writable.add(p.fd);
  }
  timeval tv{};
  if (timeout) {
    const auto us = std::clamp(*timeout, std::chrono::nanoseconds::zero(),
                               std::chrono::nanoseconds(std::chrono::hours(24)))
                            .count() /
                        1000 +
                    1;  // rounded up: never early
    tv.tv_sec = static_cast<long>(us / 1'000'000);
    tv.tv_usec = static_cast<long>(us % 1'000'000);
  }
  if (readable.empty() && writable.empty()) {  // Winsock rejects empty sets: just sleep
    ::Sleep(timeout ? to_milliseconds(*timeout) : INFINITE);
    return false;
  }
  const int n =
      ::select(0, readable.empty() ? nullptr : readable.get(),
               writable.empty() ? nullptr : writable.get(), nullptr, timeout ? &tv : nullptr);
  if (n == SOCKET_ERROR) {
    const int error = ::WSAGetLastError();
    if (error == WSAEINTR) return false;
    if (error != WSAENOTSOCK) throw_wsa("coselect: select");
    // select() names no culprit: find the closed sockets and report them as poll() would.
    for (pollfd& p : fds) {
      if (p.fd != INVALID_SOCKET && !fd_is_open(p.fd)) p.revents = POLLNVAL;
    }
    return true;
  }
  if (n == 0) return false;
  readable.sort_result();
  writable.sort_result();
  for (pollfd& p : fds) {
    if (p.fd == INVALID_SOCKET) continue;
    p.revents = static_cast<short>(((p.events & POLLIN) && readable.contains(p.fd) ? POLLIN : 0) |
                                   ((p.events & POLLOUT) && writable.contains(p.fd) ? POLLOUT : 0));
  }
  return true;
}

// ---- signals (SignalSet): console control events -------------------------------------------

// Windows has no POSIX signals to catch; its console delivers Ctrl+C and Ctrl+Break as control
// events (on a thread of their own), which a SignalSet sees as SIGINT and SIGBREAK.
struct signal_disposition {};

inline constexpr bool signal_catchable(int sig) noexcept {
  return sig == SIGINT || sig == SIGBREAK;
}
inline constexpr const char* kSignalNotCatchable =
    "coselect::SignalSet: signal cannot be caught (Windows: only SIGINT and SIGBREAK)";

inline std::atomic<void (*)(int)>& console_signal_handler(int sig) noexcept {
  static std::atomic<void (*)(int)> table[2]{};
  return table[sig == SIGINT ? 0 : 1];
}

// The console control routine: registered while any SignalSet holds SIGINT or SIGBREAK.
// Events nobody holds (and close/logoff/shutdown) go on to the next routine, the default.
inline BOOL WINAPI console_control_routine(DWORD type) noexcept {
  const int sig = type == CTRL_C_EVENT ? SIGINT : type == CTRL_BREAK_EVENT ? SIGBREAK : 0;
  if (sig == 0) return FALSE;
  void (*handler)(int) = console_signal_handler(sig).load(std::memory_order_seq_cst);
  if (handler == nullptr) return FALSE;
  handler(sig);
  return TRUE;
}

inline std::atomic<int>& console_handlers_installed() noexcept {
  static std::atomic<int> count{0};
  return count;
}

// Installs `handler` for SIGINT or SIGBREAK. Returns 0 or a Win32 error number.
inline int install_signal_handler(int sig, void (*handler)(int),
                                  signal_disposition& previous) noexcept {
  (void)previous;
  console_signal_handler(sig).store(handler, std::memory_order_seq_cst);
  if (console_handlers_installed().fetch_add(1) == 0 &&
      !::SetConsoleCtrlHandler(&console_control_routine, TRUE)) {
    console_handlers_installed().fetch_sub(1);
    console_signal_handler(sig).store(nullptr, std::memory_order_seq_cst);
    return static_cast<int>(::GetLastError());
  }
  return 0;
}

inline void restore_signal_handler(int sig, const signal_disposition& previous) noexcept {
  (void)previous;
  console_signal_handler(sig).store(nullptr, std::memory_order_seq_cst);
  if (console_handlers_installed().fetch_sub(1) == 1) {
    ::SetConsoleCtrlHandler(&console_control_routine, FALSE);
  }
}

// ---- how a plain thread sleeps on a 32-bit word: WaitOnAddress ------------------------------

// Sleeps while *word == expected, until woken or the absolute steady_clock deadline passes
// (deadline == nullptr: no deadline). Returns false on timeout. Spurious returns are allowed;
// callers re-check their condition. A timeout that Windows reports before the deadline (timer
// granularity) counts as spurious, so that no wait ends early.
inline bool futex_wait(const std::uint32_t* word, std::uint32_t expected,
                       const timespec* absolute_steady_deadline) noexcept {
  DWORD ms = INFINITE;
  std::chrono::steady_clock::time_point deadline{};
  if (absolute_steady_deadline != nullptr) {
    deadline = std::chrono::steady_clock::time_point(
        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
            std::chrono::seconds(absolute_steady_deadline->tv_sec) +
            std::chrono::nanoseconds(absolute_steady_deadline->tv_nsec)));
    const auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::steady_clock::duration::zero()) return false;
    ms = to_milliseconds(left);
  }
  if (::WaitOnAddress(const_cast<std::uint32_t*>(word), &expected, sizeof expected, ms)) {
    return true;
  }
  if (::GetLastError() != ERROR_TIMEOUT) return true;
  return absolute_steady_deadline != nullptr && std::chrono::steady_clock::now() < deadline;
}

inline void futex_wake_all(const std::uint32_t* word) noexcept {
  ::WakeByAddressAll(const_cast<std::uint32_t*>(word));
}

}  // namespace coselect::detail
