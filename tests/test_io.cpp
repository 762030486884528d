// Tests of the fd awaitables readable(fd) / writable(fd) and their timed forms (DESIGN.md §1, §2
// "Scheduler").
//
// Sections
//   0. Helpers (anonymous namespace)
//   1. Readiness: readable/writable resume when the fd becomes ready
//   2. Timed forms and polls (timeout <= 0)
//   3. Bad fds: negative, closed, closed while waiting; fds >= FD_SETSIZE are ordinary
//   4. Exactly one resumption when readiness and timeout meet
//   5. Echo over a socketpair
//   6. Lifetime: waiting frames destroyed leave no registration behind
//
// Rules followed here: coroutines only record what they see; assertions run after the loop has
// returned. No sleep is used as synchronisation. Real-time bounds are one-sided and generous (never
// early, late by at most kLate); exact timing is checked on virtual time (TimeMachine).

#if defined(_WIN32)
#include <gtest/gtest.h>

TEST(IoOnWindows, PosixOnly) {
  GTEST_SKIP() << "pipes and AF_UNIX socketpairs as fds, dup3() to fixed fd numbers, rlimit and "
                  "/proc thread probes: POSIX only (Windows can await sockets only; its socket "
                  "cases are in test_windows.cpp)";
}
#else
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <coselect.hpp>
#include "support/fixtures.hpp"
#include "support/thread_probe.hpp"

namespace {

// =================================================================================================
// 0. Helpers
// =================================================================================================

using namespace std::chrono_literals;
using coselect::readable;
using coselect::Scheduler;
using coselect::Task;
using coselect::writable;
using Clock = std::chrono::steady_clock;
using coselect_test::counted;
using coselect_test::FrameProbe;
using coselect_test::run_all;
using coselect_test::run_all_within;
using coselect_test::wait_until_in_reactor;

// How late a real-time wake-up may be on a shared, noisy machine.
constexpr auto kLate = 2s;

void check_sys(bool ok, const char* what) {
  if (!ok) throw std::system_error(errno, std::system_category(), what);
}

// A non-blocking, close-on-exec descriptor pair: a pipe, or a connected AF_UNIX stream socket pair.
struct FdPair {
  int a = -1;  // pipe: read end
  int b = -1;  // pipe: write end

  static FdPair pipe() {
    int fds[2];
    check_sys(::pipe2(fds, O_NONBLOCK | O_CLOEXEC) == 0, "pipe2");
    return FdPair(fds);
  }
  static FdPair sockets() {
    int fds[2];
    check_sys(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == 0,
              "socketpair");
    return FdPair(fds);
  }

  FdPair(const FdPair&) = delete;
  FdPair& operator=(const FdPair&) = delete;
  FdPair(FdPair&& o) noexcept : a(std::exchange(o.a, -1)), b(std::exchange(o.b, -1)) {}
  ~FdPair() {
    close_a();
    close_b();
  }

  int r() const { return a; }
  int w() const { return b; }
  void close_a() {
    if (a >= 0) ::close(std::exchange(a, -1));
  }
  void close_b() {
    if (b >= 0) ::close(std::exchange(b, -1));
  }

 private:
  explicit FdPair(const int (&fds)[2]) : a(fds[0]), b(fds[1]) {}
};

void put_byte(int fd, char c = 'x') {
  check_sys(::write(fd, &c, 1) == 1, "write");
}

// Writes until the (non-blocking) fd would block; returns the bytes written.
std::size_t fill(int fd) {
  static const std::array<char, 65536> junk{};
  std::size_t total = 0;
  for (;;) {
    const ssize_t n = ::write(fd, junk.data(), junk.size());
    if (n > 0) {
      total += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    check_sys(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "fill");
    return total;
  }
}

// Reads until the (non-blocking) fd would block; returns the bytes read.
std::size_t drain(int fd) {
  std::array<char, 65536> buffer;
  std::size_t total = 0;
  for (;;) {
    const ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n > 0) {
      total += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return total;
  }
}

// Duplicates `fd` onto the (closed) number `target` and returns it. Tests that close an fd while it
// is in use take such a high number: new descriptors get the lowest free number, so nothing the
// library opens meanwhile (a lazily created pipe, say) can reuse it.
int dup_to(int fd, int target) {
  check_sys(::fcntl(target, F_GETFD) == -1 && errno == EBADF, "fd already open");
  check_sys(::dup3(fd, target, O_CLOEXEC) == target, "dup3");
  return target;
}

pid_t thread_id() {
  return static_cast<pid_t>(::syscall(SYS_gettid));
}

// What a coroutine saw when an awaitable threw.
struct Failure {
  bool threw = false;
  int code = 0;
};

// One fd wait, described as data (the awaiters themselves are neither copyable nor movable).
struct Wait {
  int fd;
  bool for_write;
  std::optional<std::chrono::nanoseconds> timeout;
};
Wait read_of(int fd) {
  return {fd, false, std::nullopt};
}
Wait write_of(int fd) {
  return {fd, true, std::nullopt};
}
Wait read_of(int fd, std::chrono::nanoseconds t) {
  return {fd, false, t};
}
Wait write_of(int fd, std::chrono::nanoseconds t) {
  return {fd, true, t};
}

// Performs `wait` and records the std::system_error it throws (if any).
Task<void> expect_system_error(Wait wait, Failure& out) {
  try {
    if (!wait.timeout) {
      if (wait.for_write) {
        co_await writable(wait.fd);
      } else {
        co_await readable(wait.fd);
      }
    } else if (wait.for_write) {
      (void)co_await writable(wait.fd, *wait.timeout);
    } else {
      (void)co_await readable(wait.fd, *wait.timeout);
    }
  } catch (const std::system_error& e) {
    out.threw = true;
    out.code = e.code().value();
  }
}

// =================================================================================================
// 1. Readiness
// =================================================================================================

TEST(IoReadable, ResumesWhenAnotherCoroutineWrites) {
  Scheduler s;
  auto pipe = FdPair::pipe();
  bool reader_done = false;
  bool reader_done_before_write = true;  // set false by the writer if all is well
  char got = 0;
  auto reader = [](int fd, bool& done, char& got) -> Task<void> {
    co_await readable(fd);
    check_sys(::read(fd, &got, 1) == 1, "read");
    done = true;
  };
  auto writer = [](int fd, bool& reader_done, bool& early) -> Task<void> {
    // Let the loop turn a few times (and select() once) with the reader waiting on an empty pipe.
    for (int i = 0; i < 3; ++i)
      co_await coselect::yield_now();
    early = reader_done;
    put_byte(fd, 'k');
  };
  EXPECT_EQ(run_all(s, reader(pipe.r(), reader_done, got),
                    writer(pipe.w(), reader_done, reader_done_before_write)),
            0u);
  EXPECT_FALSE(reader_done_before_write) << "readable() resumed on an empty pipe";
  EXPECT_TRUE(reader_done);
  EXPECT_EQ(got, 'k');
}

// Another thread writes while the loop sleeps in select(): the fd itself must wake the loop (no
// timer is due for 10 s). The waiter resumes on the loop thread.
TEST(IoReadable, WakesLoopBlockedInSelectWhenAnotherThreadWrites) {
  Scheduler s;
  auto pipe = FdPair::pipe();
  std::atomic<pid_t> loop_tid{0};
  pid_t resumed_tid = 0;
  std::thread::id resumed_on;
  char got = 0;
  Clock::duration waited{};
  auto reader = [](int fd, std::atomic<pid_t>& loop_tid, pid_t& resumed_tid,
                   std::thread::id& resumed_on, char& got, Clock::duration& waited) -> Task<void> {
    const auto start = Clock::now();
    loop_tid.store(thread_id(), std::memory_order_release);
    co_await readable(fd);
    waited = Clock::now() - start;
    resumed_tid = thread_id();
    resumed_on = std::this_thread::get_id();
    check_sys(::read(fd, &got, 1) == 1, "read");
  };
  bool observed = false;
  std::thread writer([&] {
    pid_t tid = 0;
    while ((tid = loop_tid.load(std::memory_order_acquire)) == 0)
      std::this_thread::yield();
    observed = wait_until_in_reactor(tid, 2s);
    put_byte(pipe.w(), 't');
  });
  const std::size_t left =
      run_all(s, reader(pipe.r(), loop_tid, resumed_tid, resumed_on, got, waited));
  writer.join();
  EXPECT_EQ(left, 0u) << "the loop slept through a cross-thread write to a watched fd";
  EXPECT_EQ(got, 't');
  EXPECT_EQ(resumed_on, std::this_thread::get_id()) << "waiter resumed off the loop thread";
  EXPECT_EQ(resumed_tid, loop_tid.load());
  EXPECT_LT(waited, 2s + kLate);
  if (!observed) std::printf("note: /proc did not show the loop blocked in select()\n");
}

TEST(IoReadable, TwoWaitersOnSameFdBothResume) {
  Scheduler s;
  auto pipe = FdPair::pipe();
  int resumed = 0;
  auto waiter = [](int fd, int& resumed) -> Task<void> {
    co_await readable(fd);
    ++resumed;
  };
  auto writer = [](int fd) -> Task<void> {
    co_await coselect::yield_now();
    put_byte(fd);  // one byte, never read: both waiters must see the fd readable
  };
  EXPECT_EQ(run_all(s, waiter(pipe.r(), resumed), waiter(pipe.r(), resumed), writer(pipe.w())), 0u);
  EXPECT_EQ(resumed, 2);
}

TEST(IoWritable, FreshSocketResumesAtOnce) {
  Scheduler s;
  auto sockets = FdPair::sockets();
  Clock::duration waited{};
  bool timed_result = false;
  auto waiter = [](int fd, Clock::duration& waited, bool& timed) -> Task<void> {
    const auto start = Clock::now();
    co_await writable(fd);
    timed = co_await writable(fd, 1h);
    waited = Clock::now() - start;
  };
  EXPECT_EQ(run_all(s, waiter(sockets.a, waited, timed_result)), 0u);
  EXPECT_TRUE(timed_result);
  EXPECT_LT(waited, kLate);
}

// Under virtual time, readiness is checked before the clock jumps to the timeout.
TEST(IoWritable, FreshSocketUnderVirtualTimeDoesNotWaitForTheTimeout) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  auto sockets = FdPair::sockets();
  const auto t0 = s.now();
  bool result = false;
  Scheduler::duration elapsed{};
  auto waiter = [](Scheduler& s, int fd, bool& result, Scheduler::duration& elapsed) -> Task<void> {
    const auto start = s.now();
    result = co_await writable(fd, 1h);
    elapsed = s.now() - start;
  };
  EXPECT_EQ(run_all_within(s, 10h, waiter(s, sockets.a, result, elapsed)), 0u);
  EXPECT_TRUE(result);
  EXPECT_EQ(elapsed, Scheduler::duration::zero());
  EXPECT_EQ(s.now(), t0);
}

TEST(IoWritable, FullPipeResumesAfterReaderDrains) {
  Scheduler s;
  auto pipe = FdPair::pipe();
  ASSERT_GT(fill(pipe.w()), 0u);
  bool polled = true;
  bool writer_resumed = false;
  bool resumed_before_drain = true;  // the reader sets it false if all is well
  std::size_t drained = 0;
  auto writer = [](int fd, bool& polled, bool& resumed) -> Task<void> {
    polled = co_await writable(fd, 0ms);
    co_await writable(fd);
    resumed = true;
    put_byte(fd);
  };
  auto reader = [](int fd, bool& writer_resumed, bool& early, std::size_t& drained) -> Task<void> {
    for (int i = 0; i < 3; ++i)
      co_await coselect::yield_now();
    early = writer_resumed;
    drained = drain(fd);
  };
  EXPECT_EQ(run_all(s, writer(pipe.w(), polled, writer_resumed),
                    reader(pipe.r(), writer_resumed, resumed_before_drain, drained)),
            0u);
  EXPECT_FALSE(polled) << "a full pipe polled writable";
  EXPECT_FALSE(resumed_before_drain) << "writable() resumed on a full pipe";
  EXPECT_TRUE(writer_resumed);
  EXPECT_GT(drained, 0u);
}

// =================================================================================================
// 2. Timed forms and polls
// =================================================================================================

TEST(IoTimed, TimeoutReturnsFalseNeverEarly) {
  Scheduler s;
  auto empty = FdPair::pipe();
  auto full = FdPair::pipe();
  fill(full.w());
  struct Seen {
    bool result = true;
    Clock::duration waited{};
  };
  Seen r1, r2, w1;
  auto timed_read = [](int fd, Clock::duration d, Seen& seen) -> Task<void> {
    const auto start = Clock::now();
    seen.result = co_await readable(fd, d);
    seen.waited = Clock::now() - start;
  };
  auto timed_write = [](int fd, Clock::duration d, Seen& seen) -> Task<void> {
    const auto start = Clock::now();
    seen.result = co_await writable(fd, d);
    seen.waited = Clock::now() - start;
  };
  EXPECT_EQ(run_all(s, timed_read(empty.r(), 30ms, r1), timed_read(empty.r(), 80ms, r2),
                    timed_write(full.w(), 50ms, w1)),
            0u);
  EXPECT_FALSE(r1.result);
  EXPECT_FALSE(r2.result);
  EXPECT_FALSE(w1.result);
  EXPECT_GE(r1.waited, 30ms);
  EXPECT_GE(r2.waited, 80ms);
  EXPECT_GE(w1.waited, 50ms);
  EXPECT_LT(r1.waited, 30ms + kLate);
  EXPECT_LT(r2.waited, 80ms + kLate);
  EXPECT_LT(w1.waited, 50ms + kLate);
}

TEST(IoTimed, ReturnsTrueWhenReadyBeforeTimeout) {
  Scheduler s;
  auto pipe = FdPair::pipe();
  bool result = false;
  Clock::duration waited{};
  auto reader = [](int fd, bool& result, Clock::duration& waited) -> Task<void> {
    const auto start = Clock::now();
    result = co_await readable(fd, 10s);
    waited = Clock::now() - start;
  };
  auto writer = [](int fd) -> Task<void> {
    co_await coselect::yield_now();
    put_byte(fd);
  };
  EXPECT_EQ(run_all_within(s, 20s, reader(pipe.r(), result, waited), writer(pipe.w())), 0u);
  EXPECT_TRUE(result);
  EXPECT_LT(waited, kLate);
}

TEST(IoTimed, VirtualTimeoutFiresExactlyAtTheDeadline) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  auto pipe = FdPair::pipe();
  const auto t0 = s.now();
  bool result = true;
  Scheduler::time_point at{};
  auto reader = [](Scheduler& s, int fd, bool& result, Scheduler::time_point& at) -> Task<void> {
    result = co_await readable(fd, 90min);
    at = s.now();
  };
  EXPECT_EQ(run_all_within(s, 10h, reader(s, pipe.r(), result, at)), 0u);
  EXPECT_FALSE(result);
  EXPECT_EQ(at - t0, 90min);
}

// timeout <= 0 answers at once, without suspending: a coroutine spawned after the poller has not
// run yet when the polls are done.
TEST(IoPoll, ZeroOrNegativeTimeoutPollsWithoutSuspending) {
  Scheduler s;
  auto with_data = FdPair::pipe();
  auto empty = FdPair::pipe();
  auto full = FdPair::pipe();
  auto sockets = FdPair::sockets();
  put_byte(with_data.w());
  fill(full.w());
  struct Polls {
    std::array<bool, 6> results{};
    bool other_ran_meanwhile = true;
  } polls;
  bool other_ran = false;
  auto poller = [](int data_r, int empty_r, int full_w, int sock, const bool& other_ran,
                   Polls& p) -> Task<void> {
    p.results[0] = co_await readable(data_r, 0ms);
    p.results[1] = co_await readable(data_r, -1s);
    p.results[2] = co_await readable(empty_r, 0ns);
    p.results[3] = co_await readable(empty_r, std::chrono::hours::min());
    p.results[4] = co_await writable(sock, 0ms);
    p.results[5] = co_await writable(full_w, -5ms);
    p.other_ran_meanwhile = other_ran;
  };
  auto other = [](bool& ran) -> Task<void> {
    ran = true;
    co_return;
  };
  EXPECT_EQ(run_all(s, poller(with_data.r(), empty.r(), full.w(), sockets.a, other_ran, polls),
                    other(other_ran)),
            0u);
  EXPECT_TRUE(polls.results[0]);
  EXPECT_TRUE(polls.results[1]);
  EXPECT_FALSE(polls.results[2]);
  EXPECT_FALSE(polls.results[3]);
  EXPECT_TRUE(polls.results[4]);
  EXPECT_FALSE(polls.results[5]);
  EXPECT_FALSE(polls.other_ran_meanwhile) << "a poll suspended the coroutine";
}

// =================================================================================================
// 3. Bad fds
// =================================================================================================

// After the failures, a coroutine that needs the loop (an fd wait through select()) completes.
Task<void> still_running(int fd, bool& done) {
  co_await coselect::yield_now();
  co_await readable(fd);
  done = true;
}

// DESIGN §7: an fd >= FD_SETSIZE is an ordinary fd on every backend (select() hands such a round
// to poll()); numbers up there that are not open fail with EBADF like any closed fd.
TEST(IoErrors, FdAtOrAboveFdSetsizeIsAnOrdinaryFd) {
  constexpr int kBig = FD_SETSIZE + 5;
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  bool raised = false;
  if (saved.rlim_cur <= static_cast<rlim_t>(kBig) + 1 &&
      saved.rlim_max > static_cast<rlim_t>(kBig) + 1) {
    rlimit more = saved;
    more.rlim_cur = static_cast<rlim_t>(kBig) + 2;
    raised = ::setrlimit(RLIMIT_NOFILE, &more) == 0;
  }
  if (saved.rlim_cur <= static_cast<rlim_t>(kBig) + 1 && !raised) {
    GTEST_SKIP() << "RLIMIT_NOFILE does not allow fd " << kBig + 1;
  }
  auto pipe = FdPair::pipe();
  put_byte(pipe.w());
  auto sockets = FdPair::sockets();
  const int big_readable = dup_to(pipe.r(), kBig);
  const int big_writable = dup_to(sockets.w(), kBig + 1);

  Scheduler s;
  std::array<Failure, 6> f{};
  bool done = false;
  EXPECT_EQ(run_all(s, expect_system_error(read_of(big_readable), f[0]),
                    expect_system_error(write_of(big_writable), f[1]),
                    expect_system_error(read_of(big_readable, 1s), f[2]),
                    expect_system_error(write_of(big_writable, 0ms), f[3]),
                    expect_system_error(read_of(FD_SETSIZE), f[4]),
                    expect_system_error(read_of(FD_SETSIZE + 1000, -1s), f[5]),
                    still_running(pipe.r(), done)),
            0u);
  ::close(big_readable);
  ::close(big_writable);
  if (raised) ::setrlimit(RLIMIT_NOFILE, &saved);
  for (std::size_t i = 0; i < 4; ++i)
    EXPECT_FALSE(f[i].threw) << i << ": errno " << f[i].code;
  for (std::size_t i = 4; i < f.size(); ++i) {
    EXPECT_TRUE(f[i].threw) << i;
    EXPECT_EQ(f[i].code, EBADF) << i;
  }
  EXPECT_TRUE(done) << "the loop stopped serving other coroutines";
}

TEST(IoErrors, NegativeFdThrowsEinvalAndLoopKeepsRunning) {
  Scheduler s;
  auto pipe = FdPair::pipe();
  put_byte(pipe.w());
  std::array<Failure, 4> f{};
  bool done = false;
  EXPECT_EQ(
      run_all(s, expect_system_error(read_of(-1), f[0]), expect_system_error(write_of(-7), f[1]),
              expect_system_error(read_of(-1, 1s), f[2]),
              expect_system_error(write_of(-1, 0ms), f[3]), still_running(pipe.r(), done)),
      0u);
  for (std::size_t i = 0; i < f.size(); ++i) {
    EXPECT_TRUE(f[i].threw) << i;
    EXPECT_EQ(f[i].code, EINVAL) << i;
  }
  EXPECT_TRUE(done);
}

TEST(IoErrors, ClosedFdThrowsEbadfAndLoopKeepsRunning) {
  Scheduler s;
  auto pipe = FdPair::pipe();
  put_byte(pipe.w());
  const int fd = dup_to(pipe.r(), 1000);
  ::close(fd);
  std::array<Failure, 4> f{};
  bool done = false;
  EXPECT_EQ(
      run_all(s, expect_system_error(read_of(fd), f[0]), expect_system_error(write_of(fd), f[1]),
              expect_system_error(read_of(fd, 1s), f[2]),
              expect_system_error(write_of(fd, 0ms), f[3]), still_running(pipe.r(), done)),
      0u);
  for (std::size_t i = 0; i < f.size(); ++i) {
    EXPECT_TRUE(f[i].threw) << i;
    EXPECT_EQ(f[i].code, EBADF) << i;
  }
  EXPECT_TRUE(done);
}

// The fd is closed by another coroutine while two coroutines (one timed) wait on it. They get
// EBADF; a waiter on another fd is unaffected and resumes normally once its data arrives.
TEST(IoErrors, FdClosedWhileWaitingThrowsEbadfOthersUnaffected) {
  Scheduler s;
  if (s.backend() == coselect::Backend::epoll) {
    GTEST_SKIP() << "epoll: closing an fd a coroutine waits on is not allowed (DESIGN §7: "
                    "cancel_io first), tested in test_backend.cpp";
  }
  auto victim = FdPair::pipe();
  auto victim2 = FdPair::pipe();
  auto bystander = FdPair::pipe();
  Failure untimed, timed;
  bool bystander_threw = false;
  bool bystander_done = false;
  auto victim_wait = [](int fd, Failure& f) -> Task<void> {
    try {
      co_await readable(fd);
    } catch (const std::system_error& e) {
      f.threw = true;
      f.code = e.code().value();
    }
  };
  auto victim_timed_wait = [](int fd, Failure& f) -> Task<void> {
    try {
      (void)co_await writable(fd, 1h);  // a full pipe: not writable
    } catch (const std::system_error& e) {
      f.threw = true;
      f.code = e.code().value();
    }
  };
  fill(victim2.w());
  auto bystander_wait = [](int fd, bool& threw, bool& done) -> Task<void> {
    try {
      co_await readable(fd);
      done = true;
    } catch (...) {
      threw = true;
    }
  };
  auto closer = [](int v1, int v2, int bystander_w) -> Task<void> {
    co_await coselect::yield_now();  // everyone else is waiting now
    ::close(v1);
    ::close(v2);
    for (int i = 0; i < 3; ++i)
      co_await coselect::yield_now();
    put_byte(bystander_w);
  };
  const int v1 = dup_to(victim.r(), 1001);
  const int v2 = dup_to(victim2.w(), 1002);
  EXPECT_EQ(run_all(s, victim_wait(v1, untimed), victim_timed_wait(v2, timed),
                    bystander_wait(bystander.r(), bystander_threw, bystander_done),
                    closer(v1, v2, bystander.w())),
            0u);
  EXPECT_EQ(::fcntl(v1, F_GETFD), -1);  // closed by the closer (and not reopened by anything)
  EXPECT_TRUE(untimed.threw);
  EXPECT_EQ(untimed.code, EBADF);
  EXPECT_TRUE(timed.threw);
  EXPECT_EQ(timed.code, EBADF);
  EXPECT_FALSE(bystander_threw);
  EXPECT_TRUE(bystander_done);
}

TEST(IoErrors, AwaitingWithoutSchedulerThrowsLogicError) {
  auto pipe = FdPair::pipe();
  std::string message;
  auto t = [](int fd, std::string& message) -> Task<void> {
    try {
      co_await readable(fd);
    } catch (const std::logic_error& e) {
      message = e.what();
    }
  }(pipe.r(), message);
  t.handle().resume();  // driven by hand: no scheduler runs on this thread
  EXPECT_TRUE(t.done());
  EXPECT_FALSE(message.empty());
}

// =================================================================================================
// 4. Exactly one resumption when readiness and timeout meet
// =================================================================================================

// Real time: data is already there and the timeout (1 ns .. ~60 µs) expires at once, so the
// loop sees both the ready fd and the due timer in the turn after the waiters suspend. Each waiter
// must resume once: a second resumption would end its next wait (on a never-ready fd) early,
// which then reports `true`.
TEST(IoReadiness, ReadyAndExpiredInSameTurnResumesOnce) {
  constexpr int kWaiters = 64;
  Scheduler s;
  std::vector<FdPair> pipes;
  for (int i = 0; i < kWaiters; ++i) {
    pipes.push_back(FdPair::pipe());
    put_byte(pipes.back().w());
  }
  auto never = FdPair::pipe();
  std::array<int, kWaiters> resumed{};
  std::array<bool, kWaiters> second{};
  auto waiter = [](int fd, int never_fd, std::chrono::nanoseconds timeout, int& resumed,
                   bool& second) -> Task<void> {
    (void)co_await readable(fd, timeout);
    ++resumed;
    second = co_await readable(never_fd, 2ms);
  };
  // Spawned one by one: run_all takes a fixed list.
  std::size_t left = kWaiters;
  auto guard = s.tasks().call_later(10s, [&s] { s.stop(); });
  for (int i = 0; i < kWaiters; ++i) {
    s.spawn(counted(waiter(pipes[static_cast<std::size_t>(i)].r(), never.r(),
                           std::chrono::nanoseconds(1 + i * 1000), resumed[i], second[i]),
                    left, s));
  }
  s.run();
  guard.suspend();
  EXPECT_EQ(left, 0u);
  for (int i = 0; i < kWaiters; ++i) {
    EXPECT_EQ(resumed[i], 1) << i;
    EXPECT_FALSE(second[i]) << "waiter " << i << " was resumed a second time";
  }
}

// Virtual time: the fd becomes ready before the clock would jump to the deadline. The waiter
// resumes once with true, and its timer is gone: a stale timer firing at +1h would cut the
// following 2 h sleep short.
TEST(IoReadiness, ReadyBeforeVirtualDeadlineCancelsTheTimer) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  auto pipe = FdPair::pipe();
  const auto t0 = s.now();
  bool result = false;
  int resumed = 0;
  Scheduler::time_point after_sleep{};
  auto waiter = [](Scheduler& s, int fd, bool& result, int& resumed,
                   Scheduler::time_point& after) -> Task<void> {
    result = co_await readable(fd, 1h);
    ++resumed;
    co_await coselect::sleep_for(2h);
    after = s.now();
  };
  auto writer = [](int fd) -> Task<void> {
    co_await coselect::yield_now();
    put_byte(fd);
  };
  EXPECT_EQ(
      run_all_within(s, 10h, waiter(s, pipe.r(), result, resumed, after_sleep), writer(pipe.w())),
      0u);
  EXPECT_TRUE(result);
  EXPECT_EQ(resumed, 1);
  EXPECT_EQ(after_sleep - t0, 2h) << "a stale timeout resumed the waiter again";
}

// Virtual time: the data is written at the very instant the timeout expires (the writer's timer
// was installed first, so it runs in the same turn). One resumption, and the later sleep is
// intact.
TEST(IoReadiness, DataAndTimeoutAtSameVirtualInstantResumesOnce) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  auto pipe = FdPair::pipe();
  const auto t0 = s.now();
  int resumed = 0;
  Scheduler::time_point after_sleep{};
  auto writer = [](int fd, Scheduler::time_point at) -> Task<void> {
    co_await coselect::sleep_until(at);
    put_byte(fd);
  };
  auto waiter = [](Scheduler& s, int fd, int& resumed, Scheduler::time_point& after) -> Task<void> {
    (void)co_await readable(fd, 1h);
    ++resumed;
    co_await coselect::sleep_for(2h);
    after = s.now();
  };
  EXPECT_EQ(
      run_all_within(s, 10h, writer(pipe.w(), t0 + 1h), waiter(s, pipe.r(), resumed, after_sleep)),
      0u);
  EXPECT_EQ(resumed, 1);
  EXPECT_EQ(after_sleep - t0, 3h);
}

// =================================================================================================
// 5. Echo over a socketpair
// =================================================================================================

// Reads exactly `size` bytes, waiting for readable() whenever the socket is empty.
Task<void> read_exact(int fd, char* data, std::size_t size) {
  while (size > 0) {
    const ssize_t n = ::read(fd, data, size);
    if (n > 0) {
      data += n;
      size -= static_cast<std::size_t>(n);
    } else if (n == 0) {
      throw std::runtime_error("unexpected end of stream");
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      co_await readable(fd);
    } else {
      check_sys(errno == EINTR, "read");
    }
  }
}

// Writes all `size` bytes, waiting for writable() whenever the socket buffer is full.
Task<void> write_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n >= 0) {
      data += n;
      size -= static_cast<std::size_t>(n);
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      co_await writable(fd);
    } else {
      check_sys(errno == EINTR, "write");
    }
  }
}

TEST(IoEcho, SocketpairPingPongThousandMessages) {
  constexpr std::uint32_t kMessages = 1000;
  Scheduler s;
  auto sockets = FdPair::sockets();
  std::uint32_t matched = 0;
  std::uint32_t echoed = 0;
  std::string error;
  auto client = [](int fd, std::uint32_t& matched, std::string& error) -> Task<void> {
    try {
      for (std::uint32_t i = 0; i < kMessages; ++i) {
        char out[64];
        const int len = std::snprintf(out, sizeof out, "message %u padded to vary", i);
        const std::uint32_t size = static_cast<std::uint32_t>(len);
        co_await write_all(fd, reinterpret_cast<const char*>(&size), sizeof size);
        co_await write_all(fd, out, size);
        char in[64];
        co_await read_exact(fd, in, size);
        if (std::memcmp(in, out, size) == 0) ++matched;
      }
      ::shutdown(fd, SHUT_WR);
    } catch (const std::exception& e) {
      error = e.what();
    }
  };
  auto server = [](int fd, std::uint32_t& echoed, std::string& error) -> Task<void> {
    try {
      for (std::uint32_t i = 0; i < kMessages; ++i) {
        std::uint32_t size = 0;
        co_await read_exact(fd, reinterpret_cast<char*>(&size), sizeof size);
        char buffer[64];
        if (size > sizeof buffer) throw std::runtime_error("bad frame");
        co_await read_exact(fd, buffer, size);
        co_await write_all(fd, buffer, size);
        ++echoed;
      }
      co_await readable(fd);  // end of stream
    } catch (const std::exception& e) {
      error = e.what();
    }
  };
  const auto start = Clock::now();
  EXPECT_EQ(run_all(s, client(sockets.a, matched, error), server(sockets.b, echoed, error)), 0u);
  EXPECT_EQ(error, "");
  EXPECT_EQ(echoed, kMessages);
  EXPECT_EQ(matched, kMessages);
  EXPECT_LT(Clock::now() - start, 5s);
}

// =================================================================================================
// 6. Lifetime
// =================================================================================================

Task<void> wait_readable_forever(int fd, int& destroyed, int& resumed) {
  FrameProbe probe{destroyed};
  co_await readable(fd);
  ++resumed;
}

Task<void> wait_writable_timed(int fd, int& destroyed, int& resumed) {
  FrameProbe probe{destroyed};
  (void)co_await writable(fd, 1h);
  ++resumed;
}

Task<void> await_child(Task<void>& child) {
  co_await child;
}

// Destroying the scheduler destroys the frames waiting on fds (ASan: no use after free; the
// waiters' unlinking touches only live structures).
TEST(IoLifetime, DestroyingSchedulerWhileWaitingFreesWaiters) {
  auto pipe = FdPair::pipe();
  auto full = FdPair::pipe();
  fill(full.w());
  int destroyed = 0;
  int resumed = 0;
  {
    Scheduler s;
    s.spawn(wait_readable_forever(pipe.r(), destroyed, resumed));
    s.spawn(wait_writable_timed(full.w(), destroyed, resumed));
    s.spawn([](int fd, int& destroyed, int& resumed) -> Task<void> {
      FrameProbe probe{destroyed};
      co_await wait_readable_forever(fd, destroyed, resumed);  // nested frame
    }(pipe.r(), destroyed, resumed));
    s.spawn([](Scheduler& s) -> Task<void> {
      co_await coselect::yield_now();  // the others are registered by now
      s.stop();
    }(s));
    s.run();
    EXPECT_EQ(destroyed, 0);
    put_byte(pipe.w());  // ready now, but the loop does not run again
  }
  EXPECT_EQ(destroyed, 4);
  EXPECT_EQ(resumed, 0);
}

// A waiting frame destroyed while its scheduler lives on (its Task is owned by the test) must
// unlink itself: when the fd becomes ready and the old deadline passes later, nothing may resume
// the dead frame (ASan would see it), and the loop serves new waiters on the same fds.
TEST(IoLifetime, DestroyedWaiterLeavesNoRegistrationBehind) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  auto pipe = FdPair::pipe();
  auto full = FdPair::pipe();
  fill(full.w());
  int destroyed = 0;
  int resumed = 0;
  auto untimed = std::make_optional(wait_readable_forever(pipe.r(), destroyed, resumed));
  auto timed = std::make_optional(wait_writable_timed(full.w(), destroyed, resumed));
  s.spawn(await_child(*untimed));
  s.spawn(await_child(*timed));
  s.run_for(1min);  // both wait now (the timed one until +1h)
  untimed.reset();
  timed.reset();
  EXPECT_EQ(destroyed, 2);

  put_byte(pipe.w());
  drain(full.a);
  bool read_again = false;
  bool wrote_again = false;
  auto again = [](int r, int w, bool& read_again, bool& wrote_again) -> Task<void> {
    co_await readable(r);
    read_again = true;
    wrote_again = co_await writable(w, 1h);
  };
  EXPECT_EQ(run_all_within(s, 10h, again(pipe.r(), full.w(), read_again, wrote_again)), 0u);
  s.run_for(2h);  // past the destroyed waiter's deadline
  EXPECT_TRUE(read_again);
  EXPECT_TRUE(wrote_again);
  EXPECT_EQ(resumed, 0);
}

}  // namespace

#endif  // !defined(_WIN32)
