// Tests of when_all (DESIGN.md §1 awaitables, "Fine print": when_all).
//
// Sections
//   0. Helpers (anonymous namespace)
//   1. Variadic form: tuple in argument order, std::monostate for void, move-only results
//   2. Range form: vector in order, void, empty, 10,000 children, lifetime of the range
//   3. Concurrency and synchronous children
//   4. Failures: first in argument order, rethrown only after every child finished
//   5. Threads: children that finish through run_in_thread, or on another scheduler's thread
//   6. Lifetime: a pending when_all destroyed with its scheduler frees every child
//
// Most tests run on virtual time (TimeMachine): children finish in a chosen order, exactly and
// deterministically, without real waiting. Coroutines only record; assertions follow run().

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
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
using coselect::Scheduler;
using coselect::sleep_for;
using coselect::Task;
using coselect::when_all;
using coselect_test::FrameProbe;

// FrameProbe for a frame that may never start: a coroutine's parameters live in its frame from
// the call on, so a parameter probe counts the frame's destruction even if its body never ran.
class ParamProbe {
 public:
  explicit ParamProbe(int& destroyed) : destroyed_(&destroyed) {}
  ParamProbe(ParamProbe&& other) noexcept : destroyed_(std::exchange(other.destroyed_, nullptr)) {}
  ParamProbe& operator=(ParamProbe&&) = delete;
  ~ParamProbe() {
    if (destroyed_ != nullptr) ++*destroyed_;
  }

 private:
  int* destroyed_;
};

// The kernel's id of the calling thread. Coroutines that change threads must not use
// std::this_thread::get_id() for this: it calls pthread_self(), which glibc declares
// __attribute__((const)), and clang (seen with 14) then reuses one call's result across
// suspension points, so a coroutine resumed on another thread still sees the old id.
long thread_id() {
  return static_cast<long>(coselect_test::current_tid());
}

using coselect_test::VirtualLoop;  // sleeps decide the order in which children finish

template <class T>
Task<T> value_after(Scheduler::duration d, T value) {
  co_await sleep_for(d);
  co_return value;
}

Task<void> nothing_after(Scheduler::duration d, int& finished) {
  co_await sleep_for(d);
  ++finished;
}

// A type that can only be moved, and has no default constructor.
struct MoveOnly {
  explicit MoveOnly(int v) : value(std::make_unique<int>(v)) {}
  std::unique_ptr<int> value;
};

// =================================================================================================
// 1. Variadic form
// =================================================================================================

TEST(WhenAll, TupleResultsInArgumentOrder) {
  VirtualLoop loop;
  // Finish in the reverse of argument order.
  auto all =
      when_all(value_after(3h, 1), value_after(2h, std::string("two")), value_after(1h, 3.5));
  static_assert(std::is_same_v<decltype(all), Task<std::tuple<int, std::string, double>>>);
  const auto [a, b, c] = loop.s.run(std::move(all));
  EXPECT_EQ(a, 1);
  EXPECT_EQ(b, "two");
  EXPECT_EQ(c, 3.5);
  EXPECT_EQ(loop.elapsed(), 3h) << "children ran one after the other, not concurrently";
}

TEST(WhenAll, VoidChildIsMonostate) {
  VirtualLoop loop;
  int finished = 0;
  auto all = when_all(value_after(1h, 7), nothing_after(2h, finished), value_after(30min, 'c'));
  static_assert(std::is_same_v<decltype(all), Task<std::tuple<int, std::monostate, char>>>);
  const auto result = loop.s.run(std::move(all));
  EXPECT_EQ(result, std::make_tuple(7, std::monostate{}, 'c'));
  EXPECT_EQ(finished, 1);
  EXPECT_EQ(loop.elapsed(), 2h);
}

TEST(WhenAll, NoArgumentsYieldsEmptyTuple) {
  Scheduler s;
  auto all = when_all();
  static_assert(std::is_same_v<decltype(all), Task<std::tuple<>>>);
  EXPECT_EQ(s.run(std::move(all)), std::tuple<>());
}

TEST(WhenAll, MoveOnlyResults) {
  VirtualLoop loop;
  auto all = when_all(value_after(2h, std::make_unique<int>(1)), value_after(1h, MoveOnly(2)));
  auto [p, m] = loop.s.run(std::move(all));
  ASSERT_NE(p, nullptr);
  ASSERT_NE(m.value, nullptr);
  EXPECT_EQ(*p, 1);
  EXPECT_EQ(*m.value, 2);
}

// =================================================================================================
// 2. Range form
// =================================================================================================

TEST(WhenAllRange, VectorOfIntInRangeOrder) {
  VirtualLoop loop;
  std::vector<Task<int>> tasks;
  for (int i = 0; i < 8; ++i)
    tasks.push_back(value_after(std::chrono::hours(8 - i), i * 10));  // last finishes first
  auto all = when_all(std::move(tasks));
  static_assert(std::is_same_v<decltype(all), Task<std::vector<int>>>);
  EXPECT_EQ(loop.s.run(std::move(all)), (std::vector<int>{0, 10, 20, 30, 40, 50, 60, 70}));
  EXPECT_EQ(loop.elapsed(), 8h);
}

TEST(WhenAllRange, LvalueRangeIsMovedFrom) {
  VirtualLoop loop;
  std::vector<Task<int>> tasks;
  tasks.push_back(value_after(1h, 1));
  tasks.push_back(value_after(1h, 2));
  std::vector<int> result;
  auto parent = [](std::vector<Task<int>>& tasks, std::vector<int>& result) -> Task<void> {
    result = co_await when_all(tasks);
  };
  loop.s.run(parent(tasks, result));
  EXPECT_EQ(result, (std::vector<int>{1, 2}));
  ASSERT_EQ(tasks.size(), 2u);
  EXPECT_FALSE(tasks[0].valid());
  EXPECT_FALSE(tasks[1].valid());
}

TEST(WhenAllRange, VectorOfVoidYieldsVoid) {
  VirtualLoop loop;
  int finished = 0;
  std::vector<Task<void>> tasks;
  for (int i = 0; i < 5; ++i)
    tasks.push_back(nothing_after(std::chrono::minutes(5 - i), finished));
  auto all = when_all(std::move(tasks));
  static_assert(std::is_same_v<decltype(all), Task<void>>);
  loop.s.run(std::move(all));
  EXPECT_EQ(finished, 5);
  EXPECT_EQ(loop.elapsed(), 5min);
}

TEST(WhenAllRange, EmptyRange) {
  Scheduler s;
  EXPECT_EQ(s.run(when_all(std::vector<Task<int>>{})), std::vector<int>{});
  s.run(when_all(std::vector<Task<void>>{}));  // returns at all: nothing to wait for
  std::vector<Task<std::string>> none;
  EXPECT_TRUE(s.run(when_all(none)).empty());
}

TEST(WhenAllRange, MoveOnlyResults) {
  VirtualLoop loop;
  std::vector<Task<MoveOnly>> tasks;
  for (int i = 0; i < 4; ++i)
    tasks.push_back(value_after(std::chrono::minutes(4 - i), MoveOnly(i)));
  std::vector<MoveOnly> result = loop.s.run(when_all(std::move(tasks)));
  ASSERT_EQ(result.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    ASSERT_NE(result[static_cast<std::size_t>(i)].value, nullptr);
    EXPECT_EQ(*result[static_cast<std::size_t>(i)].value, i);
  }
}

Task<int> maybe_sleeping_child(int i) {
  if (i % 3 != 0) co_await sleep_for(std::chrono::milliseconds(i % 50));
  co_return i;
}

TEST(WhenAllRange, TenThousandChildren) {
  constexpr int kChildren = 10'000;
  VirtualLoop loop;
  std::vector<Task<int>> tasks;
  tasks.reserve(kChildren);
  for (int i = 0; i < kChildren; ++i)
    tasks.push_back(maybe_sleeping_child(i));
  const std::vector<int> result = loop.s.run(when_all(std::move(tasks)));
  ASSERT_EQ(result.size(), static_cast<std::size_t>(kChildren));
  for (int i = 0; i < kChildren; ++i)
    ASSERT_EQ(result[static_cast<std::size_t>(i)], i) << "index " << i;
  EXPECT_EQ(loop.elapsed(), 49ms);

  int finished = 0;
  std::vector<Task<void>> voids;
  for (int i = 0; i < kChildren; ++i)
    voids.push_back(nothing_after(std::chrono::microseconds(i % 7), finished));
  loop.s.run(when_all(std::move(voids)));
  EXPECT_EQ(finished, kChildren);
}

Task<int> probed_child(int i, ParamProbe) {
  co_await sleep_for(1min);
  co_return i;
}

std::vector<Task<int>> make_children(int n, int& destroyed) {
  std::vector<Task<int>> tasks;
  for (int i = 0; i < n; ++i)
    tasks.push_back(probed_child(i, ParamProbe(destroyed)));
  return tasks;
}

// BUG: the range overload is a lazy coroutine that takes its range as `Range&&`: the frame keeps
// a reference, not the range. A when_all task created from a temporary range and awaited (or
// spawned) later finds the temporary destroyed, and its children with it. Observed here without
// undefined behaviour: the children's frames are gone before the when_all task starts. (Awaiting
// it would then read a dead vector: ASan reports stack-use-after-scope in when_all.hpp.)
// Proposed fix: take the range by value (decay-copy / move it into the frame), e.g. a non-coroutine
// `when_all(Range&& r)` that moves the tasks into a std::vector<Task<T>> and passes that vector by
// value to the coroutine that does the work.
TEST(WhenAllRange, TaskMadeFromTemporaryRangeOutlivesIt) {
  VirtualLoop loop;
  int destroyed = 0;
  Task<std::vector<int>> all = when_all(make_children(3, destroyed));  // temporary ends here
  EXPECT_EQ(destroyed, 0) << "the children died with the temporary range, before when_all ran";
  if (destroyed == 0) {  // awaiting a task whose range is dead would be undefined behaviour
    EXPECT_EQ(loop.s.run(std::move(all)), (std::vector<int>{0, 1, 2}));
  }
}

// =================================================================================================
// 3. Concurrency and synchronous children
// =================================================================================================

// Each child needs the other to have started: run one after the other, the first would wait for
// an event that nobody sets yet (and time out, after a virtual hour, reporting false).
TEST(WhenAll, ChildrenRunConcurrently) {
  VirtualLoop loop;
  coselect::WaitableEvent a_started, b_started;
  auto child = [](coselect::WaitableEvent& mine, coselect::WaitableEvent& other) -> Task<bool> {
    mine.set();
    co_return co_await other.wait(1h);
  };
  const auto [a_saw_b, b_saw_a] =
      loop.s.run(when_all(child(a_started, b_started), child(b_started, a_started)));
  EXPECT_TRUE(a_saw_b);
  EXPECT_TRUE(b_saw_a);
  EXPECT_LT(loop.elapsed(), 1h);
}

TEST(WhenAllRange, ChildrenRunConcurrently) {
  VirtualLoop loop;
  constexpr int kChildren = 16;
  coselect::WaitableEvent all_started;
  int started = 0;
  std::vector<Task<bool>> tasks;
  for (int i = 0; i < kChildren; ++i) {
    tasks.push_back([](coselect::WaitableEvent& all_started, int& started) -> Task<bool> {
      if (++started == kChildren) all_started.set();
      co_return co_await all_started.wait(1h);
    }(all_started, started));
  }
  const std::vector<bool> result = loop.s.run(when_all(std::move(tasks)));
  EXPECT_EQ(result, std::vector<bool>(kChildren, true));
  EXPECT_LT(loop.elapsed(), 1h);
}

Task<int> synchronous(int v) {
  co_return v;
}
Task<void> synchronous_void(int& count) {
  ++count;
  co_return;
}

TEST(WhenAll, SynchronousChildren) {
  Scheduler s;
  int count = 0;
  EXPECT_EQ(s.run(when_all(synchronous(1), synchronous_void(count), synchronous(3))),
            std::make_tuple(1, std::monostate{}, 3));
  EXPECT_EQ(count, 1);

  // Mixed: synchronous children before and after one that suspends.
  VirtualLoop loop;
  EXPECT_EQ(loop.s.run(when_all(synchronous(1), value_after(1h, 2), synchronous(3))),
            std::make_tuple(1, 2, 3));
  EXPECT_EQ(loop.elapsed(), 1h);
}

TEST(WhenAllRange, SynchronousChildren) {
  Scheduler s;
  std::vector<Task<int>> tasks;
  for (int i = 0; i < 100; ++i)
    tasks.push_back(synchronous(i));
  const std::vector<int> result = s.run(when_all(std::move(tasks)));
  ASSERT_EQ(result.size(), 100u);
  for (int i = 0; i < 100; ++i)
    EXPECT_EQ(result[static_cast<std::size_t>(i)], i);

  int count = 0;
  std::vector<Task<void>> voids;
  for (int i = 0; i < 100; ++i)
    voids.push_back(synchronous_void(count));
  s.run(when_all(std::move(voids)));
  EXPECT_EQ(count, 100);
}

// A when_all nested in a when_all.
TEST(WhenAll, Nested) {
  VirtualLoop loop;
  auto inner = [](int base) -> Task<std::tuple<int, int>> {
    co_return co_await when_all(value_after(1h, base), value_after(2h, base + 1));
  };
  const auto [x, y] = loop.s.run(when_all(inner(10), inner(20)));
  EXPECT_EQ(x, std::make_tuple(10, 11));
  EXPECT_EQ(y, std::make_tuple(20, 21));
  EXPECT_EQ(loop.elapsed(), 2h);
}

// =================================================================================================
// 4. Failures
// =================================================================================================

struct Outcome {
  std::string caught;  // what() of the exception when_all rethrew
  bool others_done_at_catch = false;
  Scheduler::duration caught_at{};
};

Task<int> fail_after(Scheduler::duration d, std::string what) {
  if (d > Scheduler::duration::zero()) co_await sleep_for(d);
  throw std::runtime_error(what);
}

Task<int> succeed_after(Scheduler::duration d, int& done) {
  co_await sleep_for(d);
  ++done;
  co_return 0;
}

// Argument order decides, not time order: "second" fails at +1h, "third" fails at once (before
// any child suspends), and the first child succeeds at +3h. when_all rethrows "second", and only
// after the first child has finished.
TEST(WhenAll, FirstFailureInArgumentOrderRethrownAfterAllFinished) {
  VirtualLoop loop;
  int done = 0;
  Outcome out;
  auto parent = [](VirtualLoop& loop, int& done, Outcome& out) -> Task<void> {
    try {
      (void)co_await when_all(succeed_after(3h, done), fail_after(1h, "second"),
                              fail_after(0h, "third"), succeed_after(2h, done));
    } catch (const std::runtime_error& e) {
      out.caught = e.what();
      out.others_done_at_catch = done == 2;
      out.caught_at = loop.elapsed();
    }
  };
  loop.s.run(parent(loop, done, out));
  EXPECT_EQ(out.caught, "second");
  EXPECT_TRUE(out.others_done_at_catch) << "rethrown before every child had finished";
  EXPECT_EQ(out.caught_at, 3h);
}

TEST(WhenAllRange, FirstFailureInRangeOrderRethrownAfterAllFinished) {
  VirtualLoop loop;
  int done = 0;
  Outcome out;
  std::vector<Task<int>> tasks;
  tasks.push_back(succeed_after(1h, done));
  tasks.push_back(fail_after(2h, "x1"));
  tasks.push_back(succeed_after(4h, done));
  tasks.push_back(fail_after(0h, "x2"));
  auto parent = [](VirtualLoop& loop, std::vector<Task<int>> tasks, int& done,
                   Outcome& out) -> Task<void> {
    try {
      (void)co_await when_all(std::move(tasks));
    } catch (const std::runtime_error& e) {
      out.caught = e.what();
      out.others_done_at_catch = done == 2;
      out.caught_at = loop.elapsed();
    }
  };
  loop.s.run(parent(loop, std::move(tasks), done, out));
  EXPECT_EQ(out.caught, "x1");
  EXPECT_TRUE(out.others_done_at_catch);
  EXPECT_EQ(out.caught_at, 4h);
}

TEST(WhenAllRange, VoidFailureRethrown) {
  Scheduler s;
  std::vector<Task<void>> tasks;
  int count = 0;
  tasks.push_back(synchronous_void(count));
  tasks.push_back([]() -> Task<void> {
    throw std::logic_error("void child failed");
    co_return;
  }());
  EXPECT_THROW(s.run(when_all(std::move(tasks))), std::logic_error);
  EXPECT_EQ(count, 1);
}

// =================================================================================================
// 5. Threads
// =================================================================================================

// Children hand blocking work to run_in_thread. The work runs on pool threads (all four at once:
// each waits, boundedly, until all have started), each child resumes on the loop thread (that is
// run_in_thread's contract), so the last child to finish - and with it the parent, which
// when_all resumes where the last child finished - is on the loop thread too.
TEST(WhenAllThreads, ChildrenUsingRunInThreadResumeParentOnLoopThread) {
  constexpr int kChildren = 4;
  coselect::ThreadPool pool(kChildren);
  Scheduler s;
  std::mutex mutex;
  std::condition_variable cv;
  int arrived = 0;
  struct Seen {
    long worker = 0;
    long resumed_on = 0;
    bool met_all = false;
  };
  std::vector<Seen> seen(kChildren);
  long parent_on = 0;
  auto child = [](coselect::ThreadPool& pool, std::mutex& mutex, std::condition_variable& cv,
                  int& arrived, Seen& seen) -> Task<int> {
    seen.met_all = co_await coselect::run_in_thread(pool, [&] {
      seen.worker = thread_id();
      std::unique_lock lock(mutex);
      ++arrived;
      cv.notify_all();
      return cv.wait_for(lock, 5s, [&] { return arrived == kChildren; });
    });
    seen.resumed_on = thread_id();
    co_return 1;
  };
  auto parent = [&]() -> Task<int> {
    std::vector<Task<int>> tasks;
    for (int i = 0; i < kChildren; ++i)
      tasks.push_back(child(pool, mutex, cv, arrived, seen[static_cast<std::size_t>(i)]));
    const std::vector<int> r = co_await when_all(std::move(tasks));
    parent_on = thread_id();
    int sum = 0;
    for (int v : r)
      sum += v;
    co_return sum;
  };
  EXPECT_EQ(s.run(parent()), kChildren);
  const long loop_thread = thread_id();
  EXPECT_EQ(parent_on, loop_thread);
  for (const Seen& x : seen) {
    EXPECT_NE(x.worker, loop_thread);
    EXPECT_NE(x.worker, 0);
    EXPECT_EQ(x.resumed_on, loop_thread);
    EXPECT_TRUE(x.met_all) << "the run_in_thread calls did not run concurrently";
  }
}

// Children that move to another scheduler's thread (resume_on) finish there: the parent resumes
// on the thread where the last child finished (when_all.hpp's contract), here the other loop's,
// and gets back to its own loop with resume_on. (Children that all finish before the parent has
// suspended let it continue on its own thread instead; here they wait for `go`, which a helper on
// the home loop sets, and the helper can only run once the parent has suspended.)
TEST(WhenAllThreads, ChildrenFinishingOnAnotherLoopResumeParentThere) {
  Scheduler home;
  Scheduler away;
  coselect::WaitableEvent go;
  std::atomic<long> away_id{0};
  std::thread away_thread([&] {
    away_id = thread_id();
    away.run();
  });
  std::vector<long> child_on(3);
  long parent_after_when_all = 0;
  long parent_at_end = 0;
  auto child = [](Scheduler& away, coselect::WaitableEvent& go, int v, long& on) -> Task<int> {
    co_await coselect::resume_on(away);
    co_await go.wait();
    on = thread_id();
    co_return v;
  };
  auto parent = [&]() -> Task<int> {
    const auto [a, b, c] =
        co_await when_all(child(away, go, 1, child_on[0]), child(away, go, 2, child_on[1]),
                          child(away, go, 3, child_on[2]));
    parent_after_when_all = thread_id();
    co_await coselect::resume_on(home);
    parent_at_end = thread_id();
    co_return a * 100 + b * 10 + c;
  };
  home.spawn([](coselect::WaitableEvent& go) -> Task<void> {
    // Spawned work starts before the root: yield once so that the parent is suspended in
    // when_all (its children handed to `away`) before they may finish.
    co_await coselect::yield_now();
    go.set();
  }(go));
  int result = 0;
  try {
    result = home.run(parent());
  } catch (...) {
    away.stop();
    away_thread.join();
    throw;
  }
  away.stop();
  away_thread.join();
  EXPECT_EQ(result, 123);
  for (long id : child_on)
    EXPECT_EQ(id, away_id.load());
  EXPECT_EQ(parent_after_when_all, away_id.load());
  EXPECT_EQ(parent_at_end, thread_id());
}

// =================================================================================================
// 6. Lifetime
// =================================================================================================

// A scheduler destroyed while a when_all waits destroys the parent, the when_all frame and every
// child (ASan: no use after free, no leak).
TEST(WhenAllLifetime, DestroyedWhilePendingFreesEveryChild) {
  coselect::TimeMachine tm;
  int destroyed = 0;
  bool parent_resumed = false;
  coselect::WaitableEvent never;  // outlives the scheduler: its waiter goes with the frames
  {
    Scheduler s(tm);
    auto parent = [](int& destroyed, bool& resumed, coselect::WaitableEvent& never) -> Task<void> {
      FrameProbe probe{destroyed};
      std::vector<Task<int>> tasks;
      for (int i = 0; i < 5; ++i)
        tasks.push_back(probed_child(i, ParamProbe(destroyed)));
      auto waits_on_event = [](coselect::WaitableEvent& ev, int& destroyed) -> Task<void> {
        FrameProbe probe{destroyed};
        co_await ev.wait();
      };
      (void)co_await when_all(when_all(std::move(tasks)), waits_on_event(never, destroyed),
                              synchronous(1));
      resumed = true;
    };
    s.spawn(parent(destroyed, parent_resumed, never));
    s.run_for(30s);  // the children sleep for a minute; the event is never set
    EXPECT_EQ(destroyed, 0);
  }
  EXPECT_EQ(destroyed, 7);  // parent + 5 sleeping children + the event waiter
  EXPECT_FALSE(parent_resumed);
}

}  // namespace
