// Tests of coselect::Scheduler (DESIGN.md §1, §2 "Scheduler", "Fine print", §5 virtual time).
//
// Sections
//   0. Helpers
//   1. run(task), run(), stop(): return values, rethrow, wake-ups, stop before run
//   2. Scheduler::current()
//   3. spawn(): never inline, FIFO, cross-thread, before run, failure policy
//   4. Fairness: a yield_now() loop starves nothing; round-robin ready queue
//   5. Idle costs ~0 CPU
//   6. Destroying a scheduler destroys the frames it owns
//   7. Several schedulers, one per thread, share no state
//   8. Awaiting coselect awaitables where no scheduler runs throws std::logic_error
//   9. run_for / run_until: real time (never early) and virtual time (inclusive limits)
//  10. Dispatcher (asyncore view)
//  11. resume_on(other scheduler)
//
// Rules: coroutines never use ASSERT_* (it expands to `return`); they record into variables of
// the test body, which asserts after run*() returns. No sleep synchronises anything: threads meet
// through Signal (mutex + condition variable), joins, or by *observing* (/proc) that the loop
// thread is blocked in select(). Timing bounds are one-sided and generous.

#if defined(_WIN32)
#include <gtest/gtest.h>

TEST(SchedulerOnWindows, PosixOnly) {
  GTEST_SKIP() << "pipes as fds, POSIX select() and /proc thread probes: POSIX only (the Windows "
                  "loop is covered by test_windows.cpp and the portable test files)";
}
#else
#include <fcntl.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <barrier>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <coselect.hpp>
#include "support/fixtures.hpp"
#include "support/sanitizers.hpp"
#include "support/sync.hpp"
#include "support/thread_probe.hpp"

namespace {

// =================================================================================================
// 0. Helpers
// =================================================================================================

using coselect::Scheduler;
using coselect::Task;
using coselect::WaitableEvent;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

using coselect_test::is_reactor_wait;
using coselect_test::kSanitized;
using coselect_test::LifeCount;
using coselect_test::Pipe;
using coselect_test::read_task_syscall;
using coselect_test::Tracked;

// How late something may happen (never early): the machine is shared and noisy.
constexpr std::chrono::milliseconds kLate = kSanitized ? 6000ms : 2000ms;
// Long enough that reaching it means "lost wake-up", short enough to fail before the hang guard.
constexpr std::chrono::seconds kGiveUp = 10s;
// CPU an idle second may cost (a spinning loop would burn ~1 s).
constexpr double kIdleCpuSeconds = 0.1;

// The kernel's id of the calling thread. Used instead of std::this_thread::get_id() inside
// coroutines: pthread_self() is declared __attribute__((const)), and clang may reuse a value
// computed before a co_await after the coroutine resumed on another thread
// (llvm/llvm-project#47177); syscall() is opaque to the optimiser.
pid_t current_tid() noexcept {
  return static_cast<pid_t>(::syscall(SYS_gettid));
}

double process_cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

template <class F>
Clock::duration elapsed(F&& f) {
  const auto start = Clock::now();
  f();
  return Clock::now() - start;
}

long long ms(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

// A one-shot flag threads wait for, with a timeout (so a broken library fails, not hangs).
class Signal {
 public:
  void set() {
    {
      std::lock_guard lock(mutex_);
      set_ = true;
    }
    cv_.notify_all();
  }
  bool wait_for(std::chrono::milliseconds timeout = kGiveUp) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [this] { return set_; });
  }
  bool is_set() {
    std::lock_guard lock(mutex_);
    return set_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool set_ = false;
};

// ---- observing that a thread is blocked in select() -------------------------------------------

bool can_observe_syscalls() {
  static const bool ok = [] {
    long nr = 0;
    char path[64];
    std::snprintf(path, sizeof path, "/proc/self/task/%d/syscall", static_cast<int>(current_tid()));
    const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ::close(fd);
    (void)nr;
    return true;
  }();
  return ok;
}

bool in_reactor(pid_t tid) {
  long nr = -1;
  return read_task_syscall(tid, nr) && is_reactor_wait(nr);
}

// Waits until thread `tid` is blocked in select() (the loop is idle), so that what the caller
// does next has to wake it. Without /proc, sleeps a little: the callers are correct without the
// observation, it only makes the interesting interleaving likely.
void await_in_reactor(pid_t tid) {
  if (!can_observe_syscalls()) {
    std::this_thread::sleep_for(50ms);
    return;
  }
  const auto deadline = Clock::now() + kGiveUp;
  while (!in_reactor(tid)) {
    if (Clock::now() > deadline) {
      ADD_FAILURE() << "thread " << tid << " never blocked in its backend's wait";
      return;
    }
    std::this_thread::sleep_for(1ms);  // polling an observation, not synchronising
  }
}

// Runs s.run() on its own thread; stops and joins on destruction.
class LoopThread {
 public:
  explicit LoopThread(Scheduler& s) : scheduler_(s) {
    thread_ = std::thread([this] {
      tid_.store(current_tid());
      started_.set();
      try {
        scheduler_.run();
      } catch (...) {
        error_ = std::current_exception();
      }
    });
    started_.wait_for();
  }
  LoopThread(const LoopThread&) = delete;
  LoopThread& operator=(const LoopThread&) = delete;
  ~LoopThread() { stop_and_join(); }

  void stop_and_join() {
    if (thread_.joinable()) {
      scheduler_.stop();
      thread_.join();
    }
  }
  pid_t tid() const { return tid_.load(); }
  std::exception_ptr error() const { return error_; }

 private:
  Scheduler& scheduler_;
  std::thread thread_;
  std::atomic<pid_t> tid_{0};
  Signal started_;
  std::exception_ptr error_;
};

// Stops a scheduler if the test has not finished within `timeout`: turns a hang into a failure.
class Deadman {
 public:
  Deadman(Scheduler& s, std::chrono::milliseconds timeout = kGiveUp)
      : thread_([this, &s, timeout] {
          std::unique_lock lock(mutex_);
          if (!cv_.wait_for(lock, timeout, [this] { return done_; })) {
            fired_ = true;
            s.stop();
          }
        }) {}
  ~Deadman() {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  bool fired() {
    std::lock_guard lock(mutex_);
    return fired_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  bool fired_ = false;
  std::thread thread_;
};

struct Boom : std::runtime_error {
  explicit Boom(int c) : std::runtime_error("boom " + std::to_string(c)), code(c) {}
  int code;
};

// ---- coroutines used by several tests ---------------------------------------------------------

Task<int> answer() {
  co_return 42;
}

Task<int> value_after_turns(int turns, int value) {
  for (int i = 0; i < turns; ++i)
    co_await coselect::yield_now();
  co_await coselect::sleep_for(1ms);
  co_return value;
}

Task<void> throw_boom(int code) {
  co_await coselect::yield_now();
  throw Boom(code);
}

Task<int> throw_boom_int(int code) {
  co_await coselect::yield_now();
  if (code >= 0) throw Boom(code);
  co_return 0;
}

Task<void> stop_scheduler(Scheduler& s, int turns = 0) {
  for (int i = 0; i < turns; ++i)
    co_await coselect::yield_now();
  s.stop();
}

Task<void> set_flag(std::atomic<bool>& flag) {
  flag.store(true);
  co_return;
}

Task<void> wait_event(WaitableEvent& ev, LifeCount& locals, std::atomic<bool>& resumed) {
  Tracked local(locals);
  co_await ev.wait();
  resumed.store(true);
}

Task<void> sleep_long(LifeCount& locals, std::atomic<bool>& resumed) {
  Tracked local(locals);
  co_await coselect::sleep_for(1h);
  resumed.store(true);
}

Task<void> wait_readable(int fd, LifeCount& locals, std::atomic<bool>& resumed) {
  Tracked local(locals);
  co_await coselect::readable(fd);
  resumed.store(true);
}

Task<void> await_child(Task<void> child, LifeCount& locals) {
  Tracked local(locals);
  co_await std::move(child);
}

Task<void> yield_forever(LifeCount& locals) {
  Tracked local(locals);
  for (;;)
    co_await coselect::yield_now();
}

// =================================================================================================
// 1. run(task), run(), stop()
// =================================================================================================

TEST(SchedulerRun, RunTaskReturnsTheValue) {
  Scheduler s;
  EXPECT_EQ(s.run(value_after_turns(3, 17)), 17);
  EXPECT_EQ(s.run(answer()), 42);  // reusable
}

TEST(SchedulerRun, RunTaskRethrowsTheTaskException) {
  Scheduler s;
  try {
    (void)s.run(throw_boom_int(7));
    ADD_FAILURE() << "run() returned";
  } catch (const Boom& e) {
    EXPECT_EQ(e.code, 7);
  }
  EXPECT_THROW(s.run(throw_boom(8)), Boom);
  EXPECT_EQ(s.run(answer()), 42) << "the scheduler stays usable after a rethrow";
}

TEST(SchedulerRun, EmptyTasksAreRejected) {
  Scheduler s;
  EXPECT_THROW(s.run(Task<int>{}), std::invalid_argument);
  EXPECT_THROW(s.spawn(Task<void>{}), std::invalid_argument);
}

Task<void> tick_then_stop(Scheduler& s, std::vector<int>& log) {
  for (int i = 0; i < 3; ++i) {
    co_await coselect::sleep_for(5ms);
    log.push_back(i);
  }
  s.stop();
  log.push_back(99);
}

TEST(SchedulerRun, RunReturnsOnlyAfterStop) {
  Scheduler s;
  std::vector<int> log;
  s.spawn(tick_then_stop(s, log));
  s.run();
  const std::vector<int> expected = {0, 1, 2, 99};
  EXPECT_EQ(log, expected) << "run() must keep going (through idle sleeps) until stop()";
}

Task<void> run_nested(Scheduler& s, std::string& what) {
  try {
    s.run_for(1ms);
    what = "no exception";
  } catch (const std::logic_error& e) {
    what = e.what();
  }
  co_return;
}

TEST(SchedulerRun, RunInsideItsOwnLoopThrowsLogicError) {
  Scheduler s;
  std::string what;
  s.run(run_nested(s, what));
  EXPECT_NE(what, "no exception");
  EXPECT_FALSE(what.empty());
}

// stop() from another thread wakes a loop blocked in select(); `setup` gives it something (or
// nothing) to wait for.
void check_stop_from_thread_wakes_blocked_loop(const std::function<void(Scheduler&)>& setup) {
  Scheduler s;
  setup(s);
  const pid_t loop_tid = current_tid();
  std::atomic<Clock::rep> stopped_at{0};
  std::thread stopper([&] {
    await_in_reactor(loop_tid);
    stopped_at.store(Clock::now().time_since_epoch().count());
    s.stop();
  });
  Deadman deadman(s, 30s);  // only if stop() is lost: then the test fails instead of hanging
  s.run();
  const auto returned = Clock::now();
  stopper.join();
  EXPECT_FALSE(deadman.fired()) << "stop() from another thread did not wake the loop";
  const auto latency = returned - Clock::time_point(Clock::duration(stopped_at.load()));
  EXPECT_LT(latency, kLate) << ms(latency) << " ms";
}

TEST(SchedulerStop, FromAnotherThreadWakesAnIdleLoop) {
  check_stop_from_thread_wakes_blocked_loop([](Scheduler&) {});
}

TEST(SchedulerStop, FromAnotherThreadWakesALoopWaitingOnAFarTimer) {
  LifeCount locals;
  std::atomic<bool> resumed{false};
  check_stop_from_thread_wakes_blocked_loop(
      [&](Scheduler& s) { s.spawn(sleep_long(locals, resumed)); });
  EXPECT_FALSE(resumed);
  EXPECT_EQ(locals.alive(), 0);
}

TEST(SchedulerStop, FromAnotherThreadWakesALoopWaitingOnFdAndEvent) {
  WaitableEvent ev;
  Pipe silent;
  LifeCount locals;
  std::atomic<bool> resumed{false};
  check_stop_from_thread_wakes_blocked_loop([&](Scheduler& s) {
    s.spawn(wait_event(ev, locals, resumed));
    s.spawn(wait_readable(silent.read_end, locals, resumed));
  });
  EXPECT_FALSE(resumed);
}

TEST(SchedulerStop, RequestedBeforeRunMakesTheNextRunReturnPromptly) {
  Scheduler s;
  LifeCount locals;
  std::atomic<bool> resumed{false};
  s.spawn(sleep_long(locals, resumed));
  s.run_for(0ms);  // the sleeper starts: a timer is pending an hour away
  ASSERT_EQ(locals.alive(), 1);

  s.stop();
  EXPECT_LT(elapsed([&] { s.run(); }), kLate) << "run() after stop() must not block";
  s.stop();
  EXPECT_LT(elapsed([&] { s.run_for(1h); }), kLate) << "run_for() after stop() must not block";
  s.stop();
  EXPECT_LT(elapsed([&] { s.run_until(s.now() + 1h); }), kLate);

  // Each stop() is consumed by the run it stopped: the next run_for lasts its full duration.
  EXPECT_GE(elapsed([&] { s.run_for(100ms); }), 100ms);
  EXPECT_FALSE(resumed);
}

Task<int> started_then_sleep(std::atomic<bool>& started, LifeCount& locals) {
  Tracked local(locals);
  started.store(true);
  co_await coselect::sleep_for(1h);
  co_return 1;
}

TEST(SchedulerStop, RequestedBeforeRunTaskMakesItThrowRuntimeError) {
  LifeCount locals;
  std::atomic<bool> started{false};
  {
    Scheduler s;
    s.stop();
    const auto took = elapsed(
        [&] { EXPECT_THROW(s.run(started_then_sleep(started, locals)), std::runtime_error); });
    EXPECT_LT(took, kLate);
    // The one iteration ran the coroutines that were ready when it began: the root.
    EXPECT_TRUE(started);
    EXPECT_EQ(locals.alive(), 1) << "the unfinished task stays with the scheduler";
  }
  EXPECT_EQ(locals.alive(), 0) << "destroying the scheduler destroys the abandoned task";
}

Task<int> wait_then_return(WaitableEvent& ev, LifeCount& locals, std::atomic<bool>& finished,
                           int code) {
  Tracked local(locals);
  co_await ev.wait();
  finished.store(true);
  if (code >= 0) throw Boom(code);
  co_return 5;
}

// Observed (and documented in scheduler.hpp): run(task) stopped early throws runtime_error; the
// task is not destroyed but adopted like a spawned task, and finishes on a later run*(); its
// result is dropped. Nothing leaks either way (this runs under ASan/LSan too).
TEST(SchedulerStop, StoppedRunTaskThrowsAndTheTaskFinishesOnALaterRun) {
  WaitableEvent ev;
  LifeCount locals;
  std::atomic<bool> finished{false};
  Scheduler s;
  s.spawn(stop_scheduler(s, 1));
  EXPECT_THROW(s.run(wait_then_return(ev, locals, finished, -1)), std::runtime_error);
  EXPECT_FALSE(finished);
  EXPECT_EQ(locals.alive(), 1);
  EXPECT_EQ(Scheduler::current(), nullptr);

  ev.set();
  s.run_for(50ms);
  EXPECT_TRUE(finished) << "the abandoned task should finish on the next run";
  EXPECT_EQ(locals.alive(), 0) << "and its frame be freed when it does";
}

// Observed: an abandoned task that later fails is treated like a failed spawned task: the run
// during which it fails rethrows its exception (never swallowed).
TEST(SchedulerStop, AbandonedRunTaskThatLaterThrowsIsRethrownByTheNextRun) {
  WaitableEvent ev;
  LifeCount locals;
  std::atomic<bool> finished{false};
  Scheduler s;
  s.spawn(stop_scheduler(s, 1));
  EXPECT_THROW(s.run(wait_then_return(ev, locals, finished, 3)), std::runtime_error);
  ev.set();
  EXPECT_THROW(s.run_for(1s), Boom);
  EXPECT_TRUE(finished);
  EXPECT_EQ(locals.alive(), 0);
}

TEST(SchedulerStop, AbandonedRunTaskIsDestroyedWithTheScheduler) {
  WaitableEvent ev;  // outlives the scheduler
  LifeCount locals;
  std::atomic<bool> finished{false};
  {
    Scheduler s;
    s.spawn(stop_scheduler(s, 1));
    EXPECT_THROW(s.run(wait_then_return(ev, locals, finished, -1)), std::runtime_error);
    EXPECT_EQ(locals.alive(), 1);
  }
  EXPECT_EQ(locals.alive(), 0);
  EXPECT_FALSE(finished);
}

// =================================================================================================
// 2. Scheduler::current()
// =================================================================================================

Task<void> spawned_records_current(std::vector<Scheduler*>& seen) {
  seen.push_back(Scheduler::current());
  co_return;
}

Task<int> record_current(Scheduler& s, std::vector<Scheduler*>& seen) {
  seen.push_back(Scheduler::current());
  co_await coselect::yield_now();
  seen.push_back(Scheduler::current());
  co_await coselect::sleep_for(1ms);
  seen.push_back(Scheduler::current());
  s.spawn(spawned_records_current(seen));
  co_await coselect::yield_now();
  co_await coselect::yield_now();
  co_return 0;
}

TEST(SchedulerCurrent, NullOutsideRunSelfInsideRestoredAfter) {
  EXPECT_EQ(Scheduler::current(), nullptr);
  Scheduler s;
  EXPECT_EQ(Scheduler::current(), nullptr) << "constructing is not running";
  std::vector<Scheduler*> seen;
  s.run(record_current(s, seen));
  ASSERT_EQ(seen.size(), 4u);
  for (Scheduler* p : seen)
    EXPECT_EQ(p, &s);
  EXPECT_EQ(Scheduler::current(), nullptr) << "restored after run(task)";

  EXPECT_THROW(s.run(throw_boom(1)), Boom);
  EXPECT_EQ(Scheduler::current(), nullptr) << "restored after run(task) threw";

  s.run_for(1ms);
  EXPECT_EQ(Scheduler::current(), nullptr) << "restored after run_for";
  s.stop();
  s.run();
  EXPECT_EQ(Scheduler::current(), nullptr) << "restored after run";
}

Task<void> run_other_inside(Scheduler& other, std::vector<Scheduler*>& seen) {
  seen.push_back(Scheduler::current());
  std::vector<Scheduler*> inner;
  other.run(record_current(other, inner));
  for (Scheduler* p : inner)
    seen.push_back(p);
  seen.push_back(Scheduler::current());
  co_return;
}

TEST(SchedulerCurrent, NestedRunOfAnotherSchedulerRestoresTheOuterOne) {
  Scheduler a, b;
  std::vector<Scheduler*> seen;
  a.run(run_other_inside(b, seen));
  const std::vector<Scheduler*> expected = {&a, &b, &b, &b, &b, &a};
  EXPECT_EQ(seen, expected);
  EXPECT_EQ(Scheduler::current(), nullptr);
}

Task<int> count_foreign_currents(Scheduler* self, int rounds) {
  int wrong = 0;
  for (int i = 0; i < rounds; ++i) {
    if (Scheduler::current() != self) ++wrong;
    if (i % 2 == 0) {
      co_await coselect::yield_now();
    } else {
      co_await coselect::sleep_for(100us);
    }
  }
  co_return wrong;
}

TEST(SchedulerCurrent, EachThreadSeesItsOwnScheduler) {
  constexpr int kThreads = 4;
  coselect_test::barrier start(kThreads + 1);
  std::vector<int> wrong(kThreads, -1);
  std::vector<Scheduler*> after(kThreads, nullptr);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      Scheduler s;
      start.arrive_and_wait();
      wrong[i] = s.run(count_foreign_currents(&s, 200));
      after[i] = Scheduler::current();
    });
  }
  start.arrive_and_wait();
  EXPECT_EQ(Scheduler::current(), nullptr) << "the main thread runs no scheduler";
  for (auto& t : threads)
    t.join();
  for (int i = 0; i < kThreads; ++i) {
    EXPECT_EQ(wrong[i], 0) << "thread " << i;
    EXPECT_EQ(after[i], nullptr) << "thread " << i;
  }
}

// =================================================================================================
// 3. spawn()
// =================================================================================================

TEST(SchedulerSpawn, IsNotInlineFromOutsideTheLoop) {
  Scheduler s;
  std::atomic<bool> ran{false};
  s.spawn(set_flag(ran));
  EXPECT_FALSE(ran) << "spawn() must not run the body";
  s.spawn(stop_scheduler(s));
  s.run();
  EXPECT_TRUE(ran);
}

Task<void> spawn_and_look(Scheduler& s, std::atomic<bool>& child_ran, std::vector<bool>& looks) {
  s.spawn(set_flag(child_ran));
  looks.push_back(child_ran.load());  // right after spawn() returned
  co_await coselect::yield_now();
  co_await coselect::yield_now();
  looks.push_back(child_ran.load());
}

TEST(SchedulerSpawn, IsNotInlineFromACoroutineOnTheLoop) {
  Scheduler s;
  std::atomic<bool> child_ran{false};
  std::vector<bool> looks;
  s.run(spawn_and_look(s, child_ran, looks));
  const std::vector<bool> expected = {false, true};
  EXPECT_EQ(looks, expected);
}

Task<void> append_id(std::vector<int>& order, int id) {
  order.push_back(id);
  co_return;
}

Task<void> spawn_range_then_wait(Scheduler& s, std::vector<int>& order, int from, int to) {
  for (int i = from; i < to; ++i)
    s.spawn(append_id(order, i));
  for (int i = 0; i < 10 && order.size() < static_cast<std::size_t>(to); ++i)
    co_await coselect::yield_now();
}

TEST(SchedulerSpawn, SpawnedFromOutsideStartInSpawnOrder) {
  Scheduler s;
  std::vector<int> order;
  for (int i = 0; i < 50; ++i)
    s.spawn(append_id(order, i));
  s.spawn(stop_scheduler(s, 2));
  s.run();
  std::vector<int> expected(50);
  for (int i = 0; i < 50; ++i)
    expected[i] = i;
  EXPECT_EQ(order, expected);
}

TEST(SchedulerSpawn, SpawnedFromTheLoopStartInSpawnOrder) {
  Scheduler s;
  std::vector<int> order;
  s.run(spawn_range_then_wait(s, order, 0, 50));
  std::vector<int> expected(50);
  for (int i = 0; i < 50; ++i)
    expected[i] = i;
  EXPECT_EQ(order, expected);
}

// BUG: tasks spawned before run(task) start *after* tasks the root spawns in its first step
// (observed order 5..9, 0..4).
// DESIGN "Fine print": "spawned tasks start in spawn order". Suspected cause: drive() pushes
// the root (start()) and runs it before absorb_posted_work() moves the pre-run spawns from
// spawn_inbox_ to ready_, while spawn() on the loop thread appends to ready_ directly.
// Proposed fix: call absorb_posted_work() at the top of drive(), before start().
TEST(SchedulerSpawn, SpawnedBeforeRunStartBeforeThoseTheRootSpawnsLater) {
  Scheduler s;
  std::vector<int> order;
  for (int i = 0; i < 5; ++i)
    s.spawn(append_id(order, i));
  s.run(spawn_range_then_wait(s, order, 5, 10));
  const std::vector<int> expected = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  EXPECT_EQ(order, expected);
}

Task<void> record_thread_and_stop(Scheduler& s, pid_t& where) {
  where = current_tid();
  s.stop();
  co_return;
}

TEST(SchedulerSpawn, FromAnotherThreadWakesABlockedLoop) {
  Scheduler s;
  pid_t where = 0;
  const pid_t loop_tid = current_tid();
  std::thread spawner([&] {
    await_in_reactor(loop_tid);
    s.spawn(record_thread_and_stop(s, where));
  });
  Deadman deadman(s, 30s);
  s.run();
  spawner.join();
  EXPECT_FALSE(deadman.fired()) << "a spawn from another thread did not wake the loop";
  EXPECT_EQ(where, current_tid()) << "spawned tasks run on the loop thread";
}

Task<void> record_thread(pid_t& where, std::atomic<int>& count) {
  where = current_tid();
  ++count;
  co_return;
}

TEST(SchedulerSpawn, BeforeRunWaitsForRun) {
  Scheduler s;
  pid_t here = 0, there = 0;
  std::atomic<int> count{0};
  s.spawn(record_thread(here, count));
  std::thread([&] { s.spawn(record_thread(there, count)); }).join();
  EXPECT_EQ(count, 0) << "nothing runs before run*()";
  s.spawn(stop_scheduler(s, 1));
  s.run();
  EXPECT_EQ(count, 2);
  EXPECT_EQ(here, current_tid());
  EXPECT_EQ(there, current_tid()) << "queued from another thread, run on the loop";
}

TEST(SchedulerSpawn, EscapingExceptionMakesRunRethrow) {
  Scheduler s;
  s.spawn(throw_boom(1));
  try {
    s.run();
    ADD_FAILURE() << "run() returned";
  } catch (const Boom& e) {
    EXPECT_EQ(e.code, 1);
  }
}

TEST(SchedulerSpawn, EscapingExceptionMakesRunTaskRethrow) {
  WaitableEvent ev;  // never set
  LifeCount locals;
  std::atomic<bool> finished{false};
  {
    Scheduler s;
    s.spawn(throw_boom(2));
    try {
      (void)s.run(wait_then_return(ev, locals, finished, -1));
      ADD_FAILURE() << "run(task) returned";
    } catch (const Boom& e) {
      EXPECT_EQ(e.code, 2);
    }
    EXPECT_EQ(locals.alive(), 1);
  }
  EXPECT_EQ(locals.alive(), 0);
}

TEST(SchedulerSpawn, ExceptionHandlerReplacesThePolicy) {
  Scheduler s;
  std::vector<std::string> handled;
  pid_t handler_thread = 0;
  s.set_exception_handler([&](std::exception_ptr e) {
    handler_thread = current_tid();
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      handled.push_back(x.what());
    }
  });
  s.spawn(throw_boom(1));
  s.spawn(throw_boom(2));
  s.spawn(stop_scheduler(s, 5));
  s.run();  // must not throw: the handler took both failures
  const std::vector<std::string> expected = {"boom 1", "boom 2"};
  EXPECT_EQ(handled, expected);
  EXPECT_EQ(handler_thread, current_tid());
  EXPECT_EQ(s.run(value_after_turns(1, 3)), 3) << "the loop continues after handled failures";
}

TEST(SchedulerSpawn, ExceptionHandlerThatThrowsMakesRunRethrowItsException) {
  Scheduler s;
  s.set_exception_handler([](std::exception_ptr) { throw std::out_of_range("from handler"); });
  s.spawn(throw_boom(1));
  EXPECT_THROW(s.run(), std::out_of_range);
}

TEST(SchedulerSpawn, SeveralFailuresAreEachRethrownBySuccessiveRuns) {
  Scheduler s;
  for (int i = 1; i <= 4; ++i)
    s.spawn(throw_boom(i));
  std::vector<int> codes;
  auto collect = [&](auto&& run_once) {
    try {
      run_once();
      codes.push_back(0);
    } catch (const Boom& e) {
      codes.push_back(e.code);
    }
  };
  collect([&] { s.run(); });
  collect([&] { s.run_for(1s); });
  collect([&] { s.run_until(s.now() + 1s); });
  collect([&] { (void)s.run(value_after_turns(3, 0)); });
  collect([&] { s.run_for(20ms); });  // nothing left: returns normally
  const std::vector<int> expected = {1, 2, 3, 4, 0};
  EXPECT_EQ(codes, expected);
}

// =================================================================================================
// 4. Fairness
// =================================================================================================

// Yields until `done` or until the give-up time; returns the number of spins.
Task<long> spin_until(std::atomic<bool>& done, WaitableEvent* set_on_first_spin) {
  const auto give_up = Clock::now() + kGiveUp;
  long spins = 0;
  while (!done.load() && Clock::now() < give_up) {
    ++spins;
    co_await coselect::yield_now();
    if (spins == 1 && set_on_first_spin != nullptr) set_on_first_spin->set();
  }
  co_return spins;
}

Task<void> sleep_then_flag(std::atomic<bool>& done) {
  co_await coselect::sleep_for(20ms);
  done.store(true);
}

Task<void> readable_then_flag(int fd, std::atomic<bool>& done) {
  co_await coselect::readable(fd);
  done.store(true);
}

Task<void> event_then_flag(WaitableEvent& ev, std::atomic<bool>& done) {
  co_await ev.wait();
  done.store(true);
}

TEST(SchedulerFairness, YieldLoopDoesNotStarveATimer) {
  Scheduler s;
  std::atomic<bool> done{false};
  s.spawn(sleep_then_flag(done));
  const auto took = elapsed([&] { (void)s.run(spin_until(done, nullptr)); });
  EXPECT_TRUE(done) << "the timer never fired while a coroutine yielded in a loop";
  EXPECT_LT(took, 20ms + kLate);
}

TEST(SchedulerFairness, YieldLoopDoesNotStarveAnFdWaiter) {
  Scheduler s;
  Pipe p;
  p.put();
  std::atomic<bool> done{false};
  s.spawn(readable_then_flag(p.read_end, done));
  const long spins = s.run(spin_until(done, nullptr));
  EXPECT_TRUE(done) << "the fd waiter never resumed while a coroutine yielded in a loop";
  EXPECT_LT(spins, 1000);
}

TEST(SchedulerFairness, YieldLoopDoesNotStarveAnEventWaiter) {
  Scheduler s;
  WaitableEvent ev;
  std::atomic<bool> done{false};
  s.spawn(event_then_flag(ev, done));
  const long spins = s.run(spin_until(done, &ev));
  EXPECT_TRUE(done) << "the event waiter never resumed while a coroutine yielded in a loop";
  EXPECT_LT(spins, 1000);
}

TEST(SchedulerFairness, YieldLoopDoesNotStarveWorkFromOtherThreads) {
  Scheduler s;
  std::atomic<bool> done{false};
  std::atomic<bool> spinning{false};
  s.spawn([](std::atomic<bool>& flag) -> Task<void> {
    flag.store(true);
    co_return;
  }(spinning));
  std::thread other([&] {
    while (!spinning.load())  // the spinner's sibling ran: the loop is busy yielding
      std::this_thread::sleep_for(1ms);
    s.spawn(set_flag(done));
  });
  (void)s.run(spin_until(done, nullptr));
  other.join();
  EXPECT_TRUE(done) << "a cross-thread spawn never ran while a coroutine yielded in a loop";
}

TEST(SchedulerFairness, StopFromAnotherThreadEndsAYieldLoop) {
  Scheduler s;
  LifeCount locals;
  std::atomic<bool> spinning{false};
  s.spawn(yield_forever(locals));
  s.spawn([](std::atomic<bool>& flag) -> Task<void> {
    co_await coselect::yield_now();
    flag.store(true);  // the spinner has been through the queue at least once
  }(spinning));
  std::atomic<Clock::rep> stopped_at{0};
  std::thread stopper([&] {
    while (!spinning.load())
      std::this_thread::sleep_for(1ms);
    stopped_at.store(Clock::now().time_since_epoch().count());
    s.stop();
  });
  Deadman deadman(s, 30s);
  s.run();
  const auto latency = Clock::now() - Clock::time_point(Clock::duration(stopped_at.load()));
  stopper.join();
  EXPECT_FALSE(deadman.fired()) << "stop() was lost while a coroutine yielded in a loop";
  EXPECT_LT(latency, kLate);
}

Task<void> round_robin(int id, std::vector<int>& log, std::atomic<int>& remaining, Scheduler& s) {
  for (int i = 0; i < 4; ++i) {
    log.push_back(id);
    co_await coselect::yield_now();
  }
  if (--remaining == 0) s.stop();
}

TEST(SchedulerFairness, ReadyQueueIsRoundRobin) {
  Scheduler s;
  std::vector<int> log;
  std::atomic<int> remaining{3};
  for (int id = 1; id <= 3; ++id)
    s.spawn(round_robin(id, log, remaining, s));
  s.run();
  const std::vector<int> expected = {1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3};
  EXPECT_EQ(log, expected);
}

// =================================================================================================
// 5. Idle costs ~0 CPU
// =================================================================================================

struct IdleWaiters {
  WaitableEvent never;
  Pipe silent;
  LifeCount locals;
  std::atomic<bool> resumed{false};
  void spawn_on(Scheduler& s) {
    s.spawn(sleep_long(locals, resumed));
    s.spawn(wait_readable(silent.read_end, locals, resumed));
    s.spawn(wait_event(never, locals, resumed));
  }
};

TEST(SchedulerIdle, RunForASecondWithFarTimerAndSilentFdUsesNoCpu) {
  IdleWaiters w;
  Scheduler s;
  w.spawn_on(s);
  s.run_for(0ms);
  ASSERT_EQ(w.locals.alive(), 3);
  const double cpu0 = process_cpu_seconds();
  const auto took = elapsed([&] { s.run_for(1s); });
  const double cpu = process_cpu_seconds() - cpu0;
  EXPECT_GE(took, 1s);
  EXPECT_LT(cpu, kIdleCpuSeconds) << "an idle loop burnt " << cpu << " s of CPU in " << ms(took)
                                  << " ms: it spins instead of blocking in select()";
  EXPECT_FALSE(w.resumed);
}

TEST(SchedulerIdle, RunBlockedUntilStoppedUsesNoCpu) {
  IdleWaiters w;
  Scheduler s;
  w.spawn_on(s);
  s.run_for(0ms);
  const double cpu0 = process_cpu_seconds();
  std::thread stopper([&] {
    std::this_thread::sleep_for(1s);  // lets time pass; not synchronisation
    s.stop();
  });
  const auto took = elapsed([&] { s.run(); });
  stopper.join();
  const double cpu = process_cpu_seconds() - cpu0;
  EXPECT_GE(took, 900ms);
  EXPECT_LT(cpu, kIdleCpuSeconds) << "an idle loop burnt " << cpu << " s of CPU in " << ms(took)
                                  << " ms";
  EXPECT_FALSE(w.resumed);
}

// =================================================================================================
// 6. Destroying a scheduler destroys the frames it owns
// =================================================================================================

TEST(SchedulerDestroy, DestroysTheFramesOfTasksStillWaiting) {
  WaitableEvent ev;  // declared first: outlives the scheduler
  Pipe silent;
  LifeCount locals;
  std::atomic<bool> resumed{false};
  std::atomic<bool> finished{false};
  {
    Scheduler s;
    s.spawn(wait_event(ev, locals, resumed));
    s.spawn(sleep_long(locals, resumed));
    s.spawn(wait_readable(silent.read_end, locals, resumed));
    s.spawn(await_child(await_child(wait_event(ev, locals, resumed), locals), locals));
    s.spawn(yield_forever(locals));  // sits in the ready queue
    s.spawn(stop_scheduler(s, 3));
    EXPECT_THROW(s.run(wait_then_return(ev, locals, finished, -1)), std::runtime_error);
    EXPECT_EQ(locals.alive(), 1 + 1 + 1 + 3 + 1 + 1);
  }
  EXPECT_EQ(locals.alive(), 0) << "frames left alive (leaked) after ~Scheduler";
  // Nothing may still refer to the dead frames.
  ev.set();
  silent.put();
  EXPECT_FALSE(resumed);
  EXPECT_FALSE(finished);
}

Task<void> never_started(Tracked t, std::atomic<bool>& ran) {
  (void)t;
  ran.store(true);
  co_return;
}

TEST(SchedulerDestroy, DestroysTasksSpawnedOnASchedulerThatNeverRan) {
  LifeCount locals;
  std::atomic<bool> ran{false};
  {
    Scheduler s;
    for (int i = 0; i < 3; ++i)
      s.spawn(never_started(Tracked(locals), ran));
    std::thread([&] { s.spawn(never_started(Tracked(locals), ran)); }).join();
    EXPECT_EQ(locals.alive(), 4);
  }
  EXPECT_EQ(locals.alive(), 0);
  EXPECT_FALSE(ran);
}

// After a scheduler with waiters on an event dies, the event must not remember it: destroying
// the event (which cancels the waiters of the loop that owns its watch) or waiting on it from
// another scheduler must not touch the dead one (ASan reports a use after free otherwise).
TEST(SchedulerDestroy, AnEventOutlivingASchedulerIsUsableElsewhere) {
  LifeCount locals;
  std::atomic<bool> first{false}, second{false};
  auto ev = std::make_unique<WaitableEvent>();
  {
    Scheduler s;
    s.spawn(wait_event(*ev, locals, first));
    s.run_for(0ms);
  }
  EXPECT_EQ(locals.alive(), 0);
  Scheduler t;
  t.spawn(wait_event(*ev, locals, second));
  t.run_for(0ms);
  ev->set();
  t.run_for(50ms);
  EXPECT_TRUE(second);
  EXPECT_FALSE(first);
  ev.reset();
  EXPECT_EQ(locals.alive(), 0);
}

// =================================================================================================
// 7. Several schedulers in one process share no state
// =================================================================================================

struct LoopProbe {
  std::atomic<int> ticks{0};
  std::atomic<int> wrong_current{0};
  std::atomic<int> mark{0};  // when > 0: signal `passed_mark` once ticks reach it
  std::atomic<bool> event_resumed{false};
  pid_t event_thread = 0;
  Signal five_ticks, passed_mark, event_seen;
};

Task<void> ticker(Scheduler& self, LoopProbe& p) {
  for (;;) {
    co_await coselect::sleep_for(1ms);
    if (Scheduler::current() != &self) ++p.wrong_current;
    const int t = ++p.ticks;
    if (t == 5) p.five_ticks.set();
    const int m = p.mark.load();
    if (m > 0 && t >= m) p.passed_mark.set();
  }
}

Task<void> probe_event(WaitableEvent& ev, LoopProbe& p) {
  co_await ev.wait();
  p.event_thread = current_tid();
  p.event_resumed.store(true);
  p.event_seen.set();
}

TEST(SchedulerMany, TwoLoopsOnTwoThreadsAreIndependent) {
  WaitableEvent e1, e2;
  LoopProbe p1, p2;
  Scheduler s1, s2;
  s1.spawn(ticker(s1, p1));
  s1.spawn(probe_event(e1, p1));
  s2.spawn(ticker(s2, p2));
  s2.spawn(probe_event(e2, p2));
  LoopThread t1(s1), t2(s2);
  ASSERT_TRUE(p1.five_ticks.wait_for());
  ASSERT_TRUE(p2.five_ticks.wait_for());

  e1.set();
  ASSERT_TRUE(p1.event_seen.wait_for());
  EXPECT_EQ(p1.event_thread, t1.tid());
  EXPECT_FALSE(p2.event_resumed) << "setting e1 must not release s2's waiter on e2";

  t1.stop_and_join();  // stopping s1 ...
  const int s1_ticks = p1.ticks.load();
  p2.mark.store(p2.ticks.load() + 5);
  ASSERT_TRUE(p2.passed_mark.wait_for()) << "... must not stop s2";
  e2.set();
  ASSERT_TRUE(p2.event_seen.wait_for());
  EXPECT_EQ(p2.event_thread, t2.tid());
  t2.stop_and_join();

  EXPECT_EQ(p1.ticks.load(), s1_ticks) << "s1 ticked after it was stopped";
  EXPECT_EQ(p1.wrong_current, 0);
  EXPECT_EQ(p2.wrong_current, 0);
  EXPECT_FALSE(t1.error());
  EXPECT_FALSE(t2.error());
}

// =================================================================================================
// 8. Awaiting coselect awaitables where no scheduler runs throws std::logic_error
// =================================================================================================

enum class Awaitable {
  sleep_for,
  sleep_until,
  yield_now,
  readable,
  writable,
  readable_timeout,
  event_wait,
  event_wait_timeout,
  run_in_thread,
};

const char* name_of(Awaitable a) {
  switch (a) {
    case Awaitable::sleep_for:
      return "sleep_for";
    case Awaitable::sleep_until:
      return "sleep_until";
    case Awaitable::yield_now:
      return "yield_now";
    case Awaitable::readable:
      return "readable";
    case Awaitable::writable:
      return "writable";
    case Awaitable::readable_timeout:
      return "readable(fd, timeout)";
    case Awaitable::event_wait:
      return "ev.wait()";
    case Awaitable::event_wait_timeout:
      return "ev.wait(timeout)";
    case Awaitable::run_in_thread:
      return "run_in_thread";
  }
  return "?";
}

constexpr Awaitable kAllAwaitables[] = {
    Awaitable::sleep_for,  Awaitable::sleep_until,        Awaitable::yield_now,
    Awaitable::readable,   Awaitable::writable,           Awaitable::readable_timeout,
    Awaitable::event_wait, Awaitable::event_wait_timeout, Awaitable::run_in_thread,
};

Task<void> await_one(Awaitable a, const Pipe& p, WaitableEvent& ev) {
  switch (a) {
    case Awaitable::sleep_for:
      co_await coselect::sleep_for(1ms);
      break;
    case Awaitable::sleep_until:
      co_await coselect::sleep_until(Clock::now() + 1ms);
      break;
    case Awaitable::yield_now:
      co_await coselect::yield_now();
      break;
    case Awaitable::readable:
      co_await coselect::readable(p.read_end);
      break;
    case Awaitable::writable:
      co_await coselect::writable(p.write_end);
      break;
    case Awaitable::readable_timeout:
      (void)co_await coselect::readable(p.read_end, 10ms);
      break;
    case Awaitable::event_wait:
      co_await ev.wait();
      break;
    case Awaitable::event_wait_timeout:
      (void)co_await ev.wait(10ms);
      break;
    case Awaitable::run_in_thread:
      (void)co_await coselect::run_in_thread([] { return 1; });
      break;
  }
}

Task<void> catch_logic_error(Awaitable a, const Pipe& p, WaitableEvent& ev, std::string& caught) {
  try {
    co_await await_one(a, p, ev);
    caught = "<no exception>";
  } catch (const std::logic_error& e) {
    caught = std::string("logic_error: ") + e.what();
  } catch (...) {
    caught = "<another exception>";
  }
}

// Drives the coroutine by hand on this thread and checks it finished with a logic_error.
void expect_logic_error_everywhere(const char* where) {
  Pipe p;
  p.put();  // readable and writable both "ready": only a missing scheduler can make them fail
  WaitableEvent ev;
  ev.set();  // a set event would not even suspend: the check must come first
  for (Awaitable a : kAllAwaitables) {
    std::string caught;
    Task<void> t = catch_logic_error(a, p, ev, caught);
    t.handle().resume();
    EXPECT_TRUE(t.done()) << name_of(a) << " " << where << ": suspended instead of throwing";
    const std::string prefix = "logic_error: ";
    EXPECT_EQ(caught.rfind(prefix, 0), 0u) << name_of(a) << " " << where << ": " << caught;
    EXPECT_GT(caught.size(), prefix.size()) << name_of(a) << ": empty message";
  }
}

TEST(SchedulerNoLoop, AwaitablesThrowLogicErrorWhereNoSchedulerRuns) {
  expect_logic_error_everywhere("(no scheduler at all)");
}

TEST(SchedulerNoLoop, AwaitablesThrowLogicErrorWhenTheSchedulerIsNotRunning) {
  Scheduler idle;  // exists on this thread, but no run* is active
  expect_logic_error_everywhere("(scheduler constructed, not running)");
}

TEST(SchedulerNoLoop, AwaitablesThrowLogicErrorOnAThreadWithoutTheRunningLoop) {
  Scheduler s;
  LoopThread loop(s);  // runs on another thread
  await_in_reactor(loop.tid());
  expect_logic_error_everywhere("(the loop runs on another thread)");
}

Task<void> sleep_uncaught() {
  co_await coselect::sleep_for(1ms);
}

TEST(SchedulerNoLoop, UncaughtLogicErrorIsStoredInTheTask) {
  Task<void> t = sleep_uncaught();
  t.handle().resume();
  ASSERT_TRUE(t.done());
  ASSERT_TRUE(t.handle().promise().exception);
  EXPECT_THROW(std::rethrow_exception(t.handle().promise().exception), std::logic_error);
}

// =================================================================================================
// 9. run_for / run_until
// =================================================================================================

Task<void> flag_at(Scheduler::time_point when, std::atomic<bool>& fired) {
  co_await coselect::sleep_until(when);
  fired.store(true);
}

TEST(SchedulerTime, RunForReturnsAfterTheDurationAndFiresOnlyTimersDueWithin) {
  Scheduler s;
  const auto t0 = s.now();
  std::atomic<bool> early{false}, mid{false}, late{false};
  s.spawn(flag_at(t0 + 20ms, early));
  s.spawn(flag_at(t0 + 150ms, mid));
  s.spawn(flag_at(t0 + 700ms, late));
  const auto took = elapsed([&] { s.run_for(300ms); });
  EXPECT_GE(took, 300ms) << "run_for returned early";
  EXPECT_LT(took, 300ms + kLate);
  EXPECT_TRUE(early);
  EXPECT_TRUE(mid);
  EXPECT_FALSE(late) << "a timer due after the limit fired (even a late return must not fire it)";
  s.run_until(t0 + 900ms);
  EXPECT_TRUE(late);
}

// The limit is inclusive on the real clock too: a timer due exactly at the limit fires *and* its
// coroutine runs before run_until() returns. (Failed before f0541f3: drive() returned right
// after the iteration that fired it, leaving the waiter in the ready queue for the next run*.)
TEST(SchedulerTime, RunUntilRunsATimerDueExactlyAtTheLimit) {
  Scheduler s;
  const auto limit = s.now() + 100ms;
  std::atomic<bool> at_limit{false};
  s.spawn(flag_at(limit, at_limit));
  s.run_until(limit);
  EXPECT_TRUE(at_limit) << "the limit is inclusive: a timer due exactly then must run";
  EXPECT_GE(s.now(), limit);
}

TEST(SchedulerTime, RunUntilReturnsAtTheLimitAndFiresOnlyTimersDueBefore) {
  Scheduler s;
  const auto t0 = s.now();
  const auto limit = t0 + 200ms;
  std::atomic<bool> before{false}, after{false};
  s.spawn(flag_at(t0 + 50ms, before));
  s.spawn(flag_at(limit + 400ms, after));
  s.run_until(limit);
  EXPECT_GE(s.now(), limit) << "run_until returned early";
  EXPECT_LT(s.now(), limit + kLate);
  EXPECT_TRUE(before);
  EXPECT_FALSE(after);
}

// run_for(d) runs until now() reaches now()+d: a coroutine that keeps yielding (never idle) must
// not keep it running past the limit (DESIGN §1 run_for; a periodic poller would hang tests).
// BUG (regression in f0541f3, "drain the work that is ready at the limit, on the real clock
// too"): drive() now returns only when quiescent_at(limit), i.e. with an empty ready queue, so a
// yield_now() loop keeps run_for/run_until running for ever (here until the Deadman stops it).
// Proposed fix: after reaching the limit, return after the first iteration whose fire_due()
// released nothing due <= limit and that found nothing posted (timers/tasks <= limit are
// finite), instead of waiting for an empty ready queue; each coroutine that was ready then has
// had its turn, and what they released keeps its place for the next run*.
TEST(SchedulerTime, RunForReturnsWhileACoroutineKeepsYielding) {
  Scheduler s;
  LifeCount locals;
  s.spawn(yield_forever(locals));
  Deadman deadman(s, 100ms + kLate + 500ms);
  const auto took = elapsed([&] { s.run_for(100ms); });
  EXPECT_FALSE(deadman.fired()) << "run_for(100ms) did not return while a coroutine yielded";
  EXPECT_GE(took, 100ms);
  EXPECT_LT(took, 100ms + kLate);
}

TEST(SchedulerTime, LimitsInThePastReturnPromptly) {
  Scheduler s;
  LifeCount locals;
  std::atomic<bool> resumed{false};
  s.spawn(sleep_long(locals, resumed));
  EXPECT_LT(elapsed([&] { s.run_until(s.now() - 1h); }), kLate);
  EXPECT_LT(elapsed([&] { s.run_for(-5s); }), kLate);
  EXPECT_LT(elapsed([&] { s.run_for(0ms); }), kLate);
}

TEST(SchedulerVirtualTime, RunForLimitIsInclusive) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  ASSERT_TRUE(s.is_virtual_time());
  const auto t0 = s.now();
  const auto limit = t0 + 10s;
  std::atomic<bool> at_limit{false}, after_limit{false};
  bool callback_at_limit = false, callback_after = false;
  s.spawn(flag_at(limit, at_limit));
  s.spawn(flag_at(limit + 1ns, after_limit));
  s.tasks().call_at(limit, [&] { callback_at_limit = true; });
  s.tasks().call_at(limit + 1ns, [&] { callback_after = true; });
  const auto took = elapsed([&] { s.run_for(10s); });
  EXPECT_TRUE(at_limit) << "a timer due exactly at the limit must run";
  EXPECT_TRUE(callback_at_limit) << "a task due exactly at the limit must run";
  EXPECT_FALSE(after_limit);
  EXPECT_FALSE(callback_after);
  EXPECT_EQ(s.now(), limit) << "virtual time must stop at the limit";
  EXPECT_LT(took, kLate) << "virtual time should jump, not wait";

  s.run_for(1ns);
  EXPECT_TRUE(after_limit);
  EXPECT_TRUE(callback_after);
}

Task<void> sleep_and_flag(std::chrono::nanoseconds d, std::atomic<bool>& fired) {
  co_await coselect::sleep_for(d);
  fired.store(true);
}

TEST(SchedulerVirtualTime, RunUntilLimitIsInclusive) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  const auto t0 = s.now();
  std::atomic<bool> at_limit{false}, after_limit{false};
  s.spawn(sleep_and_flag(3h, at_limit));  // starts at t0: virtual time does not move first
  s.spawn(sleep_and_flag(3h + 1us, after_limit));
  s.run_until(t0 + 3h);
  EXPECT_TRUE(at_limit);
  EXPECT_FALSE(after_limit);
  EXPECT_EQ(s.now(), t0 + 3h);
  s.run_until(t0 + 3h + 1us);
  EXPECT_TRUE(after_limit);
}

Task<int> many_long_sleeps(int n) {
  for (int i = 0; i < n; ++i)
    co_await coselect::sleep_for(1h);
  co_return n;
}

TEST(SchedulerVirtualTime, LongSleepsPassInstantly) {
  coselect::TimeMachine tm;
  Scheduler s(tm);
  const auto t0 = s.now();
  int n = 0;
  const auto took = elapsed([&] { n = s.run(many_long_sleeps(100)); });
  EXPECT_EQ(n, 100);
  EXPECT_EQ(s.now() - t0, 100h);
  EXPECT_LT(took, kLate);
}

// =================================================================================================
// 10. Dispatcher
// =================================================================================================

class PipeReader : public coselect::Dispatcher {
 public:
  enum Action : unsigned { none = 0, consume = 1, remove_self = 2, stop_loop = 4, throw_boom = 8 };
  PipeReader(Scheduler& s, int fd, unsigned actions) : s_(s), fd_(fd), actions_(actions) {}

  int fileno() const override { return fd_; }
  bool readable() override { return want_read; }
  void handle_read() override {
    ++reads;
    if (actions_ & consume) {
      char buffer[256];
      const ssize_t n = ::read(fd_, buffer, sizeof buffer);
      if (n > 0) got.append(buffer, static_cast<std::size_t>(n));
    }
    if (actions_ & remove_self) s_.remove_dispatcher(*this);
    if (actions_ & stop_loop) s_.stop();
    if (actions_ & throw_boom) throw Boom(5);
  }
  void handle_write() override { ++writes; }
  void handle_close() override { ++closes; }

  bool want_read = true;
  int reads = 0;
  int writes = 0;
  int closes = 0;
  std::string got;

 private:
  Scheduler& s_;
  int fd_;
  unsigned actions_;
};

class PipeWriter : public coselect::Dispatcher {
 public:
  PipeWriter(Scheduler& s, int fd) : s_(s), fd_(fd) {}
  int fileno() const override { return fd_; }
  bool readable() override { return false; }
  bool writable() override { return true; }
  void handle_read() override { ++reads; }
  void handle_write() override {
    ++writes;
    s_.remove_dispatcher(*this);
    s_.stop();
  }
  int reads = 0;
  int writes = 0;

 private:
  Scheduler& s_;
  int fd_;
};

TEST(SchedulerDispatcher, HandleReadWhenDataArrivesFromAnotherThread) {
  Pipe p;
  Scheduler s;
  PipeReader r(s, p.read_end,
               PipeReader::consume | PipeReader::remove_self | PipeReader::stop_loop);
  s.add_dispatcher(r);
  const pid_t loop_tid = current_tid();
  std::thread writer([&] {
    await_in_reactor(loop_tid);
    p.put("hello");
  });
  Deadman deadman(s, 30s);
  s.run();
  writer.join();
  EXPECT_FALSE(deadman.fired()) << "data on a dispatcher's fd did not wake the loop";
  EXPECT_EQ(r.got, "hello");
  EXPECT_EQ(r.reads, 1);
  EXPECT_EQ(r.writes, 0);
}

TEST(SchedulerDispatcher, WritableDispatcherGetsHandleWrite) {
  Pipe p;
  Scheduler s;
  PipeWriter w(s, p.write_end);
  s.add_dispatcher(w);
  Deadman deadman(s);
  s.run();
  EXPECT_FALSE(deadman.fired());
  EXPECT_EQ(w.writes, 1);
  EXPECT_EQ(w.reads, 0);
}

TEST(SchedulerDispatcher, NotReadableMeansNoHandleRead) {
  Pipe p;
  p.put();
  Scheduler s;
  PipeReader r(s, p.read_end, PipeReader::none);
  r.want_read = false;
  s.add_dispatcher(r);
  s.run_for(50ms);
  EXPECT_EQ(r.reads, 0);
  s.remove_dispatcher(r);
}

TEST(SchedulerDispatcher, RemovingItselfInsideHandleReadWorks) {
  Pipe p;
  p.put("abc");  // never consumed: the fd stays readable
  Scheduler s;
  PipeReader r(s, p.read_end, PipeReader::remove_self);
  s.add_dispatcher(r);
  s.run_for(100ms);
  EXPECT_EQ(r.reads, 1) << "a removed dispatcher was called again";
  s.add_dispatcher(r);  // re-adding works too
  s.run_for(20ms);
  EXPECT_EQ(r.reads, 2);
  s.remove_dispatcher(r);
}

class SelfDeleting : public coselect::Dispatcher {
 public:
  SelfDeleting(Scheduler& s, int fd, int& reads) : s_(s), fd_(fd), reads_(reads) {}
  int fileno() const override { return fd_; }
  void handle_read() override {
    ++reads_;
    s_.remove_dispatcher(*this);
    delete this;  // asyncore style: a dispatcher that closes itself goes away
  }

 private:
  Scheduler& s_;
  int fd_;
  int& reads_;
};

// BUG (ASan: heap-use-after-free in select_reactor::poll): after handle_read() returns, poll()
// reads `d.registered_` of the dispatcher (`if (d.registered_ && interest[i].second ...)`) and,
// for later snapshot entries, `if (!d.registered_) continue;` — so a dispatcher that removes and
// then destroys itself (or another one) in a handler is touched after its death. Proposed fix:
// on remove_dispatcher() null out the dispatcher's entry in snapshot_ (or keep a per-poll
// "removed" set) and test the entry, never the object, after a handler ran.
// Runs in a death-test child process so that an ASan report fails this test only.
TEST(SchedulerDispatcher, RemovingAndDestroyingItselfInsideHandleReadIsSafe) {
  EXPECT_EXIT(
      {
        Pipe p;
        p.put();
        Scheduler s;
        int reads = 0;
        s.add_dispatcher(*new SelfDeleting(s, p.read_end, reads));
        s.run_for(50ms);
        std::_Exit(reads == 1 ? 0 : 2);
      },
      testing::ExitedWithCode(0), "");
}

TEST(SchedulerDispatcher, ClosedFdLeadsToHandleCloseAndRemovalWithoutKillingTheLoop) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC | O_NONBLOCK), 0);
  Pipe healthy;
  Scheduler s;
  PipeReader doomed(s, fds[0], PipeReader::consume);
  PipeReader fine(s, healthy.read_end, PipeReader::consume);
  s.add_dispatcher(doomed);
  s.add_dispatcher(fine);
  std::atomic<bool> timer_fired{false};
  s.spawn(sleep_then_flag(timer_fired));
  // Everything that creates fds is done: the closed number cannot be reused before the loop runs.
  ::close(fds[0]);
  ::close(fds[1]);
  healthy.put("ok");
  EXPECT_NO_THROW(s.run_for(150ms));
  EXPECT_EQ(doomed.closes, 1);
  EXPECT_EQ(doomed.reads, 0);
  EXPECT_TRUE(timer_fired) << "the loop died with the closed fd";
  EXPECT_EQ(fine.got, "ok") << "a healthy dispatcher must keep working";
  s.run_for(20ms);
  EXPECT_EQ(doomed.closes, 1) << "a closed dispatcher must have been removed";
  s.remove_dispatcher(fine);
}

TEST(SchedulerDispatcher, BadFdsAreRejectedByAddDispatcher) {
  Scheduler s;
  for (int fd : {-1, -100}) {
    PipeReader r(s, fd, PipeReader::none);
    try {
      s.add_dispatcher(r);
      ADD_FAILURE() << "add_dispatcher accepted fd " << fd;
      s.remove_dispatcher(r);
    } catch (const std::system_error& e) {
      EXPECT_EQ(e.code(), std::errc::invalid_argument) << "fd " << fd << ": " << e.what();
    }
  }
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  ::close(fds[0]);
  ::close(fds[1]);
  PipeReader closed(s, fds[0], PipeReader::none);
  try {
    s.add_dispatcher(closed);
    ADD_FAILURE() << "add_dispatcher accepted a closed fd";
    s.remove_dispatcher(closed);
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), std::errc::bad_file_descriptor) << e.what();
  }
  EXPECT_EQ(s.run(value_after_turns(1, 4)), 4) << "the scheduler still works";
}

TEST(SchedulerDispatcher, HandlerExceptionMakesRunRethrow) {
  Pipe p;
  p.put();
  Scheduler s;
  PipeReader r(s, p.read_end,
               PipeReader::consume | PipeReader::remove_self | PipeReader::throw_boom);
  s.add_dispatcher(r);
  Deadman deadman(s);
  EXPECT_THROW(s.run(), Boom);
  EXPECT_EQ(r.reads, 1);
}

// BUG: a throwing Dispatcher handler bypasses set_exception_handler. dispatcher.hpp: "An
// exception from a handler follows the scheduler's failure policy"; but select_reactor::poll()
// calls handle_read()/handle_write()/handle_close() bare, so the exception propagates out of
// run*() instead of reaching the handler. Proposed fix: in poll()/fail_closed_fds(), wrap each
// handler call in try/catch and hand the exception to the scheduler (an on_failure callback
// that calls report_failure()), continuing with the next dispatcher.
TEST(SchedulerDispatcher, HandlerExceptionFollowsTheExceptionHandler) {
  Pipe p;
  p.put();
  Scheduler s;
  std::vector<std::string> handled;
  s.set_exception_handler([&](std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      handled.push_back(x.what());
    }
  });
  PipeReader r(s, p.read_end,
               PipeReader::consume | PipeReader::remove_self | PipeReader::throw_boom);
  s.add_dispatcher(r);
  std::atomic<bool> timer_fired{false};
  s.spawn(sleep_then_flag(timer_fired));
  try {
    s.run_for(100ms);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "run_for threw " << e.what() << " instead of calling the handler";
  }
  const std::vector<std::string> expected = {"boom 5"};
  EXPECT_EQ(handled, expected);
  EXPECT_EQ(r.reads, 1);
  s.run_for(100ms);
  EXPECT_TRUE(timer_fired) << "run must continue after a handled failure";
}

// BUG: after a handler throws out of a *blocking* select() round, the loop spins at 100% CPU
// once anything wakes it. select_round() calls enter_event_selects() (which counts the loop as
// asleep on its wake-up event: WaitableEvent `loops` += 1) and leave_event_selects() only after
// reactor_.poll() returns normally; the exception skips it, so `loops` stays 1 for ever. The next
// cross-thread wake-up (set() with loops > 0) sets `pulsed`, which is only cleared when `loops`
// drops to 0: the wake pipe keeps its byte and every later select() returns at once.
// Proposed fix: make leave_event_selects() run on every exit of select_round() (an RAII guard),
// and/or catch handler exceptions inside poll() (see the previous test).
TEST(SchedulerDispatcher, AfterAHandlerExceptionAnIdleLoopStillSleeps) {
  Pipe p;
  p.put();
  Scheduler s;
  PipeReader r(s, p.read_end,
               PipeReader::consume | PipeReader::remove_self | PipeReader::throw_boom);
  s.add_dispatcher(r);
  EXPECT_THROW(s.run(), Boom);  // the first select() blocks, then the handler throws

  std::atomic<bool> ran{false};
  std::thread([&] { s.spawn(set_flag(ran)); }).join();  // a cross-thread wake-up
  const double cpu0 = process_cpu_seconds();
  const auto took = elapsed([&] { s.run_for(500ms); });
  const double cpu = process_cpu_seconds() - cpu0;
  EXPECT_TRUE(ran);
  EXPECT_GE(took, 500ms);
  EXPECT_LT(cpu, kIdleCpuSeconds) << "the idle loop burnt " << cpu << " s of CPU in " << ms(took)
                                  << " ms";
}

// =================================================================================================
// 11. resume_on(other scheduler)
// =================================================================================================

Task<int> hop_and_finish(Scheduler& other, pid_t& before, pid_t& after, LifeCount& locals) {
  Tracked local(locals);
  before = current_tid();
  co_await coselect::resume_on(other);
  after = current_tid();
  co_return 42;
}

TEST(SchedulerResumeOn, TaskFinishingOnAnotherSchedulerCompletesRun) {
  Scheduler a, b;
  LoopThread tb(b);
  LifeCount locals;
  constexpr int kRounds = kSanitized ? 20 : 100;  // repeated: the hand-over races with the end
  for (int i = 0; i < kRounds; ++i) {
    pid_t before = 0, after = 0;
    Deadman deadman(a);
    int v = 0;
    try {
      v = a.run(hop_and_finish(b, before, after, locals));
    } catch (const std::exception& e) {
      ADD_FAILURE() << "round " << i << ": " << e.what();
    }
    ASSERT_FALSE(deadman.fired()) << "round " << i << ": the original loop was never woken";
    EXPECT_EQ(v, 42);
    EXPECT_EQ(before, current_tid());
    EXPECT_EQ(after, tb.tid()) << "the second half must run on the other scheduler's thread";
    EXPECT_EQ(locals.alive(), 0) << "run() frees the frame after taking the result";
  }
}

Task<std::vector<pid_t>> round_trip(Scheduler& home, Scheduler& away) {
  std::vector<pid_t> where;
  where.push_back(current_tid());
  co_await coselect::resume_on(away);
  where.push_back(current_tid());
  co_await coselect::sleep_for(1ms);  // timers of the other loop work too
  where.push_back(current_tid());
  co_await coselect::resume_on(home);
  where.push_back(current_tid());
  co_return where;
}

TEST(SchedulerResumeOn, RoundTripComesBackToTheOriginalThread) {
  Scheduler a, b;
  LoopThread tb(b);
  Deadman deadman(a);
  const auto where = a.run(round_trip(a, b));
  EXPECT_FALSE(deadman.fired());
  const auto me = current_tid();
  const std::vector<pid_t> expected = {me, tb.tid(), tb.tid(), me};
  EXPECT_EQ(where, expected);
}

struct HopTrace {
  std::vector<Scheduler*> current;
  std::vector<pid_t> tids;
};

// Reads Scheduler::current() (a thread_local) on the home thread, hops, then reads it and uses
// awaitables that need it (they look the scheduler up through it) on the other thread.
Task<int> hop_then_await(Scheduler& away, HopTrace& t) {
  t.current.push_back(Scheduler::current());
  co_await coselect::yield_now();
  t.current.push_back(Scheduler::current());
  t.tids.push_back(current_tid());
  co_await coselect::resume_on(away);
  t.current.push_back(Scheduler::current());
  t.tids.push_back(current_tid());
  co_await coselect::sleep_for(1ms);  // must register with `away`, the loop it now runs on
  t.current.push_back(Scheduler::current());
  t.tids.push_back(current_tid());
  co_await coselect::yield_now();
  t.current.push_back(Scheduler::current());
  t.tids.push_back(current_tid());
  co_return 1;
}

// Guards against a known clang hazard (llvm/llvm-project#47179): Scheduler::current() and the
// awaitables read the thread_local detail::running_loop; inlined into a coroutine, clang may
// reuse a TLS address computed before a co_await after the coroutine resumed on another thread,
// so sleep_for/yield_now would register with the old loop from the new thread. Passes with
// clang 14 (-O1 TSan, -O2) and g++ 12 today; this test's own thread ids had exactly that problem
// with std::this_thread::get_id() (see current_tid()).
TEST(SchedulerResumeOn, AwaitablesAfterAHopUseTheNewScheduler) {
  Scheduler a, b;
  LoopThread tb(b);
  Deadman deadman(a);
  HopTrace t;
  try {
    (void)a.run(hop_then_await(b, t));
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
  }
  EXPECT_FALSE(deadman.fired());
  const std::vector<Scheduler*> expected_current = {&a, &a, &b, &b, &b};
  EXPECT_EQ(t.current, expected_current) << "&a = " << &a << ", &b = " << &b;
  const pid_t me = current_tid();
  const std::vector<pid_t> expected_tids = {me, tb.tid(), tb.tid(), tb.tid()};
  EXPECT_EQ(t.tids, expected_tids);
}

Task<int> hop_and_throw(Scheduler& other) {
  co_await coselect::resume_on(other);
  throw Boom(9);
}

TEST(SchedulerResumeOn, ExceptionThrownOnTheOtherSchedulerIsRethrownByRun) {
  Scheduler a, b;
  LoopThread tb(b);
  Deadman deadman(a);
  try {
    (void)a.run(hop_and_throw(b));
    ADD_FAILURE() << "run() returned";
  } catch (const Boom& e) {
    EXPECT_EQ(e.code, 9);
  }
  EXPECT_FALSE(deadman.fired());
  EXPECT_FALSE(tb.error()) << "the other loop must not see the failure";
}

}  // namespace

#endif  // !defined(_WIN32)
