// Tests of the thread hand-offs: run_in_thread, ThreadPool and resume_on (DESIGN.md §1
// "Awaitables", §2 "Scheduler", §5 "Virtual time").
//
// Sections
//   0. Helpers
//   1. run_in_thread: results, exceptions, which thread runs what
//   2. run_in_thread: parallelism and the pool's bound
//   3. run_in_thread under virtual time: time does not jump while a job is in flight
//   4. ThreadPool on its own
//   5. resume_on
//
// Nothing here sleeps to synchronise. Where a test needs several jobs to overlap it makes them
// wait for each other (with a timed wait, so that a serialised implementation fails the test
// instead of hanging it); where it needs the loop asleep in select() it observes that through
// /proc/self/task/<tid>/syscall.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <latch>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <coselect.hpp>
#include "support/sync.hpp"
#include "support/thread_probe.hpp"

namespace {

// =================================================================================================
// 0. Helpers
// =================================================================================================

using coselect::Scheduler;
using coselect::Task;
using coselect::ThreadPool;
using coselect::TimeMachine;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// A barrier whose wait gives up after a limit, so that jobs run one at a time instead of
// together make the test fail (quickly) rather than deadlock.
class TimedBarrier {
 public:
  explicit TimedBarrier(int count) : count_(count) {}
  // True if all `count` parties arrived within `limit`.
  bool arrive_and_wait(Clock::duration limit = 5s) {
    std::unique_lock lock(mutex_);
    if (++arrived_ >= count_) {
      cv_.notify_all();
      return true;
    }
    return cv_.wait_for(lock, limit, [&] { return arrived_ >= count_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_;
  int arrived_ = 0;
};

using coselect_test::blocked_in_futex_on;
using coselect_test::is_reactor_wait;
using coselect_test::proc_syscall_readable;
using coselect_test::wait_until_in_reactor;

// The calling thread's id, read so that the compiler cannot reuse a value from before a
// co_await: clang treats pthread_self() (behind std::this_thread::get_id()) as a pure function
// and reuses its result across suspension points, so a coroutine that changed threads would see
// its old thread's id (llvm/llvm-project#47177, still seen with clang 14 -O2 here).
[[gnu::noinline]] std::thread::id this_thread_id() {
  asm volatile("" ::: "memory");
  return std::this_thread::get_id();
}

struct Oops : std::runtime_error {
  explicit Oops(int c) : std::runtime_error("oops"), code(c) {}
  int code;
};

// =================================================================================================
// 1. run_in_thread: results and threads
// =================================================================================================

TEST(RunInThread, ReturnsTheValueRunsElsewhereAndResumesOnTheLoopThread) {
  Scheduler s;
  std::thread::id ran_on;
  std::thread::id resumed_on;
  Scheduler* current_after = nullptr;
  auto body = [&]() -> Task<int> {
    const int v = co_await coselect::run_in_thread([&] {
      ran_on = this_thread_id();
      return 42;
    });
    resumed_on = this_thread_id();
    current_after = Scheduler::current();
    co_return v;
  };
  EXPECT_EQ(s.run(body()), 42);
  EXPECT_NE(ran_on, std::thread::id{});
  EXPECT_NE(ran_on, this_thread_id());
  EXPECT_EQ(resumed_on, this_thread_id());
  EXPECT_EQ(current_after, &s);
}

TEST(RunInThread, RethrowsTheJobsException) {
  Scheduler s;
  int code = 0;
  std::thread::id caught_on;
  auto body = [&]() -> Task<void> {
    try {
      co_await coselect::run_in_thread([]() -> int { throw Oops(17); });
    } catch (const Oops& e) {
      code = e.code;
      caught_on = this_thread_id();
    }
  };
  s.run(body());
  EXPECT_EQ(code, 17);
  EXPECT_EQ(caught_on, this_thread_id());

  // Uncaught, it propagates out of run().
  auto failing = []() -> Task<void> {
    co_await coselect::run_in_thread([] { throw std::out_of_range("void job"); });
  };
  EXPECT_THROW(s.run(failing()), std::out_of_range);
}

TEST(RunInThread, VoidAndMoveOnlyResults) {
  Scheduler s;
  bool void_ran = false;
  auto body = [&]() -> Task<int> {
    co_await coselect::run_in_thread([&] { void_ran = true; });
    std::unique_ptr<int> p =
        co_await coselect::run_in_thread([] { return std::make_unique<int>(7); });
    co_return *p;
  };
  EXPECT_EQ(s.run(body()), 7);
  EXPECT_TRUE(void_ran);
}

TEST(RunInThread, JobsWritesAreVisibleAfterResumption) {
  Scheduler s;
  std::vector<int> filled;  // written by the worker, read on the loop: needs happens-before
  auto body = [&]() -> Task<std::size_t> {
    co_await coselect::run_in_thread([&] {
      for (int i = 0; i < 1000; ++i)
        filled.push_back(i);
    });
    co_return filled.size();
  };
  EXPECT_EQ(s.run(body()), 1000u);
}

TEST(RunInThread, WithoutARunningSchedulerThrowsLogicError) {
  auto body = []() -> Task<int> { co_return co_await coselect::run_in_thread([] { return 1; }); };
  Task<int> t = body();
  t.handle().resume();  // driven by hand: no scheduler runs on this thread
  ASSERT_TRUE(t.done());
  EXPECT_THROW(t.handle().promise().take(), std::logic_error);
}

// =================================================================================================
// 2. Parallelism and the pool's bound
// =================================================================================================

TEST(RunInThread, JobsInFlightRunInParallel) {
  constexpr int kJobs = 4;
  ThreadPool pool(kJobs);
  TimedBarrier barrier(kJobs);
  std::atomic<int> met{0};
  Scheduler s;
  auto job = [&](int i) -> Task<int> {
    co_return co_await coselect::run_in_thread(pool, [&, i] {
      if (barrier.arrive_and_wait()) met.fetch_add(1);
      return i * 10;
    });
  };
  auto body = [&]() -> Task<std::vector<int>> {
    std::vector<Task<int>> jobs;
    for (int i = 0; i < kJobs; ++i)
      jobs.push_back(job(i));
    co_return co_await coselect::when_all(jobs);
  };
  EXPECT_EQ(s.run(body()), (std::vector<int>{0, 10, 20, 30}));
  EXPECT_EQ(met.load(), kJobs) << "the jobs did not all run at the same time";
}

TEST(RunInThread, TheSharedPoolRunsAtLeastFourJobsInParallel) {
  constexpr int kJobs = 4;
  ASSERT_GE(ThreadPool::shared().max_threads(), static_cast<std::size_t>(kJobs));
  TimedBarrier barrier(kJobs);
  std::atomic<int> met{0};
  Scheduler s;
  auto job = [&]() -> Task<void> {
    co_await coselect::run_in_thread([&] {
      if (barrier.arrive_and_wait()) met.fetch_add(1);
    });
  };
  auto body = [&]() -> Task<void> {
    std::vector<Task<void>> jobs;
    for (int i = 0; i < kJobs; ++i)
      jobs.push_back(job());
    co_await coselect::when_all(jobs);
  };
  s.run(body());
  EXPECT_EQ(met.load(), kJobs);
}

TEST(RunInThread, APoolOfTwoRunsAtMostTwoJobsAtOnceAndFinishesThemAll) {
  constexpr int kJobs = 8;
  ThreadPool pool(2);
  std::mutex m;
  std::condition_variable cv;
  int active = 0;
  int max_active = 0;
  int waited_in_vain = 0;
  auto work = [&](int i) {
    std::unique_lock lock(m);
    ++active;
    max_active = std::max(max_active, active);
    cv.notify_all();
    // Hold on until two jobs have overlapped at least once, so that overlap is observable.
    if (!cv.wait_for(lock, 5s, [&] { return max_active >= 2; })) ++waited_in_vain;
    --active;
    return i * i;
  };
  Scheduler s;
  auto job = [&](int i) -> Task<int> {
    co_return co_await coselect::run_in_thread(pool, [&work, i] { return work(i); });
  };
  auto body = [&]() -> Task<std::vector<int>> {
    std::vector<Task<int>> jobs;
    for (int i = 0; i < kJobs; ++i)
      jobs.push_back(job(i));
    co_return co_await coselect::when_all(jobs);
  };
  const std::vector<int> results = s.run(body());
  ASSERT_EQ(results.size(), static_cast<std::size_t>(kJobs));
  for (int i = 0; i < kJobs; ++i)
    EXPECT_EQ(results[static_cast<std::size_t>(i)], i * i);
  EXPECT_EQ(max_active, 2);
  EXPECT_EQ(waited_in_vain, 0);
  EXPECT_LE(pool.thread_count(), 2u);  // threads never shrink: this is the peak
}

TEST(RunInThread, ManyJobsFromManyCoroutinesAllComplete) {
  constexpr int kJobs = 200;
  ThreadPool pool(3);
  Scheduler s;
  const std::thread::id loop_id = this_thread_id();
  int off_loop = 0;
  auto job = [&](int i) -> Task<int> {
    int v = co_await coselect::run_in_thread(pool, [i] { return i + 1; });
    if (this_thread_id() != loop_id) ++off_loop;
    co_return v;
  };
  auto body = [&]() -> Task<long> {
    std::vector<Task<int>> jobs;
    for (int i = 0; i < kJobs; ++i)
      jobs.push_back(job(i));
    const auto values = co_await coselect::when_all(jobs);
    long sum = 0;
    for (int v : values)
      sum += v;
    co_return sum;
  };
  EXPECT_EQ(s.run(body()), static_cast<long>(kJobs) * (kJobs + 1) / 2);
  EXPECT_EQ(off_loop, 0);
}

// =================================================================================================
// 3. Virtual time and run_in_thread
// =================================================================================================

TEST(RunInThread, VirtualTimeDoesNotJumpWhileAJobIsInFlight) {
  if (!proc_syscall_readable()) GTEST_SKIP() << "/proc/self/task/<tid>/syscall is not readable";
  TimeMachine tm;
  Scheduler s(tm);
  const pid_t loop_tid = coselect_test::current_tid();
  std::atomic<bool> job_done{false};
  bool sleeper_woke = false;
  bool job_done_when_sleeper_woke = false;
  std::int64_t sleeper_woke_at_ns = -1;
  std::int64_t job_resumed_at_ns = -1;
  bool saw_loop_asleep = false;

  auto sleeper = [&]() -> Task<void> {
    co_await coselect::sleep_for(1h);
    sleeper_woke = true;
    job_done_when_sleeper_woke = job_done.load();
    sleeper_woke_at_ns = std::chrono::nanoseconds(s.now().time_since_epoch()).count();
  };
  auto body = [&]() -> Task<int> {
    s.spawn(sleeper());
    co_await coselect::yield_now();  // the sleeper arms its 1 h timer first
    // The job finishes only once the loop has gone idle (asleep in select()). If the loop
    // jumped virtual time instead of waiting for the job, the sleeper would wake first.
    const int v = co_await coselect::run_in_thread([&] {
      saw_loop_asleep = wait_until_in_reactor(loop_tid);
      job_done = true;
      return 3;
    });
    job_resumed_at_ns = std::chrono::nanoseconds(s.now().time_since_epoch()).count();
    co_return v;
  };
  EXPECT_EQ(s.run(body()), 3);
  EXPECT_TRUE(saw_loop_asleep);
  EXPECT_FALSE(sleeper_woke) << "virtual time jumped while run_in_thread was in flight";
  EXPECT_EQ(job_resumed_at_ns, 0);
  EXPECT_EQ(std::chrono::nanoseconds(s.now().time_since_epoch()).count(), 0);

  // Once the job is back, time moves again: the sleeper wakes at exactly 1 h.
  s.run_for(1h);
  EXPECT_TRUE(sleeper_woke);
  EXPECT_TRUE(job_done_when_sleeper_woke);
  EXPECT_EQ(sleeper_woke_at_ns, std::chrono::nanoseconds(1h).count());
}

// Destroying a scheduler while a run_in_thread job of one of its coroutines still runs on a
// pool thread: the job writes into that coroutine's frame and posts to the scheduler, so the
// destructor waits for it to end, then destroys the frame without resuming it. (The periodic
// status example crashed at exit under load before: its last probe outlived the loop.)
TEST(RunInThread, DestroyingTheSchedulerWaitsForAJobStillRunning) {
  if (!proc_syscall_readable()) GTEST_SKIP() << "/proc/self/task/<tid>/syscall is not readable";
  ThreadPool pool(1);
  coselect::WaitableEvent started, release;
  std::atomic<bool> job_done{false};
  bool resumed = false;
  const pid_t main_tid = coselect_test::current_tid();
  std::atomic<bool> saw_destructor_wait{false};
  std::thread releaser;
  auto s = std::make_unique<Scheduler>();
  // Named lambdas: the coroutines reach the captures through the closures, which must outlive
  // them.
  auto waits_for_the_job = [&]() -> Task<void> {
    co_await coselect::run_in_thread(pool, [&] {
      started.set();
      (void)release.wait_blocking(10s);  // bounded: a broken destructor fails, not hangs
      job_done = true;
    });
    resumed = true;
  };
  auto stops_the_loop = [&]() -> Task<void> {
    co_await started.wait();
    s->stop();
  };
  s->spawn(waits_for_the_job());
  s->spawn(stops_the_loop());
  s->run();
  // The job ends only once this thread is blocked inside the destructor, in futex() on a word of
  // the scheduler's own (its condition variable), not on some runtime lock on the way there.
  const Scheduler* destroyed = s.get();
  releaser = std::thread([&] {
    const auto deadline = Clock::now() + 5s;
    while (Clock::now() < deadline && !saw_destructor_wait) {
      saw_destructor_wait = blocked_in_futex_on(main_tid, *destroyed);
      std::this_thread::yield();
    }
    release.set();
  });
  s.reset();
  EXPECT_TRUE(job_done.load()) << "~Scheduler returned while a job still used its frame";
  releaser.join();
  EXPECT_TRUE(saw_destructor_wait.load());
  EXPECT_FALSE(resumed) << "the coroutine of a destroyed scheduler must not resume";
}

// =================================================================================================
// 4. ThreadPool
// =================================================================================================

TEST(ThreadPool, SizesAndLazyThreads) {
  EXPECT_GE(ThreadPool::default_size(), 4u);
  ThreadPool zero(0);
  EXPECT_EQ(zero.max_threads(), 1u);
  ThreadPool three(3);
  EXPECT_EQ(three.max_threads(), 3u);
  EXPECT_EQ(three.thread_count(), 0u);  // none started before the first job
  EXPECT_EQ(ThreadPool::shared().max_threads(), ThreadPool::default_size());
}

TEST(ThreadPool, OneThreadRunsJobsInSubmitOrderAndTheDestructorFinishesThem) {
  std::vector<int> order;  // only the pool's single thread writes it; joined before reading
  coselect_test::latch release(1);
  {
    ThreadPool pool(1);
    pool.submit([&] {
      release.wait();
      order.push_back(-1);
    });
    for (int i = 0; i < 100; ++i)
      pool.submit([&, i] { order.push_back(i); });
    EXPECT_EQ(pool.thread_count(), 1u);
    release.count_down();
  }  // the destructor runs whatever is still queued, then joins
  ASSERT_EQ(order.size(), 101u);
  EXPECT_EQ(order.front(), -1);
  for (int i = 0; i < 100; ++i)
    EXPECT_EQ(order[static_cast<std::size_t>(i) + 1], i);
}

TEST(ThreadPool, StartsOneThreadPerJobThatFindsNoIdleWorkerUpToItsBound) {
  coselect_test::latch release(1);
  std::atomic<int> ran{0};
  {
    ThreadPool pool(4);
    auto blocking = [&] {
      release.wait();
      ran.fetch_add(1);
    };
    pool.submit(blocking);
    EXPECT_EQ(pool.thread_count(), 1u);
    pool.submit(blocking);
    pool.submit(blocking);
    EXPECT_EQ(pool.thread_count(), 3u);  // every worker is busy: a new thread each time
    for (int i = 0; i < 5; ++i)
      pool.submit(blocking);
    EXPECT_EQ(pool.thread_count(), 4u);  // capped; the rest queue
    release.count_down();
  }
  EXPECT_EQ(ran.load(), 8);
}

// =================================================================================================
// 5. resume_on
// =================================================================================================

TEST(ResumeOn, ContinuesOnTheOtherLoopsThreadAndBack) {
  Scheduler home;
  Scheduler away;
  std::thread away_thread([&] { away.run(); });
  const std::thread::id away_id = away_thread.get_id();
  std::thread::id on_away, on_home;
  Scheduler* current_away = nullptr;
  Scheduler* current_home = nullptr;
  bool slept_on_away = false;
  auto body = [&]() -> Task<int> {
    co_await coselect::resume_on(away);
    on_away = this_thread_id();
    current_away = Scheduler::current();
    co_await coselect::sleep_for(1ms);  // the away loop's timers serve it now
    slept_on_away = this_thread_id() == away_id;
    co_await coselect::resume_on(home);
    on_home = this_thread_id();
    current_home = Scheduler::current();
    co_return 9;
  };
  EXPECT_EQ(home.run(body()), 9);
  away.stop();
  away_thread.join();
  EXPECT_EQ(on_away, away_id);
  EXPECT_EQ(current_away, &away);
  EXPECT_TRUE(slept_on_away);
  EXPECT_EQ(on_home, this_thread_id());
  EXPECT_EQ(current_home, &home);
}

TEST(ResumeOn, ARunWhoseTaskFinishesOnAnotherLoopReturnsItsValue) {
  Scheduler home;
  Scheduler away;
  std::thread away_thread([&] { away.run(); });
  const std::thread::id away_id = away_thread.get_id();
  std::thread::id finished_on;
  auto body = [&]() -> Task<std::string> {
    co_await coselect::resume_on(away);
    finished_on = this_thread_id();
    co_return std::string("done over there");
  };
  EXPECT_EQ(home.run(body()), "done over there");
  away.stop();
  away_thread.join();
  EXPECT_EQ(finished_on, away_id);
}

TEST(ResumeOn, ASchedulerThatIsNotRunningYetTakesTheCoroutineWhenItRuns) {
  Scheduler home;
  Scheduler away;  // not running yet
  std::atomic<bool> hopping{false};
  std::atomic<bool> away_started{false};
  std::thread::id on_away;
  Scheduler* current_away = nullptr;
  bool away_was_started = false;
  std::thread::id on_home;
  std::thread home_thread;
  auto body = [&]() -> Task<int> {
    hopping = true;
    hopping.notify_all();
    co_await coselect::resume_on(away);
    on_away = this_thread_id();
    current_away = Scheduler::current();
    away_was_started = away_started.load();
    co_await coselect::resume_on(home);
    on_home = this_thread_id();
    co_return 1;
  };
  int result = 0;
  home_thread = std::thread([&] { result = home.run(body()); });
  const std::thread::id home_id = home_thread.get_id();
  hopping.wait(false);
  away_started = true;
  std::thread away_thread([&] { away.run(); });
  const std::thread::id away_id = away_thread.get_id();
  home_thread.join();
  away.stop();
  away_thread.join();
  EXPECT_EQ(result, 1);
  EXPECT_TRUE(away_was_started) << "the coroutine continued before its target scheduler ran";
  EXPECT_EQ(on_away, away_id);
  EXPECT_EQ(current_away, &away);
  EXPECT_EQ(on_home, home_id);
}

TEST(ResumeOn, ManyCoroutinesPingPongBetweenTwoLoops) {
  constexpr int kCoroutines = 20;
  constexpr int kHops = 50;
  Scheduler home;
  Scheduler away;
  std::thread away_thread([&] { away.run(); });
  const std::thread::id away_id = away_thread.get_id();
  const std::thread::id home_id = this_thread_id();
  int wrong = 0;  // touched on both threads, but each hop hands over with release/acquire
  std::atomic<int> wrong_atomic{0};
  auto hopper = [&]() -> Task<void> {
    for (int i = 0; i < kHops; ++i) {
      co_await coselect::resume_on(away);
      if (this_thread_id() != away_id) wrong_atomic.fetch_add(1);
      co_await coselect::resume_on(home);
      if (this_thread_id() != home_id) wrong_atomic.fetch_add(1);
    }
  };
  auto body = [&]() -> Task<void> {
    std::vector<Task<void>> all;
    for (int i = 0; i < kCoroutines; ++i)
      all.push_back(hopper());
    co_await coselect::when_all(all);
    co_await coselect::resume_on(home);  // when_all resumes where the last one finished
    if (this_thread_id() != home_id) ++wrong;
  };
  home.run(body());
  away.stop();
  away_thread.join();
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(wrong_atomic.load(), 0);
}

}  // namespace
