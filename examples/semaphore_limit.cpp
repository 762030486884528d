// Ten downloads, at most three at a time: a Semaphore bounds how many coroutines do something
// at once, and a plain thread can hand out extra units with release().
#include <coselect.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct Stats {
  int active = 0;
  int most = 0;
  int done = 0;
};

coselect::Task<void> download(coselect::Semaphore& slots, Stats& stats, int id) {
  co_await slots.acquire();  // waits (first in, first out) while three are running
  stats.most = std::max(stats.most, ++stats.active);
  std::printf("[loop] download %d starts (%d running)\n", id, stats.active);
  co_await coselect::sleep_for(5ms);  // stands in for the transfer
  --stats.active;
  ++stats.done;
  slots.release();  // the next waiter takes the slot
}

}  // namespace

int main() {
  coselect::Semaphore slots(3);
  Stats stats;
  coselect::Scheduler loop;
  std::vector<coselect::Task<void>> downloads;
  for (int id = 0; id < 10; ++id)
    downloads.push_back(download(slots, stats, id));
  loop.run(coselect::when_all(std::move(downloads)));
  std::printf("%d downloads, at most %d at once\n", stats.done, stats.most);

  // release() works from any thread: here one gives the loop two more slots.
  std::thread([&slots] { slots.release(2); }).join();
  const bool five_free = slots.available() == 5;
  return stats.done == 10 && stats.most == 3 && five_free ? 0 : 1;
}
