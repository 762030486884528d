// Coroutines on two loops (two threads) append multi-line entries to one journal; a Mutex keeps
// each entry in one piece even though its writer suspends half-way through.
//
// A std::mutex cannot be held across a co_await (the coroutine may suspend for long, and it
// would block the whole loop); coselect::Mutex can: a coroutine that finds it taken suspends,
// and unlock() hands it to the oldest waiter, which resumes on its own loop's thread.
#include <coselect.hpp>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct Journal {
  coselect::Mutex mutex;
  std::vector<std::string> lines;  // guarded by mutex
};

coselect::Task<void> writer(Journal& journal, std::string name, int entries) {
  for (int e = 0; e < entries; ++e) {
    coselect::MutexGuard guard = co_await journal.mutex.lock();
    journal.lines.push_back(name + " begins entry " + std::to_string(e));
    co_await coselect::sleep_for(1ms);  // suspends while holding the lock
    journal.lines.push_back(name + " ends entry " + std::to_string(e));
  }  // each guard unlocks as it goes out of scope
}

coselect::Task<void> writers(Journal& journal, const char* loop_name) {
  co_await coselect::when_all(writer(journal, std::string(loop_name) + "/a", 5),
                              writer(journal, std::string(loop_name) + "/b", 5));
}

}  // namespace

int main() {
  Journal journal;
  std::thread other([&journal] {
    coselect::Scheduler loop;
    loop.run(writers(journal, "east"));
  });
  coselect::Scheduler loop;
  loop.run(writers(journal, "west"));
  other.join();

  // Every "begins" line is followed by the "ends" line of the same writer and entry.
  bool whole = journal.lines.size() == 40;
  for (std::size_t i = 0; whole && i + 1 < journal.lines.size(); i += 2) {
    const std::string& begin = journal.lines[i];
    const std::string& end = journal.lines[i + 1];
    const auto cut = begin.find(" begins ");
    whole =
        cut != std::string::npos && end == begin.substr(0, cut) + " ends " + begin.substr(cut + 8);
  }
  for (std::size_t i = 0; i < 6 && i < journal.lines.size(); ++i)
    std::printf("%s\n", journal.lines[i].c_str());
  std::printf("... %zu lines, entries %s\n", journal.lines.size(),
              whole ? "never interleaved" : "INTERLEAVED");
  return whole ? 0 : 1;
}
