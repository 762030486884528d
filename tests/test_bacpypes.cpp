// coselect/bacpypes.hpp: the OneShotTask / RecurringTask port aid, on virtual time.
#include <gtest/gtest.h>
#include <coselect.hpp>

#include <chrono>
#include <stdexcept>
#include <vector>

namespace {

using namespace std::chrono_literals;
using coselect::Scheduler;
using coselect::TimeMachine;

double seconds(Scheduler::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

class Reminder : public coselect::bacpypes::OneShotTask {
 public:
  using OneShotTask::OneShotTask;
  std::vector<double> runs;

 protected:
  void process_task() override { runs.push_back(seconds(scheduler().now())); }
};

class Ticker : public coselect::bacpypes::RecurringTask {
 public:
  using RecurringTask::RecurringTask;
  std::vector<double> runs;
  int suspend_after = -1;
  int throw_at = -1;

 protected:
  void process_task() override {
    runs.push_back(seconds(scheduler().now()));
    if (static_cast<int>(runs.size()) == suspend_after) suspend_task();
    if (static_cast<int>(runs.size()) == throw_at) throw std::runtime_error("tick failed");
  }
};

TEST(OneShotTask, RunsOnceAtItsTime) {
  TimeMachine tm;
  Scheduler s(tm);
  Reminder r(s);
  r.install_task(Scheduler::time_point(2s));
  EXPECT_TRUE(r.is_scheduled());
  s.run_for(5s);
  EXPECT_EQ(r.runs, std::vector<double>{2.0});
  EXPECT_FALSE(r.is_scheduled());
}

TEST(OneShotTask, ReinstallMovesIt) {
  TimeMachine tm;
  Scheduler s(tm);
  Reminder r(s);
  r.install_task(Scheduler::time_point(2s));
  r.install_task_after(3s);
  s.run_for(5s);
  EXPECT_EQ(r.runs, std::vector<double>{3.0});
}

TEST(OneShotTask, SuspendResumeAndDestruction) {
  TimeMachine tm;
  Scheduler s(tm);
  Reminder r(s);
  r.install_task(Scheduler::time_point(1s));
  r.suspend_task();
  s.run_for(2s);
  EXPECT_TRUE(r.runs.empty());
  r.resume_task();  // the stored time is past: runs at once
  s.run_for(0s);
  EXPECT_EQ(r.runs, std::vector<double>{2.0});
  {
    Reminder gone(s);
    gone.install_task_after(1s);
  }  // destroyed: unscheduled, so no callback into a dead object
  s.run_for(2s);
}

TEST(RecurringTask, RunsOnTheGridWithOffset) {
  TimeMachine tm;
  Scheduler s(tm);
  Ticker t(s, 1000ms, -100ms);
  t.install_task();
  s.run_for(3s);
  EXPECT_EQ(t.runs, (std::vector<double>{0.9, 1.9, 2.9}));
  t.install_task(1500ms);  // new interval persists, offset reset
  s.run_for(3s);
  EXPECT_EQ(t.runs, (std::vector<double>{0.9, 1.9, 2.9, 4.5, 6.0}));
}

TEST(RecurringTask, SuspendingItselfStaysSuspendedUntilResumed) {
  TimeMachine tm;
  Scheduler s(tm);
  Ticker t(s, 1s);
  t.suspend_after = 2;
  t.install_task();
  s.run_for(5s);
  EXPECT_EQ(t.runs, (std::vector<double>{1.0, 2.0}));
  EXPECT_FALSE(t.is_scheduled());
  t.resume_task();
  s.run_for(2s);
  EXPECT_GE(t.runs.size(), 3u);
}

TEST(RecurringTask, AThrowingRunIsReportedAndTheTaskKeepsRecurring) {
  TimeMachine tm;
  Scheduler s(tm);
  Ticker t(s, 1s);
  t.throw_at = 1;
  t.install_task();
  EXPECT_THROW(s.run_for(5s), std::runtime_error);
  EXPECT_TRUE(t.is_scheduled());
  s.run_for(2s);
  EXPECT_EQ(t.runs.size(), 3u);
}

TEST(RecurringTask, IntervalMustBePositive) {
  TimeMachine tm;
  Scheduler s(tm);
  Ticker t(s, 0s);
  EXPECT_THROW(t.install_task(), std::invalid_argument);
  EXPECT_THROW(t.install_task(-1s), std::invalid_argument);
}

}  // namespace
