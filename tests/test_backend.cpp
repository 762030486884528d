// Tests of the I/O backends (backend.hpp, DESIGN §7): what is new with them. Every other test
// file runs once per backend in CI (COSELECT_TEST_BACKEND); the tests here name their backends
// themselves, so they cover all three in every run.
//
// Sections
//   1. Names and construction
//   2. No fd cap: 2,000 fds open, then events, cross-thread wake-ups, readable() and dispatchers
//      on fds >= 1024, and a loop that sleeps without napping
//   3. Fds select() calls always ready (regular files: epoll's EPERM, /dev/null)
//   4. cancel_io(fd)
//   5. Fd numbers reused after close; ready fds without waiters do not make the loop spin
//   6. epoll and fork()
//
// Coroutines only record what they see; assertions run after the loop has returned. Real-time
// bounds are one-sided and generous.

#if defined(_WIN32)
#include <gtest/gtest.h>

TEST(BackendOnWindows, PosixOnly) {
  GTEST_SKIP() << "fork, pipes, rlimit, /proc and epoll: POSIX only (select and WSAPoll on Windows "
                  "are covered by test_windows.cpp)";
}
#else
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <coselect.hpp>

#include "support/fixtures.hpp"
#include "support/thread_probe.hpp"

namespace {

using namespace std::chrono_literals;
using coselect::Backend;
using coselect::Scheduler;
using coselect::Task;
using coselect::WaitableEvent;
using coselect_test::Pipe;
using coselect_test::run_all;

constexpr std::array kAllBackends = {Backend::select, Backend::poll, Backend::epoll};

std::string backend_name(const testing::TestParamInfo<Backend>& info) {
  return std::string(coselect::to_string(info.param));
}

pid_t current_tid() {
  return static_cast<pid_t>(::syscall(SYS_gettid));
}

// How a wait ended, as a coroutine saw it.
enum class Ending { none, resumed, timed_out, canceled, other_error };

Ending ending_of(const std::system_error& e) {
  return e.code() == std::errc::operation_canceled ? Ending::canceled : Ending::other_error;
}

Task<void> read_wait(int fd, Ending& out) {
  try {
    co_await coselect::readable(fd);
    out = Ending::resumed;
  } catch (const std::system_error& e) {
    out = ending_of(e);
  }
}

Task<void> timed_read_wait(int fd, std::chrono::nanoseconds timeout, Ending& out) {
  try {
    const bool ready = co_await coselect::readable(fd, timeout);
    out = ready ? Ending::resumed : Ending::timed_out;
  } catch (const std::system_error& e) {
    out = ending_of(e);
  }
}

Task<void> write_wait(int fd, Ending& out) {
  try {
    co_await coselect::writable(fd);
    out = Ending::resumed;
  } catch (const std::system_error& e) {
    out = ending_of(e);
  }
}

// Opens `pairs` pipes (2 * pairs fds) after raising RLIMIT_NOFILE's soft limit as far as it
// goes, and restores both on destruction. fds made afterwards have numbers above them.
class ManyFdsOpen {
 public:
  explicit ManyFdsOpen(int pairs) {
    if (::getrlimit(RLIMIT_NOFILE, &saved_) == 0) {
      rlimit raised = saved_;
      raised.rlim_cur = saved_.rlim_max;
      restore_ = ::setrlimit(RLIMIT_NOFILE, &raised) == 0;
    }
    for (int i = 0; i < pairs; ++i) {
      int fds[2];
      if (::pipe2(fds, O_CLOEXEC) != 0) {
        error_ = errno;
        return;
      }
      fds_.push_back(fds[0]);
      fds_.push_back(fds[1]);
    }
  }
  ManyFdsOpen(const ManyFdsOpen&) = delete;
  ManyFdsOpen& operator=(const ManyFdsOpen&) = delete;
  ~ManyFdsOpen() {
    for (int fd : fds_)
      ::close(fd);
    if (restore_) ::setrlimit(RLIMIT_NOFILE, &saved_);
  }
  // Empty if every pipe could be made, else why not.
  std::string problem() const {
    return error_ == 0 ? std::string()
                       : std::string("could not open fds: ") + std::strerror(error_);
  }

 private:
  rlimit saved_{};
  bool restore_ = false;
  int error_ = 0;
  std::vector<int> fds_;
};

// The number of times thread `tid` gave up the CPU of its own accord (slept), from /proc; -1 if
// /proc cannot tell.
long voluntary_switches(pid_t tid) {
  std::ifstream status("/proc/self/task/" + std::to_string(tid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("voluntary_ctxt_switches:", 0) == 0) return std::stol(line.substr(24));
  }
  return -1;
}

int dup_to(int fd, int target) {
  return ::dup3(fd, target, O_CLOEXEC);
}

class BackendTest : public testing::TestWithParam<Backend> {};
INSTANTIATE_TEST_SUITE_P(AllBackends, BackendTest, testing::ValuesIn(kAllBackends), backend_name);

// =================================================================================================
// 1. Names and construction
// =================================================================================================

TEST(BackendNames, RoundTripAndRejectUnknownNames) {
  for (Backend b : kAllBackends) {
    EXPECT_EQ(coselect::backend_from_string(coselect::to_string(b)), b);
    EXPECT_TRUE(coselect::backend_available(b)) << "Linux has every backend";
  }
  EXPECT_EQ(coselect::backend_from_string("kqueue"), std::nullopt);
  EXPECT_EQ(coselect::backend_from_string(""), std::nullopt);
  EXPECT_EQ(coselect::backend_from_string("EPOLL"), std::nullopt);
}

TEST(BackendConstruction, DefaultIsSelectUnlessTheSuiteChoseAnother) {
  Scheduler s;
  EXPECT_EQ(s.backend(), coselect::detail::default_backend.load());
  if (std::getenv("COSELECT_TEST_BACKEND") == nullptr) {
    EXPECT_EQ(s.backend(), Backend::select);
  }
}

TEST_P(BackendTest, SchedulerUsesTheBackendItWasGiven) {
  Scheduler s(GetParam());
  EXPECT_EQ(s.backend(), GetParam());
  coselect::TimeMachine tm;
  Scheduler virtual_time(tm, GetParam());
  EXPECT_EQ(virtual_time.backend(), GetParam());
  EXPECT_TRUE(virtual_time.is_virtual_time());
}

// A Scheduler's own fds are close-on-exec, and it leaves none behind.
TEST_P(BackendTest, SchedulerFdsAreCloseOnExecAndAllClosed) {
  auto open_fds = [] {
    std::vector<int> fds;
    for (int fd = 0; fd < 4096; ++fd) {
      if (::fcntl(fd, F_GETFD) != -1) fds.push_back(fd);
    }
    return fds;
  };
  const std::vector<int> before = open_fds();
  {
    Scheduler s(GetParam());
    const std::vector<int> during = open_fds();
    std::vector<int> added;
    std::set_difference(during.begin(), during.end(), before.begin(), before.end(),
                        std::back_inserter(added));
    EXPECT_FALSE(added.empty());
    for (int fd : added)
      EXPECT_TRUE(::fcntl(fd, F_GETFD) & FD_CLOEXEC) << "fd " << fd;
  }
  EXPECT_EQ(open_fds(), before);
}

// =================================================================================================
// 2. No fd cap
// =================================================================================================

// With 2,000 fds open first, the loop's wake-up pipe and the events' pipes are all >= 1024. A
// cross-thread ping-pong must work with no nap: the loop, asleep with only an event waiter,
// must stay asleep (a napping loop would wake 100 times a second); and a call_soon from
// another thread must wake it through its own (high) wake-up fd.
TEST_P(BackendTest, EventsAndWakeUpsOnHighFdsNeitherNapNorFail) {
  ManyFdsOpen fillers(1000);
  if (!fillers.problem().empty()) GTEST_SKIP() << fillers.problem();
  Scheduler s(GetParam());
  WaitableEvent ping, pong;
  ASSERT_GE(ping.fileno(), FD_SETSIZE);
  constexpr int kRounds = 50;
  std::atomic<pid_t> loop_tid{0};
  auto responder = [&]() -> Task<void> {
    for (int i = 0; i < kRounds; ++i) {
      co_await ping.wait();
      ping.clear();
      pong.set();
    }
  };
  s.spawn(responder());
  std::thread loop([&] {
    loop_tid = current_tid();
    s.run();
  });
  while (loop_tid.load() == 0)
    std::this_thread::yield();

  // Asleep with one event waiter: count the loop thread's sleeps over a quiet while.
  const bool observed = coselect_test::wait_until_in_reactor(loop_tid, 5s);
  long switches = -1;
  if (observed) {
    const long before = voluntary_switches(loop_tid);
    std::this_thread::sleep_for(200ms);  // a measuring window, not synchronisation
    switches = voluntary_switches(loop_tid) - before;
  }

  std::vector<std::chrono::nanoseconds> trips;
  for (int i = 0; i < kRounds; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    ping.set();
    if (!pong.wait_blocking(5s)) break;
    trips.push_back(std::chrono::steady_clock::now() - t0);
    pong.clear();
  }
  std::atomic<bool> posted{false};
  if (trips.size() == kRounds) {
    s.tasks().call_soon([&] {
      posted = true;
      s.stop();
    });
  } else {
    s.stop();
  }
  loop.join();
  EXPECT_TRUE(posted);
  ASSERT_EQ(trips.size(), static_cast<std::size_t>(kRounds)) << "a wake-up was lost";
  if (observed) {
    EXPECT_LE(switches, 5) << "the idle loop woke " << switches << " times in 200 ms";
  }
  std::sort(trips.begin(), trips.end());
  std::printf("%s: median round trip with 2,000 fds open: %lld us\n",
              std::string(coselect::to_string(GetParam())).c_str(),
              static_cast<long long>(trips[trips.size() / 2].count() / 1000));
}

// readable()/writable() on fds >= 1024, made ready from another thread.
TEST_P(BackendTest, ReadableAndWritableOnHighFdsWakeTheLoop) {
  ManyFdsOpen fillers(1000);
  if (!fillers.problem().empty()) GTEST_SKIP() << fillers.problem();
  std::array<Pipe, 3> pipes;
  int sockets[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sockets), 0);
  ASSERT_GE(pipes[0].read_end, FD_SETSIZE);
  Scheduler s(GetParam());
  std::array<Ending, 4> seen{};
  std::atomic<int> waiting{0};
  auto announce = [&](Task<void> t) -> Task<void> {
    waiting.fetch_add(1);
    co_await t;
  };
  std::thread writer([&] {
    while (waiting.load() < 3)
      std::this_thread::yield();
    for (const Pipe& p : pipes)
      p.put();
  });
  EXPECT_EQ(
      run_all(s, announce(read_wait(pipes[0].read_end, seen[0])),
              announce(read_wait(pipes[1].read_end, seen[1])),
              announce(read_wait(pipes[2].read_end, seen[2])), write_wait(sockets[0], seen[3])),
      0u);
  writer.join();
  ::close(sockets[0]);
  ::close(sockets[1]);
  for (Ending e : seen)
    EXPECT_EQ(e, Ending::resumed);
}

class HighFdReader : public coselect::Dispatcher {
 public:
  explicit HighFdReader(int fd) : fd_(fd) {}
  int fileno() const override { return fd_; }
  void handle_read() override {
    char c;
    while (::read(fd_, &c, 1) == 1)
      ++bytes;
  }
  int bytes = 0;

 private:
  int fd_;
};

TEST_P(BackendTest, DispatchersTakeFdsAboveFdSetsize) {
  ManyFdsOpen fillers(1000);
  if (!fillers.problem().empty()) GTEST_SKIP() << fillers.problem();
  Pipe p;
  ASSERT_GE(p.read_end, FD_SETSIZE);
  Scheduler s(GetParam());
  HighFdReader reader(p.read_end);
  s.add_dispatcher(reader);
  p.put("abc");
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (reader.bytes < 3 && std::chrono::steady_clock::now() < deadline)
    s.run_for(10ms);
  s.remove_dispatcher(reader);
  EXPECT_EQ(reader.bytes, 3);
}

// A reader and a writer on one socket: the writer is served at once (a fresh socket is
// writable), the reader only when data comes; under epoll, the report for the writer must leave
// the reader's interest armed.
TEST_P(BackendTest, ReaderAndWriterOnOneFdAreServedIndependently) {
  Scheduler s(GetParam());
  int sockets[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sockets), 0);
  Ending reader = Ending::none, writer = Ending::none;
  bool reader_pending_after_writer = false;
  auto write_then_feed = [&]() -> Task<void> {
    co_await coselect::writable(sockets[0]);
    writer = Ending::resumed;
    for (int i = 0; i < 3; ++i)
      co_await coselect::yield_now();  // several loop rounds with the reader still waiting
    reader_pending_after_writer = reader == Ending::none;
    const char byte = 'x';
    (void)::write(sockets[1], &byte, 1);
  };
  EXPECT_EQ(run_all(s, read_wait(sockets[0], reader), write_then_feed()), 0u);
  ::close(sockets[0]);
  ::close(sockets[1]);
  EXPECT_EQ(writer, Ending::resumed);
  EXPECT_TRUE(reader_pending_after_writer) << "the reader resumed before any data came";
  EXPECT_EQ(reader, Ending::resumed);
}

// =================================================================================================
// 3. Always-ready fds
// =================================================================================================

// A regular file is ready at once for reading and writing, as select() says; epoll refuses
// such fds (EPERM) and must say the same.
TEST_P(BackendTest, RegularFilesAndDevNullAreReadyAtOnce) {
  char path[] = "/tmp/coselect-backend-XXXXXX";
  const int file = ::mkostemp(path, O_CLOEXEC);
  ASSERT_GE(file, 0);
  ::unlink(path);
  const int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  ASSERT_GE(null, 0);
  Scheduler s(GetParam());
  std::array<Ending, 5> seen{};
  EXPECT_EQ(run_all(s, read_wait(file, seen[0]), write_wait(file, seen[1]),
                    timed_read_wait(file, 1h, seen[2]), read_wait(null, seen[3]),
                    write_wait(null, seen[4])),
            0u);
  // A second wait on the same file, after the first was served: still ready.
  Ending again = Ending::none;
  EXPECT_EQ(run_all(s, read_wait(file, again)), 0u);
  ::close(file);
  ::close(null);
  for (Ending e : seen)
    EXPECT_EQ(e, Ending::resumed);
  EXPECT_EQ(again, Ending::resumed);
}

// =================================================================================================
// 4. cancel_io
// =================================================================================================

TEST_P(BackendTest, CancelIoEndsEveryWaitOnThatFdAndNoOther) {
  Scheduler s(GetParam());
  Pipe target, bystander, unwatched;
  int sockets[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sockets), 0);
  std::array<Ending, 4> on_target{};  // untimed reader, timed reader, second reader, and writer
  Ending on_bystander = Ending::none;
  // The writer waits on a full socket; cancel_io of the socket ends it too.
  while (::send(sockets[0], "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 32, MSG_DONTWAIT) > 0) {
  }
  auto canceller = [&]() -> Task<void> {
    co_await coselect::yield_now();  // everyone else waits by now
    s.cancel_io(target.read_end);
    s.cancel_io(sockets[0]);
    s.cancel_io(unwatched.read_end);  // nobody waits on it: nothing happens
    for (int i = 0; i < 3; ++i)
      co_await coselect::yield_now();
    bystander.put();
  };
  EXPECT_EQ(run_all(s, read_wait(target.read_end, on_target[0]),
                    timed_read_wait(target.read_end, 1h, on_target[1]),
                    read_wait(target.read_end, on_target[2]), write_wait(sockets[0], on_target[3]),
                    read_wait(bystander.read_end, on_bystander), canceller()),
            0u);
  for (std::size_t i = 0; i < on_target.size(); ++i)
    EXPECT_EQ(on_target[i], Ending::canceled) << i;
  EXPECT_EQ(on_bystander, Ending::resumed);

  // The cancelled fds keep working, and so does the one cancel_io left alone.
  Ending later_target = Ending::none, later_unwatched = Ending::none;
  target.put();
  unwatched.put();
  EXPECT_EQ(run_all(s, read_wait(target.read_end, later_target),
                    read_wait(unwatched.read_end, later_unwatched)),
            0u);
  EXPECT_EQ(later_target, Ending::resumed);
  EXPECT_EQ(later_unwatched, Ending::resumed);
  ::close(sockets[0]);
  ::close(sockets[1]);
}

// The epoll close rule, followed: cancel_io, close, and the number comes back as a new pipe.
TEST_P(BackendTest, CancelIoThenCloseThenReuseTheNumber) {
  Scheduler s(GetParam());
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC | O_NONBLOCK), 0);
  const int number = fds[0];
  Ending first = Ending::none;
  auto closer = [&]() -> Task<void> {
    co_await coselect::yield_now();
    s.cancel_io(number);
    ::close(fds[0]);
    ::close(fds[1]);
  };
  EXPECT_EQ(run_all(s, read_wait(number, first), closer()), 0u);
  EXPECT_EQ(first, Ending::canceled);

  Pipe next;  // made now: reuses the lowest free numbers
  if (next.read_end != number) {
    ASSERT_EQ(dup_to(next.read_end, number), number);
  }
  Ending second = Ending::none;
  auto writer = [&]() -> Task<void> {
    co_await coselect::yield_now();
    next.put();
  };
  EXPECT_EQ(run_all(s, read_wait(number, second), writer()), 0u);
  EXPECT_EQ(second, Ending::resumed);
  if (next.read_end != number) ::close(number);
}

TEST_P(BackendTest, CancelIoFromAnotherThreadWhileRunningIsALogicError) {
  Scheduler s(GetParam());
  Pipe p;
  bool threw_logic_error = false;
  Ending seen = Ending::none;
  auto from_elsewhere = [&]() -> Task<void> {
    co_await coselect::yield_now();
    std::thread([&] {
      try {
        s.cancel_io(p.read_end);
      } catch (const std::logic_error&) {
        threw_logic_error = true;
      }
    }).join();
    s.cancel_io(p.read_end);  // on the loop thread: fine
  };
  EXPECT_EQ(run_all(s, read_wait(p.read_end, seen), from_elsewhere()), 0u);
  EXPECT_TRUE(threw_logic_error);
  EXPECT_EQ(seen, Ending::canceled);
}

// =================================================================================================
// 5. Reused numbers; no spinning on ready fds nobody waits for
// =================================================================================================

// An fd closed while nobody waits on it may come back as another file with the same number:
// the backend must not trust what it knew about the old one (epoll: its registration vanished
// with the file).
TEST_P(BackendTest, FdNumberReusedAfterCloseWithNobodyWaiting) {
  Scheduler s(GetParam());
  for (int round = 0; round < 3; ++round) {
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC | O_NONBLOCK), 0);
    const char byte = 'x';
    ASSERT_EQ(::write(fds[1], &byte, 1), 1);
    Ending first = Ending::none;
    EXPECT_EQ(run_all(s, read_wait(fds[0], first)), 0u);  // served; the byte stays unread
    EXPECT_EQ(first, Ending::resumed);
    const int number = fds[0];
    ::close(fds[0]);
    ::close(fds[1]);

    Pipe next;
    if (next.read_end != number) {
      ASSERT_EQ(dup_to(next.read_end, number), number);
    }
    Ending second = Ending::none;
    auto writer = [&]() -> Task<void> {
      co_await coselect::yield_now();
      co_await coselect::yield_now();
      next.put();
    };
    EXPECT_EQ(run_all(s, read_wait(number, second), writer()), 0u) << "round " << round;
    EXPECT_EQ(second, Ending::resumed) << "round " << round;
    if (next.read_end != number) ::close(number);
  }
}

double thread_cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// A waiter is served and leaves its fd readable; afterwards the loop idles with another waiter
// on a silent pipe. The left-over readiness must not keep waking it (level-triggered epoll
// registrations are one-shot for this reason).
TEST_P(BackendTest, ReadyFdWithoutWaitersDoesNotMakeTheLoopSpin) {
  Scheduler s(GetParam());
  Pipe loud, silent;
  loud.put();
  Ending served = Ending::none;
  EXPECT_EQ(run_all(s, read_wait(loud.read_end, served)), 0u);
  EXPECT_EQ(served, Ending::resumed);
  Ending quiet = Ending::none;
  s.spawn(timed_read_wait(silent.read_end, 200ms, quiet));
  const double cpu0 = thread_cpu_seconds();
  s.run_for(400ms);
  const double cpu = thread_cpu_seconds() - cpu0;
  EXPECT_EQ(quiet, Ending::timed_out);
  EXPECT_LT(cpu, 0.1) << "the idle loop burnt " << cpu << " s of CPU";
}

// =================================================================================================
// 6. epoll and fork()
// =================================================================================================

// A child forked from a program with an epoll loop makes its own Scheduler (the epoll fd it
// inherited is its parent's); both loops keep working.
TEST(BackendEpoll, ForkedChildMakesItsOwnSchedulerAndTheParentCarriesOn) {
  // (ThreadSanitizer supports this: the child makes no thread.)
  Scheduler parent(Backend::epoll);
  Pipe parent_pipe;
  Ending parent_seen = Ending::none;
  parent.spawn(read_wait(parent_pipe.read_end, parent_seen));
  parent.run_for(0ms);  // the parent's waiter is registered with its epoll set now

  std::fflush(nullptr);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int status = 1;
    try {
      Scheduler own(Backend::epoll);
      Pipe p;
      p.put();
      Ending seen = Ending::none;
      own.spawn(read_wait(p.read_end, seen));
      own.run_for(1s);
      if (seen == Ending::resumed) status = 0;
    } catch (...) {
      status = 3;
    }
    std::_Exit(status);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;

  parent_pipe.put();
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (parent_seen == Ending::none && std::chrono::steady_clock::now() < deadline)
    parent.run_for(10ms);
  EXPECT_EQ(parent_seen, Ending::resumed);
}

}  // namespace

#endif  // !defined(_WIN32)
