// Model-based fuzzing of WaitableEvent, Scheduler and TaskManager (issue 7).
//
// The input is a program. Its first byte picks the clock (bit 0: 1 = virtual time under a
// TimeMachine, 0 = the real clock with tiny durations); every following op is one byte
// (`byte % kOpCount`, see enum Op) plus the argument bytes that op reads (a missing byte reads
// as 0). At most kMaxOps ops run. The program drives three event slots, one scheduler (run by
// the fuzzing thread itself, between ops), two helper threads with a command queue each, and a
// ThreadPool for run_in_thread. After the last op the harness releases everything, drains the
// loop, checks the final state and tears everything down.
//
// The reference model and the invariants it checks (a violation prints the line and aborts):
//  * Event flags: ops of the fuzzing thread (and of coroutines on its loop) update the model
//    flag at once; ops posted to helpers make a slot "uncertain" until the next sync, where the
//    flag read back must be the last value written by one of the threads that wrote it.
//  * Lost wake-ups: a coroutine waiting on an event when set() is called (by the fuzzing
//    thread between runs, a coroutine on the loop, or a helper, known after a sync) must come
//    back `released` by the end of the next uninterrupted run; a helper thread known to be
//    blocked in wait_blocking() (registered: white-box, through detail::event_access) when a
//    set() happens must return true, without the rescue set() the sync gives other waiters.
//    set() followed by clear() (a pulse) must release them too; destroying an event after a
//    set() must not turn that release into operation_canceled.
//  * No spurious release: a waiter that reports `released` saw the event set when it began,
//    or some set() of that event completed after it began.
//  * Cancellation: a coroutine ends with operation_canceled only if its event was destroyed or
//    its JoinHandle::cancel() was called; one cancelled from the fuzzing thread while it
//    waited has resumed by the end of the next uninterrupted run (a stop from another thread
//    is never lost, and resumes the waiter once, on its loop thread).
//  * Timeouts never fire early (blocking waits, coroutine waits and sleeps); on virtual time
//    a timeout or sleep that is due by the end of an uninterrupted run has ended.
//  * Exactly once: every call_soon/call_later runs once per (re)installation, never before its
//    due time, never after suspend(), always on the loop thread; TaskHandle::scheduled() agrees
//    with the model; helper-posted callbacks run exactly once; every coroutine handed to a
//    helper for TaskManager::resume() and every run_in_thread job resumes once on the loop.
//  * An exception thrown by a callback is rethrown by run_until(), once per throw.
//  * At rest: an event's read end is readable only while the event is set, readable whenever
//    it is set and fileno() was handed out, and never holds more than one byte (FIONREAD).
//  * Channel<T> (one channel of capacity 1-3 per input): every value has a unique id; a value
//    whose send was accepted (try_send or co_await send() returned true) is received exactly
//    once by the end; one whose send was refused (false, a timeout, a cancellation) is never
//    received; no value is received twice. Coroutine senders and receivers may be cancelled
//    (kCancel), time out, or be destroyed with their scheduler (a receiver destroyed before it
//    resumed takes a value handed to it along: values sent before that are exempt from the
//    "received" check); after the driver's close(), try_send fails. finish() closes the
//    channel and drains it.
//  * Nothing leaks: the process has as many fds after the input as before (ASan checks memory).
//
// Built two ways: with -fsanitize=fuzzer (fuzz/CMakeLists.txt, clang) for libFuzzer, and with
// fuzz/replay_main.cpp as a plain program that replays the corpus in the regular test builds.
// fuzz/make_corpus.py writes the seed corpus from readable programs (keep its Op table in step
// with the enum below).

#include <dirent.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <coselect.hpp>
#include "../tests/support/thread_probe.hpp"

namespace {

using coselect::Scheduler;
using coselect::Task;
using coselect::TaskHandle;
using coselect::ThreadPool;
using coselect::TimeMachine;
using coselect::WaitableEvent;
using coselect_test::blocked_syscall;
using Real = std::chrono::steady_clock;
using ns = std::chrono::nanoseconds;
using namespace std::chrono_literals;

[[noreturn]] void violated(const char* condition, const char* what, int line) {
  std::fprintf(stderr, "event_model_fuzzer: invariant violated (line %d): %s\n    check: %s\n",
               line, what, condition);
  std::fflush(stderr);
  std::abort();
}

#define MODEL_CHECK(condition, what)                          \
  do {                                                        \
    if (!(condition)) violated(#condition, (what), __LINE__); \
  } while (false)

constexpr int kEvents = 3;
constexpr int kHelpers = 2;
constexpr int kHandleSlots = 4;
constexpr int kDriver = kHelpers;  // index of the fuzzing thread in EventSlot::last
constexpr std::size_t kMaxOps = 128;
// A wait that must end but has not after this long is a lost wake-up (or a hang).
constexpr auto kGuard = std::chrono::seconds(5);

// The ops. Numbers are part of the corpus format: append, never reorder.
enum Op : std::uint8_t {
  kSet,              // slot                    set() on the fuzzing thread
  kClear,            // slot                    clear()
  kPulse,            // slot                    set(); clear()
  kExport,           // slot                    fileno() (the pipe must then mirror the flag)
  kDriverWait,       // slot, code              wait_blocking(<= 0 or tiny) on the fuzzing thread
  kHelperSet,        // helper, slot            set() on a helper thread
  kHelperClear,      // helper, slot            clear() on a helper thread
  kHelperPulse,      // helper, slot            set(); clear() on a helper thread
  kHelperWait,       // helper, slot, code      wait_blocking(code) on a helper thread
  kCoWait,           // slot, code              spawn: co_await ev.wait() / ev.wait(timeout)
  kLoopSet,          // slot                    spawn: set() from a coroutine on the loop
  kLoopPulse,        // slot                    spawn: set(); clear() from the loop
  kSleep,            // code                    spawn: co_await sleep_for(code)
  kRun,              // code                    run_until(now + code)
  kStop,             //                         stop() from the fuzzing thread
  kHelperStop,       // helper                  stop() from a helper thread
  kCallSoon,         // handle                  call_soon from the fuzzing thread
  kCallLater,        // handle, code            call_later(code)
  kCallThrow,        //                         call_soon of a callback that throws
  kSuspend,          // handle                  TaskHandle::suspend() on the fuzzing thread
  kResume,           // handle                  TaskHandle::resume()
  kLoopSuspend,      // handle                  suspend() from a callback on the loop
  kLoopResume,       // handle                  resume() from a callback on the loop
  kHelperSuspend,    // helper, handle          suspend() from a helper thread
  kHelperResume,     // helper, handle          resume() from a helper thread
  kHelperCallSoon,   // helper                  call_soon from a helper thread
  kHelperCallLater,  // helper, code            call_later from a helper thread
  kHandoff,          // helper                  spawn: a coroutine a helper resumes (tasks().resume)
  kRunInThread,      // code                    spawn: co_await run_in_thread (odd code: throws)
  kDestroyEvent,     // slot                    destroy the event (coroutine waiters: canceled)
  kCreateEvent,      // slot                    create an event in an empty slot
  kRecreateScheduler,  //                         destroy the scheduler (and its frames), make anew
  kSync,               //                         wait for the helpers; check the model
  kRunWake,            // helper, slot, mode      run() (no limit) until a helper's set() wakes it
  kCancel,             // code                    JoinHandle::cancel() of a coroutine waiter or
                       //                         sleeper (code picks it; odd: from a helper)
                       //                         (mode: set, pulse, 64 pulses, 64 pulses + set)
  kChTrySend,          //                         try_send() of a new value on the fuzzing thread
  kChTryReceive,       //                         try_receive() on the fuzzing thread
  kChCoSend,           // code                    spawn: co_await send() (code 4: untimed, else
                       //                         under with_timeout)
  kChCoReceive,        // code                    spawn: co_await receive() (likewise)
  kChHelperSend,       // helper                  try_send() of a new value on a helper thread
  kChHelperReceive,    // helper                  try_receive() on a helper thread
  kChClose,            // code                    close() (even code: fuzzing thread; odd: helper)
  kOpCount
};

class Program {
 public:
  Program(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  bool done() const { return pos_ >= size_; }
  std::uint8_t next() { return pos_ < size_ ? data_[pos_++] : 0; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

int open_fd_count() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int n = 0;
  while (::readdir(dir) != nullptr)
    ++n;
  ::closedir(dir);
  return n;
}

// Known library bugs the harness can be told to tolerate while exploring, so that one known
// failure does not hide the others: COSELECT_FUZZ_ALLOW=<id>[,<id>...]. CI allows none.
bool allowed(const char* id) {
  static const char* const list = std::getenv("COSELECT_FUZZ_ALLOW");
  return list != nullptr && std::strstr(list, id) != nullptr;
}

// One life of an event slot: counts completed set() calls, by any thread.
struct Incarnation {
  std::atomic<std::uint64_t> sets{0};
};

struct EventSlot {
  std::unique_ptr<WaitableEvent> event;
  std::shared_ptr<Incarnation> life;
  bool flag = false;       // the model's value, valid while !uncertain
  bool uncertain = false;  // a helper was told to write it since the last sync
  std::array<std::optional<bool>, kHelpers + 1> last{};  // last value each thread wrote since
  bool exported = false;
};

// A wait_blocking() on a helper thread.
struct BlockingWait {
  int slot = 0;
  std::optional<ns> timeout;  // nullopt: "untimed" (guarded by kGuard)
  WaitableEvent* event = nullptr;
  std::shared_ptr<Incarnation> life;
  bool confirmed = false;     // known to be registered as blocked
  bool must_release = false;  // a set() happened while it was known to be blocked
  std::atomic<bool> started{false};
  std::atomic<bool> done{false};
  bool result = false;  // written by the helper before `done`
  ns elapsed{};
};

enum class CoKind { event_wait, sleeper, handoff, thread_job, loop_setter, channel_op };

// One value sent through the channel: its fate, written by whoever learned it.
struct ChannelValue {
  std::atomic<int> accepted{-1};  // -1: not known (yet); 0: refused; 1: accepted
  std::atomic<int> received{0};
};
constexpr std::size_t kChannelValues = kMaxOps + 1;
enum class CoState { spawned, waiting, done, skipped, destroyed };
enum class Outcome { none, released, timed_out, canceled, failed };

struct CoRecord {
  CoKind kind = CoKind::event_wait;
  int generation = 0;  // of the scheduler that owns the frame
  int slot = -1;
  std::optional<ns> timeout;
  bool pulse = false;  // loop_setter: set(); clear()
  bool fail = false;   // thread_job: the job throws
  int helper = 0;      // handoff
  CoState state = CoState::spawned;
  Outcome outcome = Outcome::none;
  Scheduler::time_point start{}, end{};
  bool was_set = false;
  std::uint64_t sets_at_start = 0;
  std::shared_ptr<Incarnation> life;
  bool must_release = false;        // a set() certainly happened while it waited
  bool release_after_sync = false;  // a helper was told to set() while it waited
  bool must_cancel = false;         // its event was destroyed while it waited
  bool any_outcome = false;         // destroyed while the loop may have had it queued
  bool check_spurious = false;      // released without seeing the event set: verify at sync
  bool handed_off = false;          // handoff: given to the helper
  bool handoff_synced = false;      // ... and the helper has resumed it since
  bool on_loop_thread = true;
  bool stops_loop = false;      // event_wait: stop() the loop once resumed (kRunWake)
  coselect::JoinHandle handle;  // kCoWait, kSleep: from spawn()
  bool has_handle = false;
  bool cancel_requested = false;  // handle.cancel() was (or is about to be) called
  bool must_end = false;          // cancelled by the fuzzing thread while it waited
  bool channel_receiver = false;  // channel_op: a receive (else a send)
};

struct Callback {
  int generation = 0;
  TaskHandle handle;            // helper-installed: valid once helper_synced
  Scheduler::time_point due{};  // when exact
  bool by_helper = false;
  bool helper_synced = true;
  bool exact = true;       // `scheduled` tracks the real task
  bool scheduled = false;  // the model
  bool dead = false;       // its scheduler is gone
  bool throws = false;
  int runs = 0;  // observed (loop thread)
  int model_runs = 0;
  std::function<void()> action;  // extra work it does on the loop
};

struct Thrown {};  // what a throwing callback throws

// A thread with a FIFO command queue. Progress is reported through the harness's mutex/cv.
class Helper {
 public:
  struct Command {
    std::function<void()> run;
    BlockingWait* untimed_wait = nullptr;  // the command blocks until this wait is released
  };

  Helper(std::mutex& mutex, std::condition_variable& progress, std::uint64_t& progress_count)
      : mutex_(mutex), progress_(progress), progress_count_(progress_count) {
    thread_ = std::thread([this] {
      tid_.store(static_cast<pid_t>(::syscall(SYS_gettid)), std::memory_order_release);
      work();
    });
    while (tid_.load(std::memory_order_acquire) == 0)  // known before any command is posted
      std::this_thread::yield();
  }
  Helper(const Helper&) = delete;
  Helper& operator=(const Helper&) = delete;
  ~Helper() {
    {
      std::lock_guard lock(mutex_);
      quit_ = true;
    }
    work_.notify_one();
    thread_.join();
  }

  void post(Command c) {
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(c));
      ++issued_;
    }
    work_.notify_one();
  }

  // With the mutex held:
  bool idle_locked() const { return issued_ == completed_; }
  BlockingWait* current_wait_locked() const { return current_; }
  pid_t tid() const { return tid_.load(std::memory_order_acquire); }

 private:
  void work() {
    std::unique_lock lock(mutex_);
    for (;;) {
      work_.wait(lock, [this] { return quit_ || !queue_.empty(); });
      if (queue_.empty()) return;
      Command c = std::move(queue_.front());
      queue_.pop_front();
      current_ = c.untimed_wait;
      if (current_ != nullptr) {
        ++progress_count_;
        progress_.notify_all();
      }
      lock.unlock();
      c.run();
      c = {};
      lock.lock();
      current_ = nullptr;
      ++completed_;
      ++progress_count_;
      progress_.notify_all();
    }
  }

  std::mutex& mutex_;
  std::condition_variable& progress_;
  std::uint64_t& progress_count_;
  std::condition_variable work_;
  std::deque<Command> queue_;
  std::uint64_t issued_ = 0;
  std::uint64_t completed_ = 0;
  BlockingWait* current_ = nullptr;
  bool quit_ = false;
  std::atomic<pid_t> tid_{0};
  std::thread thread_;
};

class Harness {
 public:
  explicit Harness(bool virtual_time) : virtual_(virtual_time) {
    for (auto& h : helpers_)
      h = std::make_unique<Helper>(mutex_, progress_, progress_count_);
    pool_ = std::make_unique<ThreadPool>(2);
    channel_ = std::make_unique<coselect::Channel<std::uint32_t>>(2);
    make_scheduler();
    for (int i = 0; i < kEvents; ++i)
      create_event(i);
  }

  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  ~Harness() {
    // Normal teardown is finish(); this only runs if an op threw something unexpected, which
    // propagates to libFuzzer as a crash anyway.
  }

  void execute(Program& p) {
    const bool trace = std::getenv("COSELECT_FUZZ_TRACE") != nullptr;
    for (std::size_t n = 0; n < kMaxOps && !p.done(); ++n) {
      const auto op = static_cast<Op>(p.next() % kOpCount);
      if (trace) std::fprintf(stderr, "op %zu: %d\n", n, static_cast<int>(op));
      step(op, p);
    }
    if (trace) std::fprintf(stderr, "finish\n");
    finish();
  }

 private:
  // ---- durations ----------------------------------------------------------------------------

  ns short_timeout(std::uint8_t code) const {  // blocking and coroutine timeouts
    static constexpr std::array<ns, 4> real{ns(0), 20us, 200us, 1ms};
    static constexpr std::array<ns, 4> virt{ns(0), 1ms, 7ms, 1s};
    const ns d = (virtual_ ? virt : real)[code % 4];
    return (code & 0x80) != 0 && d == ns(0) ? ns(-1000) : d;  // sometimes negative: a poll
  }
  // Real time even under a TimeMachine (threads block for real): tiny, sometimes a poll.
  static ns blocking_timeout(std::uint8_t code) {
    static constexpr std::array<ns, 3> table{ns(0), 20us, 200us};
    const ns d = table[code % 3];
    return (code & 0x80) != 0 && d == ns(0) ? ns(-1000) : d;
  }
  ns run_span(std::uint8_t code) const {
    static constexpr std::array<ns, 4> real{ns(0), 50us, 300us, 1ms};
    static constexpr std::array<ns, 4> virt{ns(0), 1ms, 10ms, 2s};
    return (virtual_ ? virt : real)[code % 4];
  }

  // ---- dispatch -----------------------------------------------------------------------------

  void step(Op op, Program& p) {
    switch (op) {
      case kSet:
        do_set(slot_arg(p));
        break;
      case kClear:
        do_clear(slot_arg(p));
        break;
      case kPulse: {
        const int s = slot_arg(p);
        do_set(s);
        do_clear(s);
        break;
      }
      case kExport:
        do_export(slot_arg(p));
        break;
      case kDriverWait: {
        const int s = slot_arg(p);
        driver_wait(s, p.next());
        break;
      }
      case kHelperSet:
      case kHelperClear:
      case kHelperPulse: {
        const int h = helper_arg(p);
        helper_write(h, slot_arg(p), op);
        break;
      }
      case kHelperWait: {
        const int h = helper_arg(p);
        const int s = slot_arg(p);
        helper_wait(h, s, p.next());
        break;
      }
      case kCoWait: {
        const int s = slot_arg(p);
        const std::uint8_t code = p.next();
        auto& r = new_co(CoKind::event_wait);
        r.slot = s;
        if (code % 5 != 4) r.timeout = short_timeout(code);
        r.handle = sched_->spawn(event_waiter(r));
        r.has_handle = true;
        break;
      }
      case kLoopSet:
      case kLoopPulse: {
        auto& r = new_co(CoKind::loop_setter);
        r.slot = slot_arg(p);
        r.pulse = op == kLoopPulse;
        sched_->spawn(loop_setter(r));
        break;
      }
      case kSleep: {
        auto& r = new_co(CoKind::sleeper);
        r.timeout = short_timeout(p.next());
        r.handle = sched_->spawn(sleeper(r));
        r.has_handle = true;
        break;
      }
      case kRun:
        run_for(run_span(p.next()));
        break;
      case kStop:
        sched_->stop();
        stop_pending_ = true;
        break;
      case kHelperStop: {
        Scheduler* s = sched_.get();
        helpers_[helper_arg(p)]->post({[s] { s->stop(); }});
        stop_unsynced_ = true;
        break;
      }
      case kCallSoon:
        install(handle_arg(p), std::nullopt, false, {});
        break;
      case kCallLater: {
        const int k = handle_arg(p);
        install(k, short_timeout(p.next()), false, {});
        break;
      }
      case kCallThrow:
        install(-1, std::nullopt, true, {});
        break;
      case kSuspend:
        handle_op(handle_arg(p), false);
        break;
      case kResume:
        handle_op(handle_arg(p), true);
        break;
      case kLoopSuspend:
      case kLoopResume: {
        const int k = handle_arg(p);
        const bool resume = op == kLoopResume;
        install(-1, std::nullopt, false, [this, k, resume] { handle_op(k, resume); });
        break;
      }
      case kHelperSuspend:
      case kHelperResume: {
        const int h = helper_arg(p);
        helper_handle_op(h, handle_arg(p), op == kHelperResume);
        break;
      }
      case kHelperCallSoon:
      case kHelperCallLater: {
        const int h = helper_arg(p);
        std::optional<ns> delay;
        if (op == kHelperCallLater) delay = short_timeout(p.next());
        helper_install(h, delay);
        break;
      }
      case kHandoff: {
        auto& r = new_co(CoKind::handoff);
        r.helper = helper_arg(p);
        sched_->spawn(handoff(r));
        break;
      }
      case kRunInThread: {
        const std::uint8_t code = p.next();
        auto& r = new_co(CoKind::thread_job);
        r.fail = (code & 1) != 0;
        sched_->spawn(thread_job(r, code));
        break;
      }
      case kDestroyEvent:
        destroy_event(slot_arg(p));
        break;
      case kCreateEvent:
        create_event(slot_arg(p));
        break;
      case kRecreateScheduler:
        recreate_scheduler();
        break;
      case kSync:
        sync_all();
        break;
      case kRunWake: {
        const int h = helper_arg(p);
        const int i = slot_arg(p);
        run_wake(h, i, p.next() % 4);
        break;
      }
      case kCancel:
        cancel_co(p.next());
        break;
      case kChTrySend: {
        const std::uint32_t id = new_channel_value();
        std::uint32_t v = id;
        const bool ok = channel_->try_send(v);
        channel_values_[id].accepted = ok ? 1 : 0;
        if (channel_closed_) MODEL_CHECK(!ok, "try_send() succeeded after close()");
        break;
      }
      case kChTryReceive:
        if (auto v = channel_->try_receive()) channel_received(*v);
        break;
      case kChCoSend:
      case kChCoReceive: {
        const std::uint8_t code = p.next();
        auto& r = new_co(CoKind::channel_op);
        r.channel_receiver = op == kChCoReceive;
        if (code % 5 != 4) r.timeout = short_timeout(code);
        r.handle = sched_->spawn(op == kChCoSend ? channel_sender(r, new_channel_value())
                                                 : channel_receiver(r));
        r.has_handle = true;
        break;
      }
      case kChHelperSend: {
        const int h = helper_arg(p);
        const std::uint32_t id = new_channel_value();
        helpers_[h]->post({[this, id] {
          std::uint32_t v = id;
          channel_values_[id].accepted = channel_->try_send(v) ? 1 : 0;
        }});
        break;
      }
      case kChHelperReceive:
        helpers_[helper_arg(p)]->post({[this] {
          if (auto v = channel_->try_receive()) channel_received(*v);
        }});
        break;
      case kChClose: {
        const std::uint8_t code = p.next();
        if (code % 2 == 0) {
          channel_->close();
          channel_closed_ = true;
        } else {
          helpers_[(code / 2) % kHelpers]->post({[this] { channel_->close(); }});
        }
        break;
      }
      case kOpCount:
        break;
    }
  }

  static int slot_arg(Program& p) { return p.next() % kEvents; }

  // ---- the channel --------------------------------------------------------------------------

  std::uint32_t new_channel_value() { return next_channel_value_++; }

  // Any thread: `id` came out of the channel.
  void channel_received(std::uint32_t id) {
    MODEL_CHECK(id > 0 && id < next_channel_value_, "a value nobody sent came out of the channel");
    const int times = channel_values_[id].received.fetch_add(1) + 1;
    MODEL_CHECK(times == 1, "a channel value was received twice");
  }

  Task<void> channel_sender(CoRecord& r, std::uint32_t id) {
    r.state = CoState::waiting;
    int accepted = 0;
    try {
      if (r.timeout) {
        const std::optional<bool> ok =
            co_await coselect::with_timeout(*r.timeout, channel_->send(id));
        accepted = ok && *ok ? 1 : 0;
      } else {
        const bool ok = co_await channel_->send(id);
        accepted = ok ? 1 : 0;
      }
      r.outcome = Outcome::released;
    } catch (const std::system_error& e) {
      MODEL_CHECK(e.code() == std::errc::operation_canceled && r.cancel_requested,
                  "a channel send failed, and not because it was cancelled");
      r.outcome = Outcome::canceled;
    }
    channel_values_[id].accepted = accepted;
    r.on_loop_thread = on_loop();
    r.state = CoState::done;
    MODEL_CHECK(r.on_loop_thread, "a channel sender resumed off its loop thread");
  }

  Task<void> channel_receiver(CoRecord& r) {
    r.state = CoState::waiting;
    try {
      std::optional<std::uint32_t> v;
      if (r.timeout) {
        std::optional<std::optional<std::uint32_t>> got =
            co_await coselect::with_timeout(*r.timeout, channel_->receive());
        if (got) v = *got;
      } else {
        v = co_await channel_->receive();
      }
      if (v) channel_received(*v);
      r.outcome = Outcome::released;
    } catch (const std::system_error& e) {
      MODEL_CHECK(e.code() == std::errc::operation_canceled && r.cancel_requested,
                  "a channel receive failed, and not because it was cancelled");
      r.outcome = Outcome::canceled;
    }
    r.on_loop_thread = on_loop();
    r.state = CoState::done;
    MODEL_CHECK(r.on_loop_thread, "a channel receiver resumed off its loop thread");
  }

  // The end: every accepted value was received once, no refused one ever.
  void check_channel() {
    channel_->close();
    while (auto v = channel_->try_receive())
      channel_received(*v);
    for (std::uint32_t id = 1; id < next_channel_value_; ++id) {
      const int accepted = channel_values_[id].accepted.load();
      const int received = channel_values_[id].received.load();
      if (accepted == 1 && id >= channel_lossy_below_) {
        MODEL_CHECK(received == 1, "an accepted channel value was lost");
      }
      if (accepted == 0) MODEL_CHECK(received == 0, "a refused channel value was received");
    }
  }
  static int helper_arg(Program& p) { return p.next() % kHelpers; }
  static int handle_arg(Program& p) { return p.next() % kHandleSlots; }

  // ---- events -------------------------------------------------------------------------------

  void create_event(int i) {
    EventSlot& s = events_[i];
    if (s.event) return;
    s.event = std::make_unique<WaitableEvent>();
    s.life = std::make_shared<Incarnation>();
    s.flag = false;
    s.uncertain = false;
    s.last = {};
    s.exported = false;
    check_at_rest(i);
  }

  // What writing `value` means for the model: exact unless helpers are also writing.
  void model_write(EventSlot& s, bool value) {
    if (s.uncertain) {
      s.last[kDriver] = value;
    } else {
      s.flag = value;
    }
  }

  // set() on the fuzzing thread, between runs or from a coroutine on the loop.
  void do_set(int i) {
    EventSlot& s = events_[i];
    if (!s.event) return;
    s.event->set();
    s.life->sets.fetch_add(1, std::memory_order_seq_cst);
    model_write(s, true);
    if (!s.uncertain) MODEL_CHECK(s.event->is_set(), "is_set() is false right after set()");
    for (auto& w : blocking_) {
      if (w->life == s.life && w->confirmed && !w->done.load(std::memory_order_acquire)) {
        w->must_release = true;
      }
    }
    for (auto& r : cos_) {
      if (r->kind != CoKind::event_wait || r->state != CoState::waiting || r->life != s.life)
        continue;
      // A timed waiter may already sit in the ready queue as timed out when the loop is running
      // or a run was cut short; otherwise, between runs, its timer cannot have fired unseen.
      if (!r->timeout || (!in_run_ && !backlog_)) r->must_release = true;
    }
    if (!in_run_ && !s.uncertain) check_at_rest(i);
  }

  void do_clear(int i) {
    EventSlot& s = events_[i];
    if (!s.event) return;
    s.event->clear();
    model_write(s, false);
    if (!s.uncertain) MODEL_CHECK(!s.event->is_set(), "is_set() is true right after clear()");
    if (!in_run_ && !s.uncertain) check_at_rest(i);
  }

  void do_export(int i) {
    EventSlot& s = events_[i];
    if (!s.event) return;
    const int fd = s.event->fileno();
    MODEL_CHECK(fd == coselect::detail::event_access::read_fd(*s.event),
                "fileno() is not the read end");
    s.exported = true;
    if (!s.uncertain) check_at_rest(i);
  }

  // At rest (no set()/clear() in flight on it, no loop in select()): the pipe mirrors the flag.
  void check_at_rest(int i) {
    EventSlot& s = events_[i];
    if (!s.event) return;
    const int fd = coselect::detail::event_access::read_fd(*s.event);
    pollfd pfd{fd, POLLIN, 0};
    int ready;
    do {  // libFuzzer's SIGALRM (its -timeout watchdog) interrupts system calls
      ready = ::poll(&pfd, 1, 0);
    } while (ready < 0 && errno == EINTR);
    MODEL_CHECK(ready >= 0, "poll() on the read end failed");
    const bool readable = ready == 1 && (pfd.revents & POLLIN) != 0;
    int pending = 0;
    MODEL_CHECK(::ioctl(fd, FIONREAD, &pending) == 0, "FIONREAD failed");
    MODEL_CHECK(pending <= 1, "the pipe holds more than one byte");
    MODEL_CHECK(readable == (pending == 1), "poll() and FIONREAD disagree");
    const bool set = s.event->is_set();
    MODEL_CHECK(set || !readable, "the read end is readable while the event is clear");
    MODEL_CHECK(!(set && s.exported) || readable,
                "fileno() was handed out but is not readable while the event is set");
    if (!s.uncertain) MODEL_CHECK(set == s.flag, "is_set() disagrees with the model");
  }

  void driver_wait(int i, std::uint8_t code) {
    EventSlot& s = events_[i];
    if (!s.event) return;
    if (!s.uncertain && s.flag && (code & 0x40) != 0) {
      const bool ok = s.event->wait_blocking();  // set: must not block
      MODEL_CHECK(ok, "wait_blocking() on a set event returned false");
      return;
    }
    const ns timeout = blocking_timeout(code);
    const auto t0 = Real::now();
    const bool ok = s.event->wait_blocking(timeout);
    const auto elapsed = Real::now() - t0;
    if (!ok && timeout > ns(0)) MODEL_CHECK(elapsed >= timeout, "wait_blocking() timed out early");
    if (!s.uncertain) MODEL_CHECK(ok == s.flag, "wait_blocking() disagrees with the model");
  }

  // ---- helpers: event ops -------------------------------------------------------------------

  bool helper_idle(int h) {
    std::lock_guard lock(mutex_);
    return helpers_[h]->idle_locked();
  }

  void helper_write(int h, int i, Op op) {
    EventSlot& s = events_[i];
    if (!s.event) return;
    if (!s.uncertain) {
      s.uncertain = true;
      s.last = {};
    }
    s.last[h] = op == kHelperSet;
    if (op != kHelperClear) {
      // The set() will happen after this point: whoever waits now must be released by it.
      for (auto& r : cos_) {
        if (r->kind == CoKind::event_wait && r->state == CoState::waiting && r->life == s.life &&
            !r->timeout) {
          r->release_after_sync = true;
        }
      }
      // Only if the helper is idle: otherwise its set() may sit behind a wait of its own.
      if (helper_idle(h)) {
        for (auto& w : blocking_) {
          if (w->life == s.life && w->confirmed && !w->done.load(std::memory_order_acquire)) {
            w->must_release = true;
          }
        }
      }
    }
    WaitableEvent* ev = s.event.get();
    std::shared_ptr<Incarnation> life = s.life;
    helpers_[h]->post({[ev, life, op] {
      if (op == kHelperClear) {
        ev->clear();
        return;
      }
      ev->set();
      life->sets.fetch_add(1, std::memory_order_seq_cst);
      if (op == kHelperPulse) ev->clear();
    }});
  }

  void helper_wait(int h, int i, std::uint8_t code) {
    EventSlot& s = events_[i];
    if (!s.event) return;
    auto w = std::make_unique<BlockingWait>();
    w->slot = i;
    w->event = s.event.get();
    w->life = s.life;
    if (code % 4 != 3) w->timeout = blocking_timeout(code);
    // Checkable: untimed and the helper starts it at once. Between `started` and `done` the
    // helper makes no system call but the futex wait of wait_blocking(), which it enters only
    // once registered as blocked: seeing it in futex() proves a later set() must release it.
    const bool checkable = !w->timeout && helper_idle(h);
    BlockingWait* raw = w.get();
    blocking_.push_back(std::move(w));
    helpers_[h]->post({[raw] {
                         raw->started.store(true, std::memory_order_release);
                         const auto t0 = Real::now();
                         const bool ok = raw->timeout ? raw->event->wait_blocking(*raw->timeout)
                                                      : raw->event->wait_blocking(kGuard);
                         raw->elapsed = Real::now() - t0;
                         raw->result = ok;
                         raw->done.store(true, std::memory_order_release);
                       },
                       raw->timeout ? nullptr : raw});
    if (!checkable) return;
    const pid_t tid = helpers_[h]->tid();
    const auto deadline = Real::now() + kGuard;
    while (!raw->done.load(std::memory_order_acquire)) {
      if (raw->started.load(std::memory_order_acquire)) {
        const long nr = blocked_syscall(tid);
        if (nr == -2) return;  // no /proc: leave it unchecked
        if (nr == SYS_futex && !raw->done.load(std::memory_order_acquire)) {
          raw->confirmed = true;
          break;
        }
      }
      MODEL_CHECK(Real::now() < deadline, "a helper never began its wait_blocking()");
      std::this_thread::yield();
    }
  }

  // ---- helpers: scheduler ops ---------------------------------------------------------------

  void helper_handle_op(int h, int k, bool resume) {
    Callback* c = handles_[k];
    if (c == nullptr) return;
    c->exact = false;
    helpers_[h]->post({[c, resume] {
      if (resume) {
        c->handle.resume();
      } else {
        c->handle.suspend();
      }
    }});
  }

  void helper_install(int h, std::optional<ns> delay) {
    auto c = std::make_unique<Callback>();
    c->generation = generation_;
    c->by_helper = true;
    c->helper_synced = false;
    c->exact = false;
    Callback* raw = c.get();
    callbacks_.push_back(std::move(c));
    Scheduler* s = sched_.get();
    helpers_[h]->post({[this, s, raw, delay] {
      auto f = [this, raw] { on_callback(*raw); };
      raw->handle = delay ? s->tasks().call_later(*delay, std::move(f)) : s->tasks().call_soon(f);
    }});
  }

  // ---- sync: wait for the helpers, then compare the model with reality ----------------------

  void sync_all() {
    const auto deadline = Real::now() + kGuard;
    std::unique_lock lock(mutex_);
    for (;;) {
      bool idle = true;
      std::vector<BlockingWait*> rescue;
      for (auto& h : helpers_) {
        if (h->idle_locked()) continue;
        idle = false;
        BlockingWait* w = h->current_wait_locked();
        // Untimed waits nobody owes a release get one; those owed one must get it themselves.
        if (w != nullptr && !w->must_release) rescue.push_back(w);
      }
      if (idle) break;
      const std::uint64_t seen = progress_count_;
      if (!rescue.empty()) {
        lock.unlock();
        for (BlockingWait* w : rescue) {
          if (events_[w->slot].life == w->life && !w->event->is_set()) do_set(w->slot);
        }
        lock.lock();
      }
      const bool moved =
          progress_.wait_until(lock, deadline, [&] { return progress_count_ != seen; });
      MODEL_CHECK(moved, "a helper is stuck: a blocking waiter owed a wake-up was never released");
    }
    lock.unlock();
    after_sync();
  }

  void after_sync() {
    for (int i = 0; i < kEvents; ++i) {
      EventSlot& s = events_[i];
      if (!s.event) continue;
      if (s.uncertain) {
        const bool actual = s.event->is_set();
        bool possible = false;
        for (const auto& v : s.last)
          possible = possible || (v && *v == actual);
        MODEL_CHECK(possible, "is_set() is no thread's last write");
        s.flag = actual;
        s.uncertain = false;
        s.last = {};
      }
      check_at_rest(i);
    }
    for (auto& w : blocking_) {
      if (!w->done.load(std::memory_order_acquire)) continue;
      if (w->timeout) {
        if (!w->result && *w->timeout > ns(0)) {
          MODEL_CHECK(w->elapsed >= *w->timeout, "wait_blocking() timed out early");
        }
      } else {
        MODEL_CHECK(w->result, "an untimed wait_blocking() was never released (lost wake-up)");
      }
      if (w->must_release) {
        MODEL_CHECK(w->result, "a blocked thread missed a set() (lost wake-up)");
      }
    }
    for (auto& r : cos_) {
      if (r->release_after_sync) {
        r->release_after_sync = false;
        if (r->state == CoState::waiting || r->state == CoState::done) r->must_release = true;
      }
      if (r->handed_off) r->handoff_synced = true;
      if (r->check_spurious) {
        r->check_spurious = false;
        MODEL_CHECK(r->life->sets.load(std::memory_order_seq_cst) > r->sets_at_start,
                    "a coroutine was released although no set() happened while it waited");
      }
    }
    for (auto& c : callbacks_) {
      if (c->dead) continue;
      if (!c->exact || !c->helper_synced) {
        c->helper_synced = true;
        c->exact = true;
        c->scheduled = c->handle.scheduled();
        c->due = c->handle.due();
        c->model_runs = c->runs;
      }
      check_handle(*c);
    }
    if (stop_unsynced_) {
      stop_unsynced_ = false;
      stop_maybe_ = true;
    }
  }

  // ---- coroutines ---------------------------------------------------------------------------

  CoRecord& new_co(CoKind kind) {
    auto r = std::make_unique<CoRecord>();
    r->kind = kind;
    r->generation = generation_;
    cos_.push_back(std::move(r));
    return *cos_.back();
  }

  bool on_loop() const {
    return std::this_thread::get_id() == driver_ && Scheduler::current() == sched_.get();
  }

  Task<void> event_waiter(CoRecord& r) {
    Scheduler& s = *Scheduler::current();
    EventSlot& slot = events_[r.slot];
    if (!slot.event) {
      r.state = CoState::skipped;
      co_return;
    }
    WaitableEvent& ev = *slot.event;
    r.life = slot.life;
    r.sets_at_start = r.life->sets.load(std::memory_order_seq_cst);
    r.was_set = ev.is_set();
    if (!slot.uncertain) MODEL_CHECK(r.was_set == slot.flag, "is_set() disagrees with the model");
    r.start = s.now();
    r.state = CoState::waiting;
    try {
      if (r.timeout) {
        const bool ok = co_await ev.wait(*r.timeout);
        r.outcome = ok ? Outcome::released : Outcome::timed_out;
      } else {
        co_await ev.wait();
        r.outcome = Outcome::released;
      }
    } catch (const std::system_error& e) {
      MODEL_CHECK(e.code() == std::errc::operation_canceled,
                  "a coroutine wait failed with something other than operation_canceled");
      r.outcome = Outcome::canceled;
    }
    r.end = s.now();
    r.on_loop_thread = on_loop();
    r.state = CoState::done;
    if (r.stops_loop) s.stop();
    MODEL_CHECK(r.on_loop_thread, "a coroutine waiter resumed off its loop thread");
    if (r.outcome == Outcome::timed_out) {
      MODEL_CHECK(r.end - r.start >= *r.timeout, "a coroutine wait timed out early");
      MODEL_CHECK(!r.must_release, "a coroutine waiter owed a release timed out instead");
    }
    if (r.outcome == Outcome::canceled && !r.cancel_requested &&
        !(r.must_release && allowed("destroy-after-set"))) {
      MODEL_CHECK(!r.must_release || r.any_outcome,
                  "a coroutine released by set() was canceled when its event was destroyed");
      MODEL_CHECK(r.must_cancel || r.any_outcome, "a coroutine wait was canceled for no reason");
    }
    if (r.outcome == Outcome::released && !r.was_set) r.check_spurious = true;
    if (r.timeout && *r.timeout <= ns(0) && !slot_uncertain_for(r)) {
      MODEL_CHECK((r.outcome == Outcome::released) == r.was_set, "a poll disagrees with the model");
    }
  }

  bool slot_uncertain_for(const CoRecord& r) const {
    const EventSlot& s = events_[r.slot];
    return s.life != r.life || s.uncertain;
  }

  // A coroutine waits on the event and stops the loop when released; a helper sets the event,
  // most often while the loop sleeps in select() with no deadline. If the loop sleeps through
  // that set(), only the other helper's watchdog stop() (after kGuard) ends run(): a violation.
  void run_wake(int h, int i, int mode) {
    if (!events_[i].event) return;
    sync_all();  // both helpers idle: the set() and the watchdog start at once
    auto& r = new_co(CoKind::event_wait);
    r.slot = i;
    sched_->spawn(event_waiter(r));
    // First let it (and whatever else is spawned) start waiting, without blocking.
    for (int attempt = 0; attempt < 16 && r.state == CoState::spawned; ++attempt)
      run_for(ns(0));
    if (r.state != CoState::waiting) return;
    r.stops_loop = true;
    if (mode == 0) {
      helper_write(h, i, kHelperSet);
    } else {
      // Pulses: every one must wake the loop (or find it awake and the waiter released).
      const int pulses = mode == 1 ? 1 : 64;
      for (int n = 0; n < pulses; ++n)
        helper_write(h, i, kHelperPulse);
      if (mode == 3) helper_write(h, i, kHelperSet);
    }
    Scheduler* s = sched_.get();
    auto cancel = std::make_shared<WaitableEvent>();
    auto rescued = std::make_shared<std::atomic<bool>>(false);
    helpers_[1 - h]->post({[s, cancel, rescued] {
      const bool cancelled = cancel->wait_blocking(kGuard);
      if (!cancelled) {
        rescued->store(true);
        s->stop();
      }
    }});
    while (r.state == CoState::spawned || r.state == CoState::waiting) {
      if (rescued->load()) break;
      in_run_ = true;
      run_limit_ = Scheduler::time_point::max();
      try {
        sched_->run();
      } catch (const Thrown&) {
        ++throws_caught_;
      }
      in_run_ = false;
      stop_pending_ = stop_maybe_ = false;
      backlog_ = true;  // run() ends with a stop(): treat the ready queue as possibly non-empty
    }
    // The waiter's stop() may have come in the iteration that a stale stop() already ended.
    stop_maybe_ = true;
    cancel->set();
    sync_all();
    MODEL_CHECK(!rescued->load(), "the loop slept through a set() from another thread");
    MODEL_CHECK(r.state == CoState::done, "run() returned but its waiter never resumed");
  }

  Task<void> loop_setter(CoRecord& r) {
    r.state = CoState::waiting;
    do_set(r.slot);
    if (r.pulse) do_clear(r.slot);
    r.on_loop_thread = on_loop();
    r.state = CoState::done;
    r.outcome = Outcome::released;
    co_return;
  }

  Task<void> sleeper(CoRecord& r) {
    Scheduler& s = *Scheduler::current();
    r.start = s.now();
    r.state = CoState::waiting;
    r.outcome = Outcome::released;
    try {
      co_await coselect::sleep_for(*r.timeout);
    } catch (const std::system_error& e) {
      MODEL_CHECK(e.code() == std::errc::operation_canceled && r.cancel_requested,
                  "a sleep failed, and not because it was cancelled");
      r.outcome = Outcome::canceled;
    }
    r.end = s.now();
    r.on_loop_thread = on_loop();
    r.state = CoState::done;
    MODEL_CHECK(r.on_loop_thread, "a sleeper resumed off its loop thread");
    MODEL_CHECK(r.outcome == Outcome::canceled || r.end - r.start >= *r.timeout,
                "sleep_for() ended early");
  }

  // JoinHandle::cancel() of the code-th cancellable coroutine of this scheduler, from the
  // fuzzing thread (even code: the loop is not running, the stop goes through its inbox) or a
  // helper (odd).
  void cancel_co(std::uint8_t code) {
    std::vector<CoRecord*> candidates;
    for (auto& r : cos_) {
      if (r->generation == generation_ && r->has_handle) candidates.push_back(r.get());
    }
    if (candidates.empty()) return;
    CoRecord& r = *candidates[(code / 2) % candidates.size()];
    r.cancel_requested = true;
    if (code % 2 == 0) {
      if (r.state == CoState::spawned || r.state == CoState::waiting) r.must_end = true;
      r.handle.cancel();
    } else {
      helpers_[(code / 2) % 2]->post({[h = r.handle]() mutable { h.cancel(); }});
    }
  }

  struct HandoffAwaiter {
    Harness& self;
    CoRecord& r;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) const {
      Scheduler* s = Scheduler::current();
      r.handed_off = true;
      self.helpers_[r.helper]->post({[s, h] { s->tasks().resume(h); }});
    }
    void await_resume() const noexcept {}
  };

  Task<void> handoff(CoRecord& r) {
    r.state = CoState::waiting;
    co_await HandoffAwaiter{*this, r};
    r.on_loop_thread = on_loop();
    r.state = CoState::done;
    r.outcome = Outcome::released;
    MODEL_CHECK(r.on_loop_thread, "TaskManager::resume() resumed a coroutine off the loop");
  }

  Task<void> thread_job(CoRecord& r, std::uint8_t code) {
    r.state = CoState::waiting;
    ++in_flight_;
    const int x = code;
    const bool fail = r.fail;
    try {
      const int v = co_await coselect::run_in_thread(*pool_, [x, fail] {
        if (fail) throw std::runtime_error("job failed");
        return 2 * x;
      });
      MODEL_CHECK(!fail && v == 2 * x, "run_in_thread returned the wrong result");
      r.outcome = Outcome::released;
    } catch (const std::system_error&) {
      MODEL_CHECK(false, "run_in_thread failed to start a job");
    } catch (const std::runtime_error&) {
      MODEL_CHECK(fail, "run_in_thread threw for a job that did not");
      r.outcome = Outcome::failed;
    }
    --in_flight_;
    r.on_loop_thread = on_loop();
    r.state = CoState::done;
    MODEL_CHECK(r.on_loop_thread, "run_in_thread resumed off the loop thread");
  }

  // ---- callbacks ----------------------------------------------------------------------------

  void install(int k, std::optional<ns> delay, bool throws, std::function<void()> action) {
    auto c = std::make_unique<Callback>();
    c->generation = generation_;
    c->throws = throws;
    c->action = std::move(action);
    Callback* raw = c.get();
    callbacks_.push_back(std::move(c));
    auto f = [this, raw] { on_callback(*raw); };
    raw->handle = delay ? sched_->tasks().call_later(*delay, std::move(f))
                        : sched_->tasks().call_soon(std::move(f));
    raw->due = raw->handle.due();
    raw->scheduled = true;
    if (delay && virtual_) {
      MODEL_CHECK(raw->due == sched_->now() + *delay, "call_later() installed at the wrong time");
    }
    check_handle(*raw);
    if (k >= 0) handles_[k] = raw;
  }

  void on_callback(Callback& c) {
    MODEL_CHECK(in_run_ && on_loop(), "a callback ran outside run*() or off the loop thread");
    MODEL_CHECK(c.generation == generation_ && !c.dead, "a callback ran on the wrong scheduler");
    MODEL_CHECK(current_callback_ == nullptr, "callbacks nested");
    ++c.runs;
    if (c.exact && c.helper_synced) {
      MODEL_CHECK(c.scheduled, "a callback ran although it was not scheduled (suspended/run)");
      MODEL_CHECK(c.due <= run_limit_ && c.due <= sched_->now(), "a callback ran before its time");
      c.scheduled = false;
      ++c.model_runs;
    }
    if (c.by_helper) MODEL_CHECK(c.runs == 1, "a helper's post ran twice");
    if (c.throws) ++throws_expected_;
    current_callback_ = &c;
    struct reset {
      Callback*& p;
      ~reset() { p = nullptr; }
    } guard{current_callback_};
    if (c.action) c.action();
    if (c.throws) throw Thrown{};
  }

  void handle_op(int k, bool resume) {
    Callback* c = handles_[k];
    if (c == nullptr) return;
    if (resume) {
      c->handle.resume();
    } else {
      c->handle.suspend();
    }
    if (c->dead) {
      MODEL_CHECK(!c->handle.scheduled(), "a task of a destroyed scheduler is scheduled");
      return;
    }
    if (!c->exact || !c->helper_synced) return;
    if (c == current_callback_) return;  // a running one-shot: both are no-ops
    if (resume) {
      c->scheduled = true;  // idle -> re-installed at its due time; scheduled -> no-op
    } else {
      c->scheduled = false;
    }
    check_handle(*c);
  }

  void check_handle(const Callback& c) const {
    if (c.dead || !c.exact || !c.helper_synced) return;
    MODEL_CHECK(c.handle.scheduled() == c.scheduled, "TaskHandle::scheduled() disagrees");
    MODEL_CHECK(c.runs == c.model_runs, "a callback ran a different number of times than modelled");
  }

  // ---- running the loop ---------------------------------------------------------------------

  // One run_until(now + span). Returns true if it was uninterrupted (no stop, no throw), and
  // then checks what must have happened by its end.
  bool run_for(ns span) {
    const std::size_t records_before = cos_.size();
    const Scheduler::time_point limit = sched_->now() + span;
    const bool stop_expected = stop_pending_ || stop_maybe_ || stop_unsynced_;
    bool threw = false;
    in_run_ = true;
    run_limit_ = limit;
    const auto t0 = Real::now();
    try {
      sched_->run_until(limit);
    } catch (const Thrown&) {
      threw = true;
      ++throws_caught_;
    }
    const auto took = Real::now() - t0;
    in_run_ = false;
    stop_pending_ = false;
    stop_maybe_ = false;
    MODEL_CHECK(took < span + kGuard, "run_until() took far longer than its span (hang)");
    if (!virtual_ && !threw && !stop_expected) {
      MODEL_CHECK(sched_->now() >= limit, "run_until() returned before its limit");
    }
    if (virtual_ && !threw && !stop_expected) {
      MODEL_CHECK(sched_->now() >= limit, "virtual run_until() did not reach its limit");
    }
    const bool full = !threw && !stop_expected;
    backlog_ = !full;
    if (full) check_after_run(limit, records_before);
    return full;
  }

  void check_after_run(Scheduler::time_point limit, std::size_t records_before) {
    for (std::size_t i = 0; i < cos_.size(); ++i) {
      CoRecord& r = *cos_[i];
      if (r.generation != generation_) continue;
      if (i < records_before) {
        MODEL_CHECK(r.state != CoState::spawned, "a spawned coroutine did not start in a run");
      }
      if (r.must_release) {
        MODEL_CHECK(r.state == CoState::done, "a coroutine waiter missed a set() (lost wake-up)");
        MODEL_CHECK(r.outcome == Outcome::released || r.any_outcome || r.cancel_requested ||
                        (r.outcome == Outcome::canceled && allowed("destroy-after-set")),
                    "a coroutine waiter owed a release ended otherwise");
      }
      if (r.must_cancel) {
        MODEL_CHECK(r.state == CoState::done, "a waiter of a destroyed event was not resumed");
      }
      if (r.must_end) {
        MODEL_CHECK(r.state == CoState::done || r.state == CoState::skipped,
                    "a coroutine cancelled while waiting was not resumed");
      }
      if (r.handoff_synced) {
        MODEL_CHECK(r.state == CoState::done, "a coroutine resumed through TaskManager is lost");
      }
      if (virtual_ && r.state == CoState::waiting && r.timeout &&
          (r.kind == CoKind::event_wait || r.kind == CoKind::sleeper)) {
        MODEL_CHECK(r.start + *r.timeout > limit,
                    "a virtual-time timeout/sleep due by now is lost");
      }
    }
    for (auto& c : callbacks_) {
      if (c->dead || c->generation != generation_ || !c->exact || !c->helper_synced) continue;
      MODEL_CHECK(!(c->scheduled && c->due <= limit), "a due callback did not run by the limit");
      check_handle(*c);
    }
  }

  // ---- destruction and re-creation ----------------------------------------------------------

  void destroy_event(int i) {
    EventSlot& s = events_[i];
    if (!s.event) return;
    sync_all();  // no helper refers to it any more
    for (auto& r : cos_) {
      if (r->kind != CoKind::event_wait || r->state != CoState::waiting || r->life != s.life)
        continue;
      if (backlog_) {
        r->any_outcome = true;  // it may already sit in the ready queue with its outcome
      } else if (!r->must_release) {
        r->must_cancel = true;
      }
    }
    s.event.reset();
    s.life.reset();
    s.exported = false;
  }

  // Each new scheduler takes the next I/O backend in turn (select first), so that a program
  // that recreates its scheduler checks the model on every backend without changing what the
  // input bytes mean.
  void make_scheduler() {
    constexpr std::array kBackends = {coselect::Backend::select, coselect::Backend::poll,
                                      coselect::Backend::epoll};
    const coselect::Backend backend =
        kBackends[static_cast<std::size_t>(generation_) % kBackends.size()];
    sched_ = virtual_ ? std::make_unique<Scheduler>(machine_, backend)
                      : std::make_unique<Scheduler>(backend);
    ++generation_;
  }

  // Runs the loop until no run_in_thread job is in flight (the pool must never call into a
  // destroyed scheduler).
  void drain_jobs() {
    const auto deadline = Real::now() + kGuard;
    while (in_flight_ > 0) {
      MODEL_CHECK(Real::now() < deadline, "a run_in_thread job never came back");
      run_for(virtual_ ? ns(0) : ns(1ms));
    }
  }

  void recreate_scheduler() {
    drain_jobs();
    sync_all();
    for (auto& r : cos_) {
      if (r->generation != generation_) continue;
      if (r->state == CoState::spawned || r->state == CoState::waiting) {
        // A receiver may have been handed a value it will never see: that value goes with it.
        if (r->kind == CoKind::channel_op && r->channel_receiver) {
          channel_lossy_below_ = next_channel_value_;
        }
        r->state = CoState::destroyed;
        r->must_release = r->must_cancel = r->handoff_synced = r->must_end = false;
      }
    }
    for (auto& c : callbacks_) {
      if (c->generation == generation_) c->dead = true;
    }
    sched_.reset();  // destroys the frames it owns
    for (auto& c : callbacks_) {
      if (c->dead) MODEL_CHECK(!c->handle.scheduled(), "a task outlived its scheduler");
    }
    stop_pending_ = stop_maybe_ = stop_unsynced_ = false;
    backlog_ = false;
    make_scheduler();
    for (int i = 0; i < kEvents; ++i)
      check_at_rest(i);
  }

  // ---- the end ------------------------------------------------------------------------------

  bool all_settled() const {
    if (in_flight_ > 0) return false;
    for (const auto& r : cos_) {
      if (r->generation == generation_ &&
          (r->state == CoState::spawned || r->state == CoState::waiting)) {
        return false;
      }
    }
    for (const auto& c : callbacks_) {
      if (!c->dead && c->generation == generation_ && c->scheduled) return false;
    }
    return true;
  }

  Scheduler::time_point latest_deadline() const {
    Scheduler::time_point latest = sched_->now();
    for (const auto& r : cos_) {
      if (r->generation == generation_ && r->state == CoState::waiting && r->timeout &&
          r->start + *r->timeout > latest) {
        latest = r->start + *r->timeout;
      }
    }
    for (const auto& c : callbacks_) {
      if (!c->dead && c->generation == generation_ && c->scheduled && c->due > latest)
        latest = c->due;
    }
    return latest;
  }

  void finish() {
    sync_all();
    for (int attempt = 0; attempt < 16; ++attempt) {
      if (run_for(ns(0))) break;
    }
    // Release every waiter, then drain timers, jobs and hand-offs.
    for (int i = 0; i < kEvents; ++i)
      do_set(i);
    channel_->close();  // channel waiters end too
    const auto deadline = Real::now() + kGuard;
    for (;;) {
      sync_all();
      if (all_settled()) break;
      MODEL_CHECK(Real::now() < deadline, "work never settled after everything was released");
      const auto span = latest_deadline() - sched_->now();
      run_for(std::max(ns(0), std::chrono::duration_cast<ns>(span)) + (virtual_ ? ns(0) : ns(1ms)));
    }
    for (const auto& r : cos_) {
      if (r->generation != generation_) continue;
      MODEL_CHECK(r->state == CoState::done || r->state == CoState::skipped,
                  "a coroutine never finished");
      if (r->must_release) {
        MODEL_CHECK(r->outcome == Outcome::released || r->any_outcome || r->cancel_requested ||
                        (r->outcome == Outcome::canceled && allowed("destroy-after-set")),
                    "owed release not given");
      }
    }
    for (const auto& c : callbacks_) {
      if (c->dead) continue;
      MODEL_CHECK(!c->handle.scheduled(), "a task is still scheduled after the drain");
      if (c->by_helper) MODEL_CHECK(c->runs == 1, "a helper's post did not run exactly once");
      MODEL_CHECK(c->runs == c->model_runs, "a callback ran a different number of times");
    }
    MODEL_CHECK(throws_caught_ == throws_expected_, "an exception from a callback was swallowed");
    check_channel();
    for (int i = 0; i < kEvents; ++i)
      check_at_rest(i);

    sched_.reset();
    for (auto& s : events_)
      s.event.reset();
    pool_.reset();
    for (auto& h : helpers_)
      h.reset();
  }

  const bool virtual_;
  const std::thread::id driver_ = std::this_thread::get_id();
  TimeMachine machine_;
  std::unique_ptr<Scheduler> sched_;
  int generation_ = 0;
  std::array<EventSlot, kEvents> events_;

  std::mutex mutex_;
  std::condition_variable progress_;
  std::uint64_t progress_count_ = 0;  // guarded by mutex_
  std::array<std::unique_ptr<Helper>, kHelpers> helpers_;
  std::unique_ptr<ThreadPool> pool_;

  std::vector<std::unique_ptr<BlockingWait>> blocking_;
  std::vector<std::unique_ptr<CoRecord>> cos_;
  // Declared before the scheduler goes (finish() resets it first): frames waiting on it unlink.
  std::unique_ptr<coselect::Channel<std::uint32_t>> channel_;
  bool channel_closed_ = false;  // by the fuzzing thread
  std::uint32_t next_channel_value_ = 1;
  // Values below this may have gone with a receiver destroyed before it resumed.
  std::uint32_t channel_lossy_below_ = 0;
  std::array<ChannelValue, kChannelValues> channel_values_{};
  std::vector<std::unique_ptr<Callback>> callbacks_;
  std::array<Callback*, kHandleSlots> handles_{};
  Callback* current_callback_ = nullptr;

  bool in_run_ = false;
  Scheduler::time_point run_limit_{};
  bool backlog_ = false;        // the last run was cut short: the ready queue may hold work
  bool stop_pending_ = false;   // stop() from this thread, not yet consumed
  bool stop_unsynced_ = false;  // a helper was told to stop() since the last sync
  bool stop_maybe_ = false;     // ... and it has; the next run may be the one it stops
  int in_flight_ = 0;           // run_in_thread jobs
  int throws_expected_ = 0;
  int throws_caught_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const int fds_before = open_fd_count();
  {
    Program program(data + 1, size - 1);
    Harness harness((data[0] & 1) != 0);
    harness.execute(program);
  }
  MODEL_CHECK(open_fd_count() == fds_before, "file descriptors leaked");
  return 0;
}
