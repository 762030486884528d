// Test support: what another thread is doing, read from /proc — observed, never slept on.
// Tests use it to know that a loop really is asleep in its backend's wait (select(), poll() or
// epoll_wait(), see coselect::Backend) before they wake it. Windows has no /proc: there every
// probe answers "cannot tell" (-2, false), as on a Linux whose /proc does not say.
#pragma once

#include <fcntl.h>
#include <sys/types.h>
#if defined(_WIN32)
#include <windows.h>
#else
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>

namespace coselect_test {

// The calling thread's id, as the probes below take it.
inline pid_t current_tid() {
#if defined(_WIN32)
  return static_cast<pid_t>(::GetCurrentThreadId());
#else
  return static_cast<pid_t>(::syscall(SYS_gettid));
#endif
}

#if defined(_WIN32)
inline long blocked_syscall(pid_t, std::uintptr_t* = nullptr) {
  return -2;
}
#else
// The system call thread `tid` is blocked in (its number), -1 while it runs, -2 if /proc cannot
// tell. /proc/self/task/<tid>/syscall reads "<nr> <arg1> ... <sp> <pc>" while the thread is
// blocked in a system call, "running" otherwise (for our own threads, on Linux with
// CONFIG_HAVE_ARCH_TRACEHOOK). If `arg1` is given, the call's first argument goes there.
inline long blocked_syscall(pid_t tid, std::uintptr_t* arg1 = nullptr) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%d/syscall", static_cast<int>(tid));
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -2;
  char buffer[256];
  const ssize_t n = ::read(fd, buffer, sizeof buffer - 1);
  ::close(fd);
  if (n <= 0) return -1;  // as if running: nothing to read
  buffer[n] = '\0';
  char* end = nullptr;
  const long nr = std::strtol(buffer, &end, 10);
  if (end == buffer) return -1;  // "running"
  if (arg1 != nullptr) *arg1 = static_cast<std::uintptr_t>(std::strtoull(end, nullptr, 16));
  return nr;
}
#endif

// True if thread `tid` is blocked in a system call: its number goes to `nr` (and its first
// argument to *arg1, if given). False while it runs or if /proc cannot tell.
inline bool read_task_syscall(pid_t tid, long& nr, std::uintptr_t* arg1 = nullptr) {
  const long found = blocked_syscall(tid, arg1);
  if (found < 0) return false;
  nr = found;
  return true;
}

// True if thread `tid` is blocked in futex() on a word that lies inside `object`: a wait of that
// object's own. A thread on its way into such a wait may block in futex() elsewhere first (the
// ThreadSanitizer runtime does, on its own mutexes, around atomic operations under contention);
// the call number alone would count it as waiting before it has registered.
template <class T>
bool blocked_in_futex_on(pid_t tid, const T& object) {
#if defined(_WIN32)
  (void)tid;
  (void)object;
  return false;
#else
  std::uintptr_t word = 0;
  if (blocked_syscall(tid, &word) != SYS_futex) return false;
  const auto begin = reinterpret_cast<std::uintptr_t>(&object);
  return word >= begin && word < begin + sizeof(T);
#endif
}

// Is `nr` the system call a Scheduler sleeps in, on any backend?
inline bool is_reactor_wait(long nr) {
#if defined(_WIN32)
  (void)nr;
  return false;
#else
#ifdef SYS_select
  if (nr == SYS_select) return true;
#endif
#ifdef SYS_poll
  if (nr == SYS_poll) return true;
#endif
#ifdef SYS_epoll_wait
  if (nr == SYS_epoll_wait) return true;
#endif
#ifdef SYS_epoll_pwait2
  if (nr == SYS_epoll_pwait2) return true;
#endif
  return nr == SYS_pselect6 || nr == SYS_ppoll || nr == SYS_epoll_pwait;
#endif
}

// Waits (observing, not sleeping) until thread `tid` is blocked in its loop's wait. False if
// that was not seen within `limit` or /proc cannot tell.
inline bool wait_until_in_reactor(
    pid_t tid, std::chrono::steady_clock::duration limit = std::chrono::seconds(5)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    const long nr = blocked_syscall(tid);
    if (nr == -2) return false;
    if (is_reactor_wait(nr)) return true;
    std::this_thread::yield();
  }
  return false;
}

inline bool proc_syscall_readable() {
  return blocked_syscall(current_tid()) != -2;
}

}  // namespace coselect_test
