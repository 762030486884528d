// Worker threads finish jobs and set events; coroutines on one loop await them.
//
// Each job has its own WaitableEvent. A worker thread does the (blocking) work and calls set();
// the coroutine waiting for that job resumes on the loop thread — never on the worker — so it
// can touch loop-owned state without locks. One coroutine uses a timeout to report slow jobs.
#include <coselect.hpp>

#include <array>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct Job {
  Job(int job_id, std::chrono::milliseconds duration) : id(job_id), work(duration) {}
  int id;
  std::chrono::milliseconds work;
  int result = 0;                // written by the worker before set()
  coselect::WaitableEvent done;  // set() publishes `result` to whoever wakes
};

coselect::Task<int> collect(Job& job) {
  for (;;) {
    // Bind the result first: GCC 12 miscompiles co_await inside an if/while condition.
    const bool done = co_await job.done.wait(40ms);
    if (done) break;
    std::printf("[loop]   job %d is still running...\n", job.id);
  }
  std::printf("[loop]   job %d -> %d (resumed on the loop thread)\n", job.id, job.result);
  co_return job.result;
}

coselect::Task<int> supervise(std::array<Job, 3>& jobs) {
  auto [a, b, c] =
      co_await coselect::when_all(collect(jobs[0]), collect(jobs[1]), collect(jobs[2]));
  co_return a + b + c;
}

}  // namespace

int main() {
  std::array<Job, 3> jobs{{{1, 30ms}, {2, 90ms}, {3, 10ms}}};

  std::vector<std::thread> workers;
  for (Job& job : jobs) {
    workers.emplace_back([&job] {
      std::this_thread::sleep_for(job.work);  // stands in for blocking work
      job.result = job.id * 100;
      job.done.set();  // any thread; wakes the loop through the event's pipe
    });
  }

  coselect::Scheduler loop;
  const int total = loop.run(supervise(jobs));
  for (std::thread& w : workers)
    w.join();

  std::printf("total %d\n", total);
  return total == 600 ? 0 : 1;
}
