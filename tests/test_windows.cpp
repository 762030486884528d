// Windows-only tests (DESIGN.md §10): what the Winsock room of the platform layer promises, and
// what Windows cannot do, which must be a clear error. Built for Windows only (CMakeLists.txt);
// every test runs once per backend the suite is run on (COSELECT_TEST_BACKEND), and the
// backend-specific ones name their backend.
//
// Coroutines only record; assertions follow run().

#include <chrono>
#include <csignal>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <coselect.hpp>
#include "support/fd_probe.hpp"
#include "support/fixtures.hpp"
#include "support/portable.hpp"

namespace {

using namespace std::chrono_literals;
using coselect::Backend;
using coselect::native_handle;
using coselect::Scheduler;
using coselect::Task;
using coselect::WaitableEvent;
using coselect_test::Pipe;
using coselect_test::run_all;
using Clock = std::chrono::steady_clock;

// What a coroutine saw when an awaitable threw.
struct Failure {
  bool threw = false;
  std::error_code code;
};

Task<void> await_readable(native_handle h, Failure& f, bool& done) {
  try {
    co_await coselect::readable(h);
    done = true;
  } catch (const std::system_error& e) {
    f.threw = true;
    f.code = e.code();
  }
}

TEST(WindowsEvent, FilenoIsAStreamSocketReadableExactlyWhileSet) {
  WaitableEvent ev;
  const native_handle fd = ev.fileno();
  int type = 0;
  int length = sizeof type;
  ASSERT_EQ(::getsockopt(fd, SOL_SOCKET, SO_TYPE, reinterpret_cast<char*>(&type), &length), 0);
  EXPECT_EQ(type, SOCK_STREAM);
  EXPECT_FALSE(coselect_test::readable_now(fd));
  ev.set();
  EXPECT_TRUE(coselect_test::readable_now(fd));
  ev.clear();
  EXPECT_FALSE(coselect_test::readable_now(fd));
}

TEST(WindowsEvent, TheSocketsAreNotInheritable) {
  WaitableEvent ev;
  DWORD flags = 0;
  ASSERT_TRUE(::GetHandleInformation(reinterpret_cast<HANDLE>(ev.fileno()), &flags));
  EXPECT_EQ(flags & HANDLE_FLAG_INHERIT, 0u);
}

TEST(WindowsEvent, SetFromAnotherThreadReleasesABlockedThreadAndTheLoop) {
  WaitableEvent ev;
  bool blocked_released = false;
  std::thread blocked([&] { blocked_released = ev.wait_blocking(10s); });
  Scheduler s;
  bool loop_released = false;
  auto waiter = [](WaitableEvent& ev, bool& released) -> Task<void> {
    released = co_await ev.wait(10s);
  };
  std::thread setter([&] { ev.set(); });
  EXPECT_EQ(run_all(s, waiter(ev, loop_released)), 0u);
  setter.join();
  blocked.join();
  EXPECT_TRUE(blocked_released);
  EXPECT_TRUE(loop_released);
}

TEST(WindowsEvent, ATimedBlockingWaitIsNeverEarly) {
  WaitableEvent ev;
  const auto start = Clock::now();
  EXPECT_FALSE(ev.wait_blocking(50ms));
  EXPECT_GE(Clock::now() - start, 50ms);
}

TEST(WindowsIo, ReadableResumesWhenTheSocketGetsData) {
  Scheduler s;
  Pipe p;
  Failure f;
  bool done = false;
  s.tasks().call_later(5ms, [&p] { p.put(); });
  EXPECT_EQ(run_all(s, await_readable(p.read_end, f, done)), 0u);
  EXPECT_TRUE(done);
  EXPECT_FALSE(f.threw) << f.code.message();
}

TEST(WindowsIo, WritableAndTimedReadable) {
  Scheduler s;
  Pipe p;
  bool writable = false;
  bool timed_out = false;
  auto body = [](const Pipe& p, bool& writable, bool& timed_out) -> Task<void> {
    co_await coselect::writable(p.write_end);
    writable = true;
    timed_out = !co_await coselect::readable(p.read_end, 20ms);
  };
  EXPECT_EQ(run_all(s, body(p, writable, timed_out)), 0u);
  EXPECT_TRUE(writable);
  EXPECT_TRUE(timed_out);
}

// Winsock's fd_set holds 64 sockets unless the program says otherwise; the loop's does not stop
// there (select builds its sets to size, WSAPoll has no cap).
class WindowsBackends : public testing::TestWithParam<Backend> {};

TEST_P(WindowsBackends, TwoHundredSocketsOnOneLoop) {
  constexpr int kSockets = 200;
  Scheduler s(GetParam());
  std::vector<std::unique_ptr<Pipe>> pipes;
  for (int i = 0; i < kSockets; ++i)
    pipes.push_back(std::make_unique<Pipe>());
  std::vector<Failure> failures(kSockets);
  std::vector<char> done(kSockets, 0);
  std::vector<Task<void>> waiters;
  for (int i = 0; i < kSockets; ++i) {
    waiters.push_back(
        [](native_handle h, Failure& f, char& done) -> Task<void> {
          bool d = false;
          co_await await_readable(h, f, d);
          done = d ? 1 : 0;
        }(pipes[static_cast<std::size_t>(i)]->read_end, failures[static_cast<std::size_t>(i)],
                                                    done[static_cast<std::size_t>(i)]));
  }
  // The last socket first: a reactor that dropped sockets past 64 would never see it.
  s.tasks().call_later(5ms, [&] {
    for (int i = kSockets - 1; i >= 0; --i)
      pipes[static_cast<std::size_t>(i)]->put();
  });
  EXPECT_EQ(coselect_test::run_all_within(s, 10s, std::move(waiters)), 0u);
  int ready = 0;
  for (char d : done)
    ready += d;
  EXPECT_EQ(ready, kSockets);
}

TEST_P(WindowsBackends, ASocketClosedWhileAwaitedFailsItsWaiterWithEbadf) {
  Scheduler s(GetParam());
  Pipe p;
  const native_handle doomed = coselect_test::make_channel().read_end;
  Failure f;
  bool done = false;
  s.tasks().call_later(5ms, [doomed] { coselect_test::close_handle(doomed); });
  EXPECT_EQ(run_all(s, await_readable(doomed, f, done)), 0u);
  EXPECT_FALSE(done);
  EXPECT_TRUE(f.threw);
  EXPECT_EQ(f.code, std::errc::bad_file_descriptor) << f.code.message();
}

TEST_P(WindowsBackends, CancelIoResumesTheWaitersOfASocket) {
  Scheduler s(GetParam());
  Pipe p;
  Failure f;
  bool done = false;
  s.tasks().call_later(5ms, [&] { s.cancel_io(p.read_end); });
  EXPECT_EQ(run_all(s, await_readable(p.read_end, f, done)), 0u);
  EXPECT_FALSE(done);
  EXPECT_EQ(f.code, std::errc::operation_canceled) << f.code.message();
}

INSTANTIATE_TEST_SUITE_P(All, WindowsBackends, testing::Values(Backend::select, Backend::poll),
                         [](const testing::TestParamInfo<Backend>& info) {
                           return std::string(coselect::to_string(info.param));
                         });

// ---- what Windows cannot do: clear errors ------------------------------------------------------

TEST(WindowsLimits, ANonSocketHandleIsEbadfAndInvalidSocketEinval) {
  Scheduler s;
  Failure not_socket, invalid;
  bool done = false;
  // A file handle is no socket: Winsock cannot watch it.
  const HANDLE file = ::CreateFileA("NUL", GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_WRITE,
                                    nullptr, OPEN_EXISTING, 0, nullptr);
  ASSERT_NE(file, INVALID_HANDLE_VALUE);
  EXPECT_EQ(run_all(s, await_readable(reinterpret_cast<native_handle>(file), not_socket, done),
                    await_readable(INVALID_SOCKET, invalid, done)),
            0u);
  ::CloseHandle(file);
  EXPECT_FALSE(done);
  EXPECT_EQ(not_socket.code, std::errc::bad_file_descriptor) << not_socket.code.message();
  EXPECT_EQ(invalid.code, std::errc::invalid_argument) << invalid.code.message();
}

TEST(WindowsLimits, EpollIsAbsentAndAskingForItIsAClearError) {
  EXPECT_FALSE(coselect::backend_available(Backend::epoll));
  EXPECT_TRUE(coselect::backend_available(Backend::select));
  EXPECT_TRUE(coselect::backend_available(Backend::poll));
  EXPECT_THROW(Scheduler{Backend::epoll}, std::invalid_argument);
}

TEST(WindowsLimits, SignalSetTakesSigintAndSigbreakOnly) {
  EXPECT_THROW(coselect::SignalSet{SIGTERM}, std::invalid_argument);
  EXPECT_THROW(coselect::SignalSet{SIGSEGV}, std::invalid_argument);
  EXPECT_THROW((coselect::SignalSet{SIGINT, SIGTERM}), std::invalid_argument);
  coselect::SignalSet ok{SIGINT, SIGBREAK};  // and gives them back when it goes
  EXPECT_FALSE(ok.poll());
}

// Console events arrive on a thread of their own. A test process has no console to press
// Ctrl+Break in, so the control routine the set registered is called as Windows would call it.
TEST(WindowsSignals, ConsoleControlEventsAreSigintAndSigbreak) {
  coselect::SignalSet set{SIGINT, SIGBREAK};
  Scheduler s;
  std::vector<int> got;
  auto waiter = [](coselect::SignalSet& set, std::vector<int>& got) -> Task<void> {
    got.push_back(co_await set.wait());
    got.push_back(co_await set.wait());
  };
  // Both arrive before anyone waits: the set keeps them, and hands out the lowest first.
  std::thread console([] {
    EXPECT_TRUE(coselect::detail::console_control_routine(CTRL_BREAK_EVENT));
    EXPECT_TRUE(coselect::detail::console_control_routine(CTRL_C_EVENT));
  });
  console.join();
  EXPECT_EQ(run_all(s, waiter(set, got)), 0u);
  EXPECT_EQ(got, (std::vector<int>{SIGINT, SIGBREAK}));
  // Events nobody holds go on to the next routine (the default one ends the process).
  EXPECT_FALSE(coselect::detail::console_control_routine(CTRL_CLOSE_EVENT));
}

TEST(WindowsSignals, AGoneSetPassesConsoleEventsOn) {
  { coselect::SignalSet set{SIGINT}; }
  EXPECT_FALSE(coselect::detail::console_control_routine(CTRL_C_EVENT));
}

}  // namespace
