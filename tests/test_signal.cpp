// Tests of coselect::SignalSet (include/coselect/signal.hpp): awaiting POSIX signals.
//
// Sections
//   0. Helpers
//   1. Catching: wait(), poll(), signals kept while nobody waits, two signals
//   2. Dispositions: the destructor restores what it replaced; invalid and duplicate signals
//   3. Wake-ups: a loop asleep in select() woken by a signal sent from another thread
//   4. fileno(): readable while a signal is pending
//   5. Known library bugs (own suite, last: see the BUG comments)
//
// Every test leaves SIGUSR1 and SIGUSR2 with the dispositions it found (a stray SIGUSR1 with the
// default disposition would kill the test program). Where a test needs the loop to be asleep in
// select() before the signal arrives, it observes that through /proc/self/task/<tid>/syscall
// rather than sleeping.

#if defined(_WIN32)
#include <gtest/gtest.h>

TEST(SignalOnWindows, PosixOnly) {
  GTEST_SKIP() << "POSIX signals (raise, kill, pthread_kill, sigaction): Windows has only console "
                  "SIGINT/SIGBREAK, covered by test_windows.cpp";
}
#else
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <coselect.hpp>
#include "support/sanitizers.hpp"
#include "support/thread_probe.hpp"

namespace {

// =================================================================================================
// 0. Helpers
// =================================================================================================

using coselect::Scheduler;
using coselect::SignalSet;
using coselect::Task;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

using coselect_test::is_reactor_wait;
using coselect_test::proc_syscall_readable;
using coselect_test::wait_until_in_reactor;

bool fd_readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0;
}

struct sigaction current_action(int sig) {
  struct sigaction now {};
  ::sigaction(sig, nullptr, &now);
  return now;
}

// Restores a signal's disposition at scope exit (a failed test must not leave a handler that
// points into a destroyed SignalSet, or SIG_DFL where the program expects to survive).
class DispositionGuard {
 public:
  explicit DispositionGuard(int sig) : sig_(sig) { ::sigaction(sig, nullptr, &saved_); }
  ~DispositionGuard() { ::sigaction(sig_, &saved_, nullptr); }
  DispositionGuard(const DispositionGuard&) = delete;
  DispositionGuard& operator=(const DispositionGuard&) = delete;

 private:
  int sig_;
  struct sigaction saved_ {};
};

// Runs `task` on `s`, but stops the loop after `limit` so that a lost wake-up fails the test
// instead of hanging it. nullopt if the limit was hit.
std::optional<int> run_with_limit(Scheduler& s, Task<int> task, Clock::duration limit = 5s) {
  auto guard = s.tasks().call_later(limit, [&s] { s.stop(); });
  try {
    const int v = s.run(std::move(task));
    guard.suspend();
    return v;
  } catch (const std::runtime_error&) {
    guard.suspend();
    return std::nullopt;
  }
}

Task<int> wait_one(SignalSet& set) {
  co_return co_await set.wait();
}

volatile sig_atomic_t g_custom_hits = 0;
void custom_handler(int) {
  g_custom_hits = g_custom_hits + 1;
}

volatile sig_atomic_t g_info_hits = 0;
void info_handler(int, siginfo_t*, void*) {
  g_info_hits = g_info_hits + 1;
}

// =================================================================================================
// 1. Catching
// =================================================================================================

TEST(SignalSet, WaitYieldsARaisedSignal) {
  DispositionGuard keep(SIGUSR1);
  SignalSet set{SIGUSR1};
  Scheduler s;
  auto body = [&]() -> Task<int> {
    // Raise from a callback while the coroutine already waits.
    s.tasks().call_soon([] { ::raise(SIGUSR1); });
    co_return co_await set.wait();
  };
  EXPECT_EQ(run_with_limit(s, body()), SIGUSR1);
  EXPECT_EQ(set.poll(), std::nullopt);
}

TEST(SignalSet, WaitYieldsASignalSentToTheProcess) {
  DispositionGuard keep(SIGUSR1);
  SignalSet set{SIGUSR1};
  Scheduler s;
  auto body = [&]() -> Task<int> {
    // kill() may deliver it to any thread of the process (the hang guard's, say).
    s.tasks().call_soon([] { ::kill(::getpid(), SIGUSR1); });
    co_return co_await set.wait();
  };
  EXPECT_EQ(run_with_limit(s, body()), SIGUSR1);
}

TEST(SignalSet, ASignalRaisedBeforeWaitIsKept) {
  DispositionGuard keep(SIGUSR1);
  SignalSet set{SIGUSR1};
  ASSERT_EQ(::raise(SIGUSR1), 0);
  Scheduler s;
  EXPECT_EQ(run_with_limit(s, wait_one(set)), SIGUSR1);
  EXPECT_EQ(set.poll(), std::nullopt);
}

TEST(SignalSet, TwoSignalsAreBothDeliveredLowestFirst) {
  DispositionGuard keep1(SIGUSR1);
  DispositionGuard keep2(SIGUSR2);
  SignalSet set{SIGUSR2, SIGUSR1};
  ASSERT_EQ(::raise(SIGUSR2), 0);
  ASSERT_EQ(::raise(SIGUSR1), 0);
  Scheduler s;
  auto body = [&]() -> Task<int> {
    const int first = co_await set.wait();
    const int second = co_await set.wait();
    co_return first * 100 + second;
  };
  EXPECT_EQ(run_with_limit(s, body()), SIGUSR1 * 100 + SIGUSR2);
  EXPECT_EQ(set.poll(), std::nullopt);
}

TEST(SignalSet, TheSameSignalTwiceBeforeAWaitIsKeptOnce) {
  DispositionGuard keep(SIGUSR1);
  SignalSet set{SIGUSR1};
  ::raise(SIGUSR1);
  ::raise(SIGUSR1);
  EXPECT_EQ(set.poll(), SIGUSR1);
  EXPECT_EQ(set.poll(), std::nullopt);
}

TEST(SignalSet, WaitingTwiceSeesTwoSeparateDeliveries) {
  DispositionGuard keep(SIGUSR1);
  SignalSet set{SIGUSR1};
  Scheduler s;
  std::vector<int> got;
  auto body = [&]() -> Task<int> {
    for (int i = 0; i < 3; ++i) {
      s.tasks().call_soon([] { ::raise(SIGUSR1); });
      got.push_back(co_await set.wait());
    }
    co_return static_cast<int>(got.size());
  };
  EXPECT_EQ(run_with_limit(s, body()), 3);
  EXPECT_EQ(got, (std::vector<int>{SIGUSR1, SIGUSR1, SIGUSR1}));
}

TEST(SignalSet, PollTakesOnePendingSignalWithoutWaiting) {
  DispositionGuard keep1(SIGUSR1);
  DispositionGuard keep2(SIGUSR2);
  SignalSet set{SIGUSR1, SIGUSR2};
  EXPECT_EQ(set.poll(), std::nullopt);
  ::raise(SIGUSR2);
  EXPECT_EQ(set.poll(), SIGUSR2);
  EXPECT_EQ(set.poll(), std::nullopt);
  ::raise(SIGUSR2);
  ::raise(SIGUSR1);
  EXPECT_EQ(set.poll(), SIGUSR1);
  EXPECT_EQ(set.poll(), SIGUSR2);
  EXPECT_EQ(set.poll(), std::nullopt);
}

TEST(SignalSet, AWaitAfterPollDrainedEverythingWaitsForANewSignal) {
  DispositionGuard keep(SIGUSR1);
  SignalSet set{SIGUSR1};
  ::raise(SIGUSR1);
  ASSERT_EQ(set.poll(), SIGUSR1);
  // The event is still set from the first delivery; wait() must not report a stale signal.
  Scheduler s;
  bool raised = false;
  auto body = [&]() -> Task<int> {
    s.tasks().call_later(10ms, [&] {
      raised = true;
      ::raise(SIGUSR1);
    });
    const int sig = co_await set.wait();
    co_return raised ? sig : -sig;  // negative: returned before the second signal existed
  };
  EXPECT_EQ(run_with_limit(s, body()), SIGUSR1);
}

// =================================================================================================
// 2. Dispositions
// =================================================================================================

TEST(SignalSet, DestructorRestoresAPreviousHandler) {
  DispositionGuard keep(SIGUSR1);
  struct sigaction custom {};
  custom.sa_handler = &custom_handler;
  sigemptyset(&custom.sa_mask);
  ASSERT_EQ(::sigaction(SIGUSR1, &custom, nullptr), 0);
  g_custom_hits = 0;
  {
    SignalSet set{SIGUSR1};
    EXPECT_NE(current_action(SIGUSR1).sa_handler, &custom_handler);
    ::raise(SIGUSR1);
    EXPECT_EQ(set.poll(), SIGUSR1);
    EXPECT_EQ(g_custom_hits, 0);  // the set caught it, not the custom handler
  }
  EXPECT_EQ(current_action(SIGUSR1).sa_handler, &custom_handler);
  ::raise(SIGUSR1);
  EXPECT_EQ(g_custom_hits, 1);
}

TEST(SignalSet, DestructorRestoresIgnoreAndSiginfoHandlers) {
  DispositionGuard keep1(SIGUSR1);
  DispositionGuard keep2(SIGUSR2);
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  ASSERT_EQ(::sigaction(SIGUSR2, &ignore, nullptr), 0);
  struct sigaction info {};
  info.sa_sigaction = &info_handler;
  info.sa_flags = SA_SIGINFO;
  sigemptyset(&info.sa_mask);
  sigaddset(&info.sa_mask, SIGUSR2);
  ASSERT_EQ(::sigaction(SIGUSR1, &info, nullptr), 0);
  g_info_hits = 0;
  { SignalSet set{SIGUSR1, SIGUSR2}; }
  EXPECT_EQ(current_action(SIGUSR2).sa_handler, SIG_IGN);
  const struct sigaction back = current_action(SIGUSR1);
  EXPECT_TRUE(back.sa_flags & SA_SIGINFO);
  EXPECT_EQ(back.sa_sigaction, &info_handler);
  EXPECT_TRUE(sigismember(&back.sa_mask, SIGUSR2));
  ::raise(SIGUSR1);
  EXPECT_EQ(g_info_hits, 1);
}

TEST(SignalSet, DestructorRestoresTheDefaultDisposition) {
  DispositionGuard keep(SIGUSR2);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ASSERT_EQ(::sigaction(SIGUSR2, &dfl, nullptr), 0);
  { SignalSet set{SIGUSR2}; }
  EXPECT_EQ(current_action(SIGUSR2).sa_handler, SIG_DFL);  // checked, not raised
}

TEST(SignalSet, TwoSetsForTheSameSignalThrowAndTheFirstKeepsWorking) {
  DispositionGuard keep1(SIGUSR1);
  DispositionGuard keep2(SIGUSR2);
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  ASSERT_EQ(::sigaction(SIGUSR2, &ignore, nullptr), 0);

  SignalSet first{SIGUSR1};
  EXPECT_THROW(SignalSet{SIGUSR1}, std::invalid_argument);
  // A set that installs SIGUSR2 and then fails on SIGUSR1 undoes its SIGUSR2 handler.
  EXPECT_THROW((SignalSet{SIGUSR2, SIGUSR1}), std::invalid_argument);
  EXPECT_EQ(current_action(SIGUSR2).sa_handler, SIG_IGN);
  // ... and frees SIGUSR2 for others.
  EXPECT_NO_THROW(SignalSet{SIGUSR2});
  EXPECT_EQ(current_action(SIGUSR2).sa_handler, SIG_IGN);

  // The failed constructions left the first set's handler in place.
  ::raise(SIGUSR1);
  EXPECT_EQ(first.poll(), SIGUSR1);
}

TEST(SignalSet, ASignalIsFreeAgainOnceItsSetIsGone) {
  DispositionGuard keep(SIGUSR1);
  { SignalSet a{SIGUSR1}; }
  SignalSet b{SIGUSR1};
  ::raise(SIGUSR1);
  EXPECT_EQ(b.poll(), SIGUSR1);
}

TEST(SignalSet, UncatchableOrOutOfRangeSignalsThrow) {
  DispositionGuard keep(SIGUSR1);
  EXPECT_THROW(SignalSet{SIGKILL}, std::invalid_argument);
  EXPECT_THROW(SignalSet{SIGSTOP}, std::invalid_argument);
  EXPECT_THROW(SignalSet{0}, std::invalid_argument);
  EXPECT_THROW(SignalSet{-1}, std::invalid_argument);
  EXPECT_THROW(SignalSet{65}, std::invalid_argument);
  // A failure later in the list undoes the earlier signals.
  const auto before = current_action(SIGUSR1).sa_handler;
  EXPECT_THROW((SignalSet{SIGUSR1, SIGKILL}), std::invalid_argument);
  EXPECT_EQ(current_action(SIGUSR1).sa_handler, before);
  EXPECT_NO_THROW(SignalSet{SIGUSR1});
}

// =================================================================================================
// 3. Wake-ups from other threads
// =================================================================================================

// The loop (this thread) waits in select(); `send` runs on a helper thread once that is seen.
template <class Send>
void expect_blocked_loop_woken(Send send) {
  if (!proc_syscall_readable()) GTEST_SKIP() << "/proc/self/task/<tid>/syscall is not readable";
  DispositionGuard keep(SIGUSR1);
  SignalSet set{SIGUSR1};
  Scheduler s;
  const pid_t loop_tid = static_cast<pid_t>(::gettid());
  const pthread_t loop_thread = ::pthread_self();
  std::atomic<bool> saw_asleep{false};
  std::thread sender([&] {
    saw_asleep = wait_until_in_reactor(loop_tid);
    send(loop_thread);
  });
  const auto start = Clock::now();
  const std::optional<int> got = run_with_limit(s, wait_one(set));
  const auto elapsed = Clock::now() - start;
  sender.join();
  EXPECT_TRUE(saw_asleep.load());
  EXPECT_EQ(got, SIGUSR1) << "the signal did not wake the loop";
  EXPECT_LT(elapsed, 5s);
}

TEST(SignalSet, PthreadKillToTheBlockedLoopThreadWakesTheWaiter) {
  expect_blocked_loop_woken([](pthread_t loop) { ::pthread_kill(loop, SIGUSR1); });
}

TEST(SignalSet, ASignalHandledOnAnotherThreadWakesTheBlockedLoop) {
  // raise() in the sender: the handler runs on the sender thread, not on the loop's.
  expect_blocked_loop_woken([](pthread_t) { ::raise(SIGUSR1); });
}

TEST(SignalSet, KillToTheProcessWakesTheBlockedLoop) {
  expect_blocked_loop_woken([](pthread_t) { ::kill(::getpid(), SIGUSR1); });
}

// =================================================================================================
// 4. fileno()
// =================================================================================================

TEST(SignalSet, FilenoIsReadableWhileASignalIsPending) {
  DispositionGuard keep(SIGUSR1);
  SignalSet set{SIGUSR1};
  const int fd = set.fileno();
  ASSERT_GE(fd, 0);
  EXPECT_FALSE(fd_readable(fd));
  ::raise(SIGUSR1);
  EXPECT_TRUE(fd_readable(fd));
  EXPECT_TRUE(fd_readable(fd));  // level-triggered: looking does not consume it
  EXPECT_EQ(set.poll(), SIGUSR1);
  // BUG: poll() takes the last pending signal but leaves the internal event set, so fileno()
  // stays readable with nothing pending and an fd-based loop that selects on it spins. See the
  // report: poll() should clear the event when it empties the pending set (then re-check).
  EXPECT_FALSE(fd_readable(fd)) << "fileno() readable with no signal pending";
}

TEST(SignalSet, FilenoBecomesReadableForASignalCaughtBeforeItWasAskedFor) {
  DispositionGuard keep(SIGUSR1);
  SignalSet set{SIGUSR1};
  ::raise(SIGUSR1);
  EXPECT_TRUE(fd_readable(set.fileno()));
  EXPECT_EQ(set.poll(), SIGUSR1);
}

TEST(SignalSet, FilenoIsNotReadableAfterWaitTookTheSignal) {
  DispositionGuard keep(SIGUSR1);
  SignalSet set{SIGUSR1};
  const int fd = set.fileno();
  ::raise(SIGUSR1);
  ASSERT_TRUE(fd_readable(fd));
  Scheduler s;
  EXPECT_EQ(run_with_limit(s, wait_one(set)), SIGUSR1);
  // BUG (same cause as above): wait() returns from its first poll() without clearing the event.
  EXPECT_FALSE(fd_readable(fd)) << "fileno() readable with no signal pending";
}

// =================================================================================================
// 5. Known library bugs (kept last, in their own suite, so that a sanitizer abort here does not
//    hide the results of the tests above)
// =================================================================================================

TEST(SignalSetLifetime, PthreadKillToAThirdThreadWakesTheBlockedLoop) {
  // BUG: the handler runs on the bystander thread. Its set() makes the signal visible (state
  // CAS) before it has finished with the event (pipe write, then more CASes as the pipe's
  // `syncing` owner), so the loop can resume, wait() return and ~SignalSet() close the pipe and
  // free the event while the handler still uses them. ThreadSanitizer reports it (data race
  // write()/close(), about 1 run in 3 here). See the report: ~SignalSet must wait for handlers
  // in flight.
  if (coselect_test::kThreadSanitized) {
    GTEST_SKIP() << "TSan defers the handler while the bystander sits in a raw futex wait";
  }
  // A bystander thread (parked on an atomic) takes the signal.
  std::atomic<bool> release{false};
  std::thread bystander([&] { release.wait(false); });
  const pthread_t target = bystander.native_handle();
  expect_blocked_loop_woken([target](pthread_t) { ::pthread_kill(target, SIGUSR1); });
  release = true;
  release.notify_all();
  bystander.join();
}

}  // namespace

#endif  // !defined(_WIN32)
