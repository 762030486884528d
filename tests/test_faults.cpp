// Fault injection (issue 7): what coselect does when the system says no, or interrupts it.
//
// Sections
//   0. Helpers: exhaust the fd table, make thread creation fail, a targeted signal storm
//   1. EMFILE: every place the library opens an fd (WaitableEvent, Scheduler, SignalSet) throws
//      std::system_error(errc::too_many_files_open), leaks nothing, and leaves what exists usable
//   2. Thread creation failure: run_in_thread reports it to the awaiting coroutine
//   3. EINTR storms: a signal every 100 us at the waiting thread shortens, restarts, loses or
//      hangs nothing (wait_blocking, the loop's select() with sleeps, timeouts, fds, events,
//      TaskManager, run_in_thread), and set() from the signal handler itself works
//   4. fork(): the child can make and use new objects; what it may do with the parent's
//      (read is_set(), destroy them, or exec: the pipes are close-on-exec) leaves the parent's
//      objects intact
//   5. Regressions: library bugs this work found (fixed in fba200a), last in their own suite
//
// Where the library opens no fd (run_in_thread's worker threads, the loop's select()), there is
// no EMFILE case to test: thread creation failures are section 2. Timing bounds are one-sided
// and generous; nothing sleeps to synchronise (delays are timed waits on events nobody sets).

#if defined(_WIN32)
#include <gtest/gtest.h>

TEST(FaultsOnWindows, PosixOnly) {
  GTEST_SKIP() << "fault injection through rlimit, fork, POSIX timers and signals: POSIX only";
}
#else
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <coselect.hpp>
#include <coselect/testing.hpp>
#include "support/fd_probe.hpp"

namespace {

// =================================================================================================
// 0. Helpers
// =================================================================================================

using coselect::Scheduler;
using coselect::SignalSet;
using coselect::Task;
using coselect::ThreadPool;
using coselect::TimeMachine;
using coselect::WaitableEvent;
using coselect_test::readable_now;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

int open_fd_count() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int n = 0;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n - 1;  // the directory's own fd
}

// Runs f, which must throw; returns what it threw (nullptr if nothing). The exception is looked
// at after the fd table is restored: sanitizers may need an fd for their own checks (see
// FdExhaustion::warm_up_sanitizers).
template <class F>
std::exception_ptr thrown_by(F f) {
  try {
    f();
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

void expect_emfile(std::exception_ptr error, const char* what) {
  ASSERT_TRUE(error) << what << " did not throw";
  try {
    std::rethrow_exception(error);
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), std::errc::too_many_files_open) << what << ": " << e.what();
    EXPECT_NE(std::string(e.what()).find("coselect"), std::string::npos) << e.what();
  } catch (...) {
    ADD_FAILURE() << what << " threw something other than std::system_error";
  }
}

// Fills the fd table: lowers RLIMIT_NOFILE's soft limit to a little above the highest open fd and
// occupies every free number below it, so that opening any fd fails with EMFILE. free(n) gives
// n numbers back. The destructor closes the fillers and restores the limit. The headroom above
// the highest fd guarantees fillers to give back even when the open fds are dense (0..highest
// with no gap, as in a CI container), where a limit of exactly highest + 1 would leave none.
class FdExhaustion {
 public:
  FdExhaustion() {
    warm_up_sanitizers();
    ::getrlimit(RLIMIT_NOFILE, &saved_);
    source_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    int highest = source_;
    if (DIR* dir = ::opendir("/proc/self/fd")) {
      const int own = ::dirfd(dir);
      while (const dirent* e = ::readdir(dir)) {
        const int fd = std::atoi(e->d_name);
        if (e->d_name[0] != '.' && fd != own) highest = std::max(highest, fd);
      }
      ::closedir(dir);
    }
    rlimit lowered = saved_;
    lowered.rlim_cur = static_cast<rlim_t>(highest) + 1 + kHeadroom;
    ::setrlimit(RLIMIT_NOFILE, &lowered);
    for (;;) {
      const int fd = ::fcntl(source_, F_DUPFD_CLOEXEC, 0);
      if (fd < 0) break;
      fillers_.push_back(fd);
    }
    full_ = errno == EMFILE;
  }
  FdExhaustion(const FdExhaustion&) = delete;
  FdExhaustion& operator=(const FdExhaustion&) = delete;
  ~FdExhaustion() {
    for (int fd : fillers_)
      ::close(fd);
    ::close(source_);
    ::setrlimit(RLIMIT_NOFILE, &saved_);
  }

  bool full() const { return full_; }

  // UBSan's vptr check, on its first look at a (static type, dynamic type) pair, probes memory
  // through a pipe it creates; with the table full that fails and it reports a bogus "invalid
  // vptr" in the library's `throw std::system_error(...)`. Making the same throw (the library's
  // own throw_errno) and the same member accesses now fills its cache. A no-op elsewhere.
  static void warm_up_sanitizers() {
    try {
      coselect::detail::throw_errno(EMFILE, "coselect: warm-up");
    } catch (const std::system_error& e) {
      [[maybe_unused]] const bool emfile = e.code() == std::errc::too_many_files_open;
      [[maybe_unused]] const std::string what = e.what();
    }
  }

  // Closes n fillers: exactly n fds may be opened now. False if there were fewer than n.
  [[nodiscard]] bool free(std::size_t n) {
    for (; n > 0 && !fillers_.empty(); --n) {
      ::close(fillers_.back());
      fillers_.pop_back();
    }
    return n == 0;
  }

 private:
  static constexpr rlim_t kHeadroom = 8;

  rlimit saved_{};
  int source_ = -1;
  std::vector<int> fillers_;
  bool full_ = false;
};

// Makes every new thread fail to start: the default stack size becomes 1 TiB, which mmap()
// refuses (pthread_create -> EAGAIN, std::thread -> std::system_error). Works as root too,
// where RLIMIT_NPROC does not apply. Restores the default on destruction.
class ThreadCreationFails {
 public:
  ThreadCreationFails() {
    ok_ = ::pthread_getattr_default_np(&saved_) == 0;
    pthread_attr_t huge;
    ::pthread_attr_init(&huge);
    ::pthread_attr_setstacksize(&huge, std::size_t{1} << 40);
    ok_ = ok_ && ::pthread_setattr_default_np(&huge) == 0;
    ::pthread_attr_destroy(&huge);
  }
  ThreadCreationFails(const ThreadCreationFails&) = delete;
  ThreadCreationFails& operator=(const ThreadCreationFails&) = delete;
  ~ThreadCreationFails() {
    ::pthread_setattr_default_np(&saved_);
    ::pthread_attr_destroy(&saved_);
  }
  bool ok() const { return ok_; }

 private:
  pthread_attr_t saved_{};
  bool ok_ = false;
};

// A signal storm aimed at one thread: SIGALRM every `period` (a POSIX timer with
// SIGEV_THREAD_ID, so the signal lands on the thread that made the storm, wherever the kernel
// would otherwise deliver it), with a handler installed *without* SA_RESTART, so that every
// blocking system call it interrupts fails with EINTR. An optional hook runs in the handler.
class EintrStorm {
 public:
  using Hook = void (*)(long count);

  explicit EintrStorm(std::chrono::microseconds period = 100us, Hook hook = nullptr) {
    count_.store(0);
    hook_.store(hook);
    struct sigaction action {};
    action.sa_handler = &EintrStorm::on_signal;
    action.sa_flags = 0;  // no SA_RESTART
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGALRM, &action, &saved_);
    sigevent ev{};
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = SIGALRM;
    ev._sigev_un._tid = static_cast<pid_t>(::syscall(SYS_gettid));
    ok_ = ::timer_create(CLOCK_MONOTONIC, &ev, &timer_) == 0;
    if (ok_) {
      itimerspec spec{};
      spec.it_interval.tv_nsec = static_cast<long>(period.count()) * 1000;
      spec.it_value = spec.it_interval;
      ok_ = ::timer_settime(timer_, 0, &spec, nullptr) == 0;
    }
  }
  EintrStorm(const EintrStorm&) = delete;
  EintrStorm& operator=(const EintrStorm&) = delete;
  ~EintrStorm() {
    if (ok_) ::timer_delete(timer_);
    // A signal may still be pending: take it with our handler in place, then restore.
    sigset_t alarm, old;
    sigemptyset(&alarm);
    sigaddset(&alarm, SIGALRM);
    ::pthread_sigmask(SIG_BLOCK, &alarm, &old);
    timespec zero{};
    while (::sigtimedwait(&alarm, nullptr, &zero) == SIGALRM) {
    }
    ::sigaction(SIGALRM, &saved_, nullptr);
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    hook_.store(nullptr);
  }

  bool ok() const { return ok_; }
  static long count() { return count_.load(); }

 private:
  static void on_signal(int) {
    const int saved_errno = errno;
    const long n = count_.fetch_add(1) + 1;
    if (Hook hook = hook_.load()) hook(n);
    errno = saved_errno;
  }

  static inline std::atomic<long> count_{0};
  static inline std::atomic<Hook> hook_{nullptr};
  struct sigaction saved_ {};
  timer_t timer_{};
  bool ok_ = false;
};

// Runs `body` in a forked child and returns its exit status (the child _exit()s with 0 when
// body returns true, 1 when it returns false). The child must not create threads.
template <class Body>
int in_child(Body body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    bool ok = false;
    try {
      ok = body();
    } catch (...) {
      ok = false;
    }
    ::_exit(ok ? 0 : 1);
  }
  if (pid < 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// In a child: report which check failed (stderr is still the test's), then fail.
#define CHILD_CHECK(condition)                                                            \
  do {                                                                                    \
    if (!(condition)) {                                                                   \
      std::fprintf(stderr, "child: check failed at line %d: %s\n", __LINE__, #condition); \
      return false;                                                                       \
    }                                                                                     \
  } while (false)

// =================================================================================================
// 1. EMFILE
// =================================================================================================

TEST(Emfile, WaitableEventConstructorThrowsTooManyFilesOpenAndLeaksNothing) {
  const int before = open_fd_count();
  std::exception_ptr none_free, one_free;
  {
    FdExhaustion table;
    ASSERT_TRUE(table.full());
    none_free = thrown_by([] { WaitableEvent ev; });
    ASSERT_TRUE(table.free(1));  // a pipe needs two: still EMFILE, and the one fd is not leaked
    one_free = thrown_by([] { WaitableEvent ev; });
    EXPECT_TRUE(thrown_by([] { WaitableEvent ev; }));
    ASSERT_TRUE(table.free(1));
    WaitableEvent ev;  // exactly two free: it fits
    ev.set();
    EXPECT_TRUE(readable_now(ev.fileno()));
  }
  expect_emfile(none_free, "WaitableEvent() with no fd free");
  expect_emfile(one_free, "WaitableEvent() with one fd free");
  EXPECT_EQ(open_fd_count(), before);
}

TEST(Emfile, SchedulerConstructorThrowsTooManyFilesOpen) {
  const int before = open_fd_count();
  std::exception_ptr real_time, virtual_time;
  {
    TimeMachine tm;
    Scheduler warm_up(tm);  // the types its unwinding touches, seen once with fds to spare
  }
  {
    FdExhaustion table;
    ASSERT_TRUE(table.full());
    real_time = thrown_by([] { Scheduler s; });
    virtual_time = thrown_by([] {
      TimeMachine tm;
      Scheduler s(tm);
    });
  }
  expect_emfile(real_time, "Scheduler()");
  expect_emfile(virtual_time, "Scheduler(TimeMachine&)");
  EXPECT_EQ(open_fd_count(), before);
  Scheduler s;  // and afterwards it works
  bool ran = false;
  s.tasks().call_soon([&] { ran = true; });
  s.run_for(0ms);
  EXPECT_TRUE(ran);
}

TEST(Emfile, SignalSetConstructorThrowsTooManyFilesOpenAndHoldsNothing) {
  struct sigaction before {};
  ::sigaction(SIGUSR2, nullptr, &before);
  std::exception_ptr error;
  { SignalSet warm_up{SIGUSR2}; }  // the types its unwinding touches, seen with fds to spare
  {
    FdExhaustion table;
    ASSERT_TRUE(table.full());
    error = thrown_by([] { SignalSet set{SIGUSR2}; });
  }
  expect_emfile(error, "SignalSet{SIGUSR2}");
  // The failed set installed no handler and does not hold the signal.
  struct sigaction after {};
  ::sigaction(SIGUSR2, nullptr, &after);
  EXPECT_EQ(after.sa_handler, before.sa_handler);
  SignalSet set{SIGUSR2};
  ::raise(SIGUSR2);
  EXPECT_EQ(set.poll(), SIGUSR2);
}

// What exists keeps working while no fd can be opened: events (set/clear/wait/fileno), a
// scheduler with coroutines, sleeps, event waits, TaskManager posts from another thread and
// run_in_thread on a pool whose thread already runs. The same scenario runs first with fds to
// spare (that also fills sanitizers' caches, see FdExhaustion::warm_up_sanitizers), then with
// the table full.
void exercise_existing_objects(WaitableEvent& ev, Scheduler& s, ThreadPool& pool) {
  const int fd = ev.fileno();
  ev.set();
  EXPECT_TRUE(readable_now(fd));
  EXPECT_TRUE(ev.wait_blocking(0ms));
  ev.clear();
  EXPECT_FALSE(readable_now(fd));
  EXPECT_FALSE(ev.wait_blocking(1ms));

  std::atomic<bool> posted{false};
  const int result = s.run([&]() -> Task<int> {
    co_await coselect::sleep_for(1ms);
    std::thread other([&] {
      s.tasks().call_soon([&] { posted = true; });
      ev.set();
    });
    co_await ev.wait();
    other.join();
    const bool still_set = co_await ev.wait(0ms);  // set: true at once
    const int v = co_await coselect::run_in_thread(pool, [] { return 42; });
    co_return still_set ? v : -1;
  }());
  EXPECT_EQ(result, 42);
  EXPECT_TRUE(posted.load());
  ev.clear();
}

TEST(Emfile, ExistingObjectsKeepWorkingWhileTheTableIsFull) {
  WaitableEvent ev;
  Scheduler s;
  ThreadPool pool(1);
  exercise_existing_objects(ev, s, pool);  // fds to spare; starts the pool's thread too
  FdExhaustion table;
  ASSERT_TRUE(table.full());
  exercise_existing_objects(ev, s, pool);
  EXPECT_TRUE(thrown_by([] { WaitableEvent another; }));  // still full
}

// =================================================================================================
// 2. Thread creation failure
// =================================================================================================

TEST(ThreadFailure, RunInThreadReportsItToTheAwaitingCoroutine) {
  ThreadPool pool(2);  // no thread yet
  Scheduler s;
  std::atomic<bool> job_ran{false};
  std::optional<std::system_error> error;
  bool loop_still_runs = false;
  {
    ThreadCreationFails no_threads;
    ASSERT_TRUE(no_threads.ok());
    s.run([&]() -> Task<void> {
      try {
        (void)co_await coselect::run_in_thread(pool, [&] {
          job_ran = true;
          return 1;
        });
      } catch (const std::system_error& e) {
        error = e;
      }
      co_await coselect::sleep_for(1ms);  // the loop is fine
      loop_still_runs = true;
    }());
  }
  ASSERT_TRUE(error.has_value()) << "run_in_thread succeeded although no thread could start";
  EXPECT_EQ(error->code(), std::errc::resource_unavailable_try_again) << error->what();
  EXPECT_FALSE(job_ran.load());
  EXPECT_TRUE(loop_still_runs);
  EXPECT_EQ(pool.thread_count(), 0u);

  // Once threads can start again, the same pool works.
  const int v = s.run(
      [&]() -> Task<int> { co_return co_await coselect::run_in_thread(pool, [] { return 5; }); }());
  EXPECT_EQ(v, 5);
}

// Under virtual time the loop must not wait forever for a job that never started: the failed
// call is no longer "in flight", so time jumps again.
TEST(ThreadFailure, VirtualTimeDoesNotWaitForAJobThatNeverStarted) {
  ThreadPool pool(1);
  TimeMachine tm;
  Scheduler s(tm);
  bool failed = false;
  bool slept = false;
  {
    ThreadCreationFails no_threads;
    ASSERT_TRUE(no_threads.ok());
    s.run([&]() -> Task<void> {
      try {
        co_await coselect::run_in_thread(pool, [] {});
      } catch (const std::system_error&) {
        failed = true;
      }
      co_await coselect::sleep_for(std::chrono::hours(1));  // instant, if time still jumps
      slept = true;
    }());
  }
  EXPECT_TRUE(failed);
  EXPECT_TRUE(slept);
}

// A pool that has a worker but cannot start a second one queues the job for the first.
TEST(ThreadFailure, AJobWaitsForAnExistingWorkerWhenNoNewThreadStarts) {
  ThreadPool pool(2);
  WaitableEvent release_first;
  WaitableEvent first_running;
  Scheduler s;
  const int sum = s.run([&]() -> Task<int> {
    auto first = [&]() -> Task<int> {
      co_return co_await coselect::run_in_thread(pool, [&] {
        first_running.set();
        release_first.wait_blocking(10s);
        return 1;
      });
    };
    auto second = [&]() -> Task<int> {
      const bool running = co_await first_running.wait(10s);
      if (!running) co_return -100;
      // The only worker is busy: submit() (inside the co_await) tries to start another thread,
      // fails, and queues the job; the first job is released once this coroutine suspended.
      ThreadCreationFails no_threads;
      s.tasks().call_soon([&] { release_first.set(); });
      const int v = co_await coselect::run_in_thread(pool, [] { return 2; });
      co_return v;
    };
    auto [a, b] = co_await coselect::when_all(first(), second());
    co_return a + b;
  }());
  EXPECT_EQ(sum, 3);
  EXPECT_EQ(pool.thread_count(), 1u);
}

// =================================================================================================
// 3. EINTR storms
// =================================================================================================

// The storm must actually have hit the waits (a few signals at least; sanitizers defer
// handlers, so the count is a floor, not a rate).
constexpr long kMinSignals = 5;

TEST(Eintr, TimedWaitBlockingIsNeitherShortenedNorRestarted) {
  WaitableEvent ev;
  EintrStorm storm;
  ASSERT_TRUE(storm.ok());
  for (auto timeout : {60ms, 15ms}) {
    const long signals_before = EintrStorm::count();
    const auto t0 = Clock::now();
    EXPECT_FALSE(ev.wait_blocking(timeout));
    const auto elapsed = Clock::now() - t0;
    EXPECT_GE(elapsed, timeout) << "EINTR shortened the wait";
    // Restarting the relative timeout at every signal (every 100 us) would never end.
    EXPECT_LT(elapsed, timeout + 2s) << "EINTR restarted the wait";
    EXPECT_GE(EintrStorm::count() - signals_before, kMinSignals);
  }
}

TEST(Eintr, UntimedWaitBlockingIsReleasedBySetFromAnotherThread) {
  WaitableEvent ev;
  EintrStorm storm;
  ASSERT_TRUE(storm.ok());
  std::thread setter([&] {
    WaitableEvent never;
    never.wait_blocking(30ms);  // a delay: let the storm hit the blocked waiter
    ev.set();
    ev.clear();  // a pulse: the blocked waiter must still be released
  });
  EXPECT_TRUE(ev.wait_blocking());
  setter.join();
  EXPECT_GE(EintrStorm::count(), kMinSignals);
}

TEST(Eintr, SchedulerLosesAndShortensNothing) {
  Scheduler s;
  WaitableEvent never;  // nobody sets it: its waits time out
  WaitableEvent from_thread;
  int fds[2], quiet[2];  // fds: written by the helper; quiet: never written
  ASSERT_EQ(::pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(quiet, O_NONBLOCK | O_CLOEXEC), 0);
  ThreadPool pool(1);
  EintrStorm storm;  // aimed at this thread, which runs the loop
  ASSERT_TRUE(storm.ok());

  struct Results {
    Clock::duration slept{}, event_timeout{}, fd_timeout{};
    bool event_timed_out = false, fd_timed_out = false, fd_ready = false, released = false;
    int job = 0;
    Clock::duration later_at{};
  } r;
  std::thread helper([&] {
    WaitableEvent delay;
    delay.wait_blocking(40ms);
    from_thread.set();
    delay.wait_blocking(20ms);
    const char byte = 'x';
    (void)!::write(fds[1], &byte, 1);
  });
  const auto t0 = Clock::now();
  s.tasks().call_later(15ms, [&] { r.later_at = Clock::now() - t0; });
  s.run([&]() -> Task<void> {
    auto t = Clock::now();
    co_await coselect::sleep_for(20ms);
    r.slept = Clock::now() - t;

    t = Clock::now();
    const bool set = co_await never.wait(25ms);
    r.event_timed_out = !set;
    r.event_timeout = Clock::now() - t;

    t = Clock::now();
    const bool ready = co_await coselect::readable(quiet[0], 5ms);
    r.fd_timed_out = !ready;
    r.fd_timeout = Clock::now() - t;

    co_await from_thread.wait();
    r.released = true;
    co_await coselect::readable(fds[0]);
    r.fd_ready = true;
    r.job = co_await coselect::run_in_thread(pool, [] { return 9; });
  }());
  helper.join();
  const auto before_run_for = Clock::now();
  s.run_for(40ms);
  const auto ran_for = Clock::now() - before_run_for;

  EXPECT_GE(r.slept, 20ms);
  EXPECT_TRUE(r.event_timed_out);
  EXPECT_GE(r.event_timeout, 25ms);
  EXPECT_TRUE(r.fd_timed_out);
  EXPECT_GE(r.fd_timeout, 5ms);
  EXPECT_TRUE(r.released);
  EXPECT_TRUE(r.fd_ready);
  EXPECT_EQ(r.job, 9);
  EXPECT_GE(r.later_at, 15ms);
  EXPECT_GE(ran_for, 40ms);
  EXPECT_LT(ran_for, 40ms + 2s);
  EXPECT_GE(EintrStorm::count(), kMinSignals);
  for (int fd : {fds[0], fds[1], quiet[0], quiet[1]})
    ::close(fd);
}

// set() is async-signal-safe: from the storm's handler, interrupting the very thread that is
// blocked on the event (wait_blocking), asleep in select() for it (a coroutine wait), or in the
// middle of set()/clear() on it (the pipe reconciliation of an exported event).
WaitableEvent* g_handler_event = nullptr;
long g_handler_set_after = 0;
void set_from_handler(long count) {
  if (count >= g_handler_set_after && g_handler_event != nullptr) g_handler_event->set();
}

TEST(Eintr, SetFromTheSignalHandlerReleasesTheInterruptedThread) {
  WaitableEvent ev;
  g_handler_event = &ev;
  g_handler_set_after = 50;
  {
    EintrStorm storm(100us, &set_from_handler);
    ASSERT_TRUE(storm.ok());
    const auto t0 = Clock::now();
    EXPECT_TRUE(ev.wait_blocking(20s));
    EXPECT_LT(Clock::now() - t0, 10s);
  }
  ev.clear();
  Scheduler s;
  {
    EintrStorm storm(100us, &set_from_handler);  // counts from 0 again
    ASSERT_TRUE(storm.ok());
    bool released = false;
    s.run([&]() -> Task<void> {
      co_await ev.wait();
      released = true;
    }());
    EXPECT_TRUE(released);
  }
  g_handler_event = nullptr;
}

WaitableEvent* g_hammered = nullptr;
void set_hammered(long) {
  if (g_hammered != nullptr) g_hammered->set();
}

TEST(Eintr, SetFromTheHandlerInTheMiddleOfSetAndClearKeepsThePipeInLine) {
  WaitableEvent ev;
  const int fd = ev.fileno();  // exported: every change goes through the pipe
  g_hammered = &ev;
  {
    EintrStorm storm(50us, &set_hammered);
    ASSERT_TRUE(storm.ok());
    const auto until = Clock::now() + 300ms;
    long rounds = 0;
    while (Clock::now() < until) {
      ev.clear();
      ev.set();
      ev.clear();
      ++rounds;
    }
    EXPECT_GT(rounds, 0);
    g_hammered = nullptr;
  }
  // At rest: readable exactly when set, never more than one byte.
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(readable_now(fd), ev.is_set());
    int pending = -1;
    ASSERT_EQ(::ioctl(fd, FIONREAD, &pending), 0);
    EXPECT_LE(pending, 1);
    ev.clear();
  }
  ev.set();
  EXPECT_TRUE(readable_now(fd));
  ev.clear();
  EXPECT_FALSE(readable_now(fd));
}

// =================================================================================================
// 4. fork()
// =================================================================================================
//
// What a child may do with the parent's coselect objects (documented in docs/RELIABILITY.md):
//   * read them: is_set() returns the state at the fork;
//   * destroy them (if they are not running): that closes the child's copies of the pipe fds
//     and frees the child's copies of the frames, and never touches the parent;
//   * exec: both pipe ends are close-on-exec, so nothing leaks into the new program.
// Anything else is unsupported: the child shares each event's pipe with the parent, so set(),
// clear(), wait*(), reading fileno(), running the parent's scheduler or posting to its
// TaskManager could add or drain the parent's byte. New objects made in the child are fully
// its own. The child must not create threads if the parent had several (POSIX; TSan).

Task<int> child_program(WaitableEvent& ev) {
  Scheduler* s = Scheduler::current();
  s->tasks().call_later(1ms, [&] { ev.set(); });
  const bool got = co_await ev.wait(5s);
  co_await coselect::sleep_for(1ms);
  co_return got ? 42 : -1;
}

TEST(Fork, TheChildCanMakeAndUseNewEventsAndSchedulers) {
  // The parent: live events (one set and exported), a scheduler that ran and stopped with
  // coroutines still waiting.
  WaitableEvent set_event;
  set_event.set();
  const int set_fd = set_event.fileno();
  WaitableEvent waited;
  Scheduler parent;
  int released = 0;
  auto waiter = [&]() -> Task<void> {
    co_await waited.wait();
    ++released;
  };
  parent.spawn(waiter());
  parent.spawn(waiter());
  parent.run_for(1ms);
  ASSERT_EQ(released, 0);

  const int status = in_child([] {
    CHILD_CHECK(Scheduler::current() == nullptr);
    WaitableEvent ev;
    const int fd = ev.fileno();
    CHILD_CHECK(!readable_now(fd));
    ev.set();
    CHILD_CHECK(readable_now(fd) && ev.wait_blocking(0ms));
    ev.clear();
    CHILD_CHECK(!readable_now(fd) && !ev.wait_blocking(1ms));
    Scheduler s;
    CHILD_CHECK(s.run(child_program(ev)) == 42);
    TimeMachine tm;
    Scheduler virtual_s(tm);
    bool slept = false;
    virtual_s.run([&]() -> Task<void> {
      co_await coselect::sleep_for(std::chrono::hours(5));
      slept = true;
    }());
    CHILD_CHECK(slept);
    return true;
  });
  EXPECT_EQ(status, 0);

  // The parent's objects are untouched.
  EXPECT_TRUE(set_event.is_set());
  EXPECT_TRUE(readable_now(set_fd));
  waited.set();
  parent.run_for(1ms);
  EXPECT_EQ(released, 2);
}

TEST(Fork, TheChildMayReadAndDestroyInheritedObjectsWithoutDisturbingTheParent) {
  auto set_event = std::make_unique<WaitableEvent>();
  set_event->set();
  const int set_fd = set_event->fileno();
  auto clear_event = std::make_unique<WaitableEvent>();
  const int clear_fd = clear_event->fileno();
  auto parent = std::make_unique<Scheduler>();
  int released = 0;
  auto waiter = [&]() -> Task<void> {
    co_await clear_event->wait();
    ++released;
  };
  parent->spawn(waiter());
  parent->tasks().call_later(1h, [] {});
  parent->run_for(1ms);

  const int status = in_child([&] {
    CHILD_CHECK(set_event->is_set());
    CHILD_CHECK(!clear_event->is_set());
    parent.reset();  // destroys the child's copy of the waiting frame
    set_event.reset();
    clear_event.reset();
    CHILD_CHECK(::fcntl(set_fd, F_GETFD) == -1 && errno == EBADF);  // the child's copies closed
    CHILD_CHECK(::fcntl(clear_fd, F_GETFD) == -1 && errno == EBADF);
    return true;
  });
  EXPECT_EQ(status, 0);

  // The parent's pipes and state are as they were.
  EXPECT_TRUE(readable_now(set_fd));
  EXPECT_FALSE(readable_now(clear_fd));
  set_event->clear();
  EXPECT_FALSE(readable_now(set_fd));
  clear_event->set();
  EXPECT_TRUE(readable_now(clear_fd));
  parent->run_for(1ms);
  EXPECT_EQ(released, 1);
}

// Both ends of an event's pipe are close-on-exec (and non-blocking): an exec'd child has
// neither. The write end is found through /proc (the pipe with the read end's inode).
TEST(Fork, PipesAreCloseOnExec) {
  WaitableEvent ev;
  const int read_fd = ev.fileno();
  auto link_of = [](int fd) {
    char path[64], target[256] = {};
    std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    const ssize_t n = ::readlink(path, target, sizeof target - 1);
    return n > 0 ? std::string(target, static_cast<std::size_t>(n)) : std::string();
  };
  const std::string pipe_name = link_of(read_fd);
  ASSERT_EQ(pipe_name.rfind("pipe:", 0), 0u) << pipe_name;
  int write_fd = -1;
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    while (const dirent* e = ::readdir(dir)) {
      const int fd = std::atoi(e->d_name);
      if (e->d_name[0] != '.' && fd != read_fd && link_of(fd) == pipe_name) write_fd = fd;
    }
    ::closedir(dir);
  }
  ASSERT_GE(write_fd, 0) << "the write end was not found";
  for (int fd : {read_fd, write_fd}) {
    EXPECT_NE(::fcntl(fd, F_GETFD) & FD_CLOEXEC, 0) << fd;
    EXPECT_NE(::fcntl(fd, F_GETFL) & O_NONBLOCK, 0) << fd;
  }

  std::fflush(nullptr);
  const std::string script = "test ! -e /proc/self/fd/" + std::to_string(read_fd) +
                             " && test ! -e /proc/self/fd/" + std::to_string(write_fd);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", script.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ASSERT_GT(pid, 0);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "an event's pipe survived exec";
}

// =================================================================================================
// 5. Regressions: library bugs found by the soak and the fuzzer (fixed in fba200a)
// =================================================================================================

// Was BUG (found by the soak: "a coroutine wait timed out early"): `co_await ev.wait(timeout)`
// on an event that is set when the wait begins does not suspend (await_ready() sees is_set()),
// but await_resume() read is_set() again instead of remembering what await_ready() saw. A
// clear() by another thread between the two made the wait return false: a "timeout" after 0 s
// of a positive timeout, for a waiter that arrived while the event was set. Here the two calls
// are made by hand, with the clear() between them where another thread's would land.
COSELECT_TEST(Regression, TimedWaitThatFindsTheEventSetAnswersTrueEvenIfClearedAtOnce) {
  WaitableEvent ev;
  ev.set();
  auto awaiter = ev.wait(1s);
  CO_ASSERT_TRUE(awaiter.await_ready());  // set: the coroutine does not suspend
  ev.clear();                             // another thread's clear() lands here
  EXPECT_TRUE(awaiter.await_resume()) << "a 1 s wait on a set event reported a timeout at once";
  co_return;
}

// Was BUG (found by the fuzzer, fuzz/corpus/seed-09-destroy-event.bin): destroying an event
// right after set(), before the loop had looked, resumed the coroutines that set() had released
// with operation_canceled instead of normally.
TEST(Regression, CoroutinesReleasedBySetResumeNormallyWhenTheEventIsDestroyedAtOnce) {
  Scheduler s;
  auto ev = std::make_unique<WaitableEvent>();
  int released = 0, canceled = 0;
  auto waiter = [&](bool timed) -> Task<void> {
    try {
      if (timed) {
        const bool ok = co_await ev->wait(1h);
        if (ok) ++released;
      } else {
        co_await ev->wait();
        ++released;
      }
    } catch (const std::system_error&) {
      ++canceled;
    }
  };
  s.spawn(waiter(false));
  s.spawn(waiter(true));
  s.run_for(0ms);  // both wait now
  ev->set();
  ev->clear();  // a pulse, even
  ev.reset();
  s.run_for(0ms);
  EXPECT_EQ(released, 2);
  EXPECT_EQ(canceled, 0);
}

}  // namespace

#endif  // !defined(_WIN32)
