// coselect::TaskManager and TaskHandle: timed, recurring and deferred callbacks on a scheduler's
// loop (BACpypes' task module), and the gateway through which other threads reach the loop.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "clock.hpp"
#include "detail/syscall.hpp"
#include "detail/timer_heap.hpp"

namespace coselect {

namespace detail {

// What the TaskManager needs from the scheduler that owns it.
class task_host {
 public:
  virtual bool on_loop_thread() const noexcept = 0;  // the caller is the running loop
  virtual void wake() noexcept = 0;                  // set the loop's WaitableEvent
  virtual const clock_source& time_source() const noexcept = 0;
  virtual void make_ready(std::coroutine_handle<> h) = 0;  // loop thread only

 protected:
  ~task_host() = default;
};

struct task_record;
struct task_queue;

// Where a recurring task runs: offset + k*interval on the system clock.
struct task_grid {
  std::chrono::nanoseconds interval;
  std::chrono::nanoseconds offset;
};

// The callable's type, erased: one static table per type instead of a vtable pointer plus a
// separately allocated object.
struct task_ops {
  void (*invoke)(task_record&);
  void (*destroy)(task_record&) noexcept;
  const task_grid* (*grid)(task_record&) noexcept;  // null for a one-shot task
};

// A record's state and the sequence number of the one queue entry that may run it, in one
// word, so that every party can change both with a single compare-and-swap and no lock. Any
// other entry that still points at the record is a tombstone, recognised by its sequence.
namespace task_word {
inline constexpr std::uint64_t idle = 0;
inline constexpr std::uint64_t queued = 1;
inline constexpr std::uint64_t running = 2;
inline constexpr std::uint64_t stopping = 3;  // running, and suspend()ed meanwhile
constexpr std::uint64_t make(std::uint64_t sequence, std::uint64_t state) noexcept {
  return sequence << 2 | state;
}
constexpr std::uint64_t state(std::uint64_t w) noexcept {
  return w & 3;
}
constexpr std::uint64_t sequence(std::uint64_t w) noexcept {
  return w >> 2;
}
// Installs from handles and other threads carry provisional sequences from this range until
// the loop gives them their place (loop sequences count up from 1 and never get here).
inline constexpr std::uint64_t first_remote = std::uint64_t{1} << 60;
}  // namespace task_word

// One installed task. Everything a one-shot timer needs and nothing more (64 bytes): the
// recurring grid lives with the callable of call_every's tasks only. Counted intrusively: each
// TaskHandle and each queue entry holds one reference.
struct task_record {
  static constexpr std::size_t inline_size = 24;  // a lambda capturing three references

  const task_ops* ops = nullptr;
  task_queue* queue = nullptr;
  std::atomic<std::uint64_t> word{0};
  std::atomic<std::chrono::steady_clock::rep> due{0};  // for TaskHandle::due(); mutex writers
  std::atomic<std::uint32_t> refs{0};
  bool pooled = false;  // carved from one of the queue's blocks, not allocated on its own
  alignas(void*) unsigned char storage[inline_size];  // the callable, or a pointer to it

  std::chrono::steady_clock::time_point due_time() const noexcept {
    return std::chrono::steady_clock::time_point(
        std::chrono::steady_clock::duration(due.load(std::memory_order_relaxed)));
  }
  void set_due(std::chrono::steady_clock::time_point t) noexcept {
    due.store(t.time_since_epoch().count(), std::memory_order_relaxed);
  }
};

using task_entry = quad_heap<task_record*>::entry;

// The part of a TaskManager that its handles may outlive. Counted: the TaskManager and every
// record it made (live or free) hold a reference; the last one frees the record blocks.
struct task_queue {
  explicit task_queue(task_host* owner) noexcept : host(owner) {}
  task_queue(const task_queue&) = delete;
  task_queue& operator=(const task_queue&) = delete;
  ~task_queue() {
    for (void* b : blocks)
      ::operator delete(b);
  }

  // Records come in blocks of this many: no malloc header each, and no free() of a million
  // records in random order (which glibc pays for dearly) when a million timers have fired.
  static constexpr std::size_t block_records = 64;

  std::atomic<std::size_t> refs{1};

  // ---- shared, under `mutex` ----
  std::mutex mutex;
  task_host* host;                               // null once the TaskManager is gone
  std::vector<task_entry> inbox;                 // installs that did not come from the loop
  std::vector<std::coroutine_handle<>> resumes;  // resume() calls from other threads
  std::uint64_t next_remote = task_word::first_remote;
  std::atomic<bool> inbox_full{false};  // readable without the mutex: the loop polls it
  // pending(): the loop's count is written by the loop alone (a plain store, not a locked
  // increment); everybody else adds to the other one.
  std::atomic<std::ptrdiff_t> pending_loop{0};
  std::atomic<std::ptrdiff_t> pending_other{0};
  task_record* returned = nullptr;  // pooled records whose last handle went away
  std::size_t returned_count = 0;
  std::atomic<bool> has_returned{false};

  // ---- the loop thread's own: no lock ----
  std::vector<task_entry> soon;  // call_soon's entries in install order; a batch takes them all
  quad_heap<task_record*> heap;  // timed entries
  std::vector<task_entry> incoming;
  // A handle call on the loop thread left an entry in the inbox without waking the loop: fold
  // it in before the queues are next looked at. (Other threads' entries come with a wake-up,
  // and the loop takes them when it handles that.)
  bool inbox_from_loop = false;
  std::uint64_t next_sequence = 1;
  task_record* free_records = nullptr;  // linked through their storage
  std::size_t free_count = 0;
  std::vector<void*> blocks;

  void count_loop(std::ptrdiff_t d) noexcept {
    pending_loop.store(pending_loop.load(std::memory_order_relaxed) + d, std::memory_order_relaxed);
  }
};

inline void release_queue(task_queue& q) noexcept {
  if (q.refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete &q;
}

inline task_record* next_free(task_record& r) noexcept {
  task_record* next;
  // A free record's storage holds the link; a pointer's size is what is meant.
  std::memcpy(&next, r.storage, sizeof next);  // NOLINT(bugprone-sizeof-expression)
  return next;
}
inline void link_free(task_record*& list, task_record& r) noexcept {
  std::memcpy(r.storage, &list, sizeof list);  // NOLINT(bugprone-sizeof-expression)
  list = &r;
}

// A record nobody references any more, its callable destroyed, released off the loop's own
// paths: a pooled one goes back to the pool while the TaskManager lives.
inline void free_record(task_record& r) noexcept {
  task_queue& q = *r.queue;
  if (r.pooled) {
    {
      std::lock_guard lock(q.mutex);
      if (q.host != nullptr) {
        link_free(q.returned, r);
        ++q.returned_count;
        q.has_returned.store(true, std::memory_order_relaxed);
        return;  // the pool keeps its reference
      }
    }
  } else {
    r.~task_record();
    ::operator delete(static_cast<void*>(&r));
  }
  release_queue(q);
}

// Drops one reference; on the last one destroys the callable and returns true (the memory is
// then the caller's to recycle or free). A sole owner needs no locked decrement: nobody else
// can take a reference without already holding one.
inline bool drop_ref(task_record& r) noexcept {
  if (r.refs.load(std::memory_order_acquire) != 1 &&
      r.refs.fetch_sub(1, std::memory_order_acq_rel) != 1) {
    return false;
  }
  r.ops->destroy(r);
  return true;
}

template <class C>
inline constexpr bool fits_inline =
    // NOLINTNEXTLINE(misc-redundant-expression): a template condition, constant per C
    sizeof(C) <= task_record::inline_size &&
    alignof(C) <= alignof(void*) && std::is_nothrow_destructible_v<C>;

template <class C>
C& callable_of(task_record& r) noexcept {
  if constexpr (fits_inline<C>) {
    return *std::launder(reinterpret_cast<C*>(r.storage));
  } else {
    C* p;
    // A callable too big for the record lives on the heap; the storage holds its pointer.
    std::memcpy(&p, r.storage, sizeof p);  // NOLINT(bugprone-sizeof-expression)
    return *p;
  }
}

// call_every's callable: the grid travels with it.
template <class F>
struct recurring_callable {
  task_grid grid;
  F f;
  void operator()() { f(); }
};

template <class C>
struct grid_of {
  static constexpr const task_grid* (*get)(task_record&) noexcept = nullptr;
};
template <class F>
struct grid_of<recurring_callable<F>> {
  static const task_grid* grid(task_record& r) noexcept {
    return &callable_of<recurring_callable<F>>(r).grid;
  }
  static constexpr const task_grid* (*get)(task_record&) noexcept = &grid;
};

template <class C>
struct task_ops_for {
  static void invoke(task_record& r) { callable_of<C>(r)(); }
  static void destroy(task_record& r) noexcept {
    if constexpr (fits_inline<C>) {
      callable_of<C>(r).~C();
    } else {
      delete &callable_of<C>(r);
    }
  }
  static constexpr task_ops table{&invoke, &destroy, grid_of<C>::get};
};

template <class C, class F>
void construct_callable(task_record& r, F&& f) {
  if constexpr (fits_inline<C>) {
    ::new (static_cast<void*>(r.storage)) C(std::forward<F>(f));
  } else {
    C* p = new C(std::forward<F>(f));
    std::memcpy(r.storage, &p, sizeof p);  // NOLINT(bugprone-sizeof-expression)
  }
  r.ops = &task_ops_for<C>::table;
}

// First point of the grid offset + k*interval (counted from the system clock's epoch) strictly
// after `wall_now`. Floored division, so negative offsets and offsets beyond the interval work.
inline std::chrono::nanoseconds next_grid_point(std::chrono::nanoseconds wall_now,
                                                std::chrono::nanoseconds interval,
                                                std::chrono::nanoseconds offset) noexcept {
  const std::int64_t from_origin = (wall_now - offset).count();
  std::int64_t k = from_origin / interval.count();
  if (from_origin % interval.count() < 0) --k;  // floor, not truncation
  return offset + interval * (k + 1);
}

}  // namespace detail

// TaskHandle — a copyable reference to a task installed on a TaskManager.
//
// Default-constructed handles are empty (every call is a no-op, scheduled() is false).
// Dropping a handle does not cancel its task. Every member is thread-safe. A handle whose
// scheduler is gone is inert.
class TaskHandle {
 public:
  using clock = std::chrono::steady_clock;
  using time_point = clock::time_point;

  TaskHandle() noexcept = default;
  TaskHandle(const TaskHandle& other) noexcept : record_(other.record_) {
    if (record_) record_->refs.fetch_add(1, std::memory_order_relaxed);
  }
  TaskHandle(TaskHandle&& other) noexcept : record_(std::exchange(other.record_, nullptr)) {}
  TaskHandle& operator=(TaskHandle other) noexcept {
    std::swap(record_, other.record_);
    return *this;
  }
  ~TaskHandle() {
    if (record_ && detail::drop_ref(*record_)) detail::free_record(*record_);
  }

  bool empty() const noexcept { return record_ == nullptr; }
  explicit operator bool() const noexcept { return !empty(); }

  // Waiting to run: queued, or (recurring) running now and not suspended.
  bool scheduled() const {
    if (!record_) return false;
    namespace w = detail::task_word;
    switch (w::state(record_->word.load(std::memory_order_acquire))) {
      case w::queued:
        return true;
      case w::running:
        return record_->ops->grid != nullptr;
      default:
        return false;
    }
  }

  // Unschedules the task (a no-op if it is not scheduled). A recurring task that suspends
  // itself from its own callback stays suspended.
  void suspend() {
    if (!record_) return;
    namespace w = detail::task_word;
    // The queue entry stays where it is, a tombstone from now on: no lock, no search.
    std::uint64_t word = record_->word.load(std::memory_order_acquire);
    for (;;) {
      std::uint64_t next;
      switch (w::state(word)) {
        case w::queued:
          next = w::make(w::sequence(word), w::idle);
          break;
        case w::running:
          next = w::make(w::sequence(word), w::stopping);
          break;
        default:
          return;
      }
      if (record_->word.compare_exchange_weak(word, next, std::memory_order_acq_rel,
                                              std::memory_order_acquire)) {
        if (w::state(word) == w::queued) {
          record_->queue->pending_other.fetch_sub(1, std::memory_order_relaxed);
        }
        return;
      }
    }
  }

  // Re-installs a suspended task at the time it was due (a past time runs at once). A no-op
  // for a task that is scheduled.
  void resume() { reinstall(std::nullopt); }

  // Re-installs the task at `when` (moving it if it was scheduled). A recurring task runs at
  // `when` and then on its grid again.
  void reschedule_at(time_point when) { reinstall(when); }

  template <class Rep, class Period>
  void reschedule_after(std::chrono::duration<Rep, Period> delay) {
    if (!record_) return;
    const detail::task_host* host = record_->queue->host;
    if (host == nullptr) return;
    reinstall(detail::saturating_add<clock>(host->time_source().now(), delay));
  }

  // When the task is (or was last) due.
  time_point due() const {
    if (!record_) return {};
    return record_->due_time();
  }

  friend bool operator==(const TaskHandle&, const TaskHandle&) = default;

 private:
  friend class TaskManager;
  // Adopts one reference.
  explicit TaskHandle(detail::task_record* r) noexcept : record_(r) {}

  // Goes through the inbox even on the loop thread: the loop's own queues are not locked, and
  // handle calls are not the hot path.
  void reinstall(std::optional<time_point> when) {
    if (!record_) return;
    namespace w = detail::task_word;
    detail::task_queue& q = *record_->queue;
    std::lock_guard lock(q.mutex);
    if (q.host == nullptr) return;
    const std::uint64_t tag = q.next_remote++;
    const time_point due = when ? *when : record_->due_time();
    q.inbox.push_back(detail::task_entry{due, tag, record_});  // before the state: may throw
    std::uint64_t word = record_->word.load(std::memory_order_acquire);
    for (;;) {
      const std::uint64_t state = w::state(word);
      std::uint64_t next = w::make(tag, w::queued);
      if (!when && state == w::stopping) {
        next = w::make(w::sequence(word), w::running);  // suspended from its own callback
      } else if (!when && state != w::idle) {
        q.inbox.pop_back();  // resume() of a scheduled task
        return;
      }
      if (record_->word.compare_exchange_weak(word, next, std::memory_order_acq_rel,
                                              std::memory_order_acquire)) {
        break;
      }
    }
    if (!when && w::state(word) == w::stopping) {
      q.inbox.pop_back();
      return;
    }
    if (w::state(word) != w::queued) q.pending_other.fetch_add(1, std::memory_order_relaxed);
    record_->set_due(due);
    record_->refs.fetch_add(1, std::memory_order_relaxed);  // the entry's
    q.inbox_full.store(true, std::memory_order_release);
    if (q.host->on_loop_thread()) {
      q.inbox_from_loop = true;
    } else {
      q.host->wake();  // under the lock: see TaskManager::resume
    }
  }

  detail::task_record* record_ = nullptr;
};

// TaskManager — timed tasks and cross-thread hand-offs for one Scheduler, which owns it.
//
// Every member is thread-safe. Callbacks run on the scheduler's loop thread, never inside the
// call that installs them; equal due times run in install order; timers never fire early.
// Calls from other threads wake a blocked loop through its WaitableEvent; calls from the loop
// thread make no system call. Work installed while the scheduler is not running waits for its
// next run. A throwing callback does not drop the others: its exception follows the
// scheduler's policy (by default run() rethrows it) and the rest of the batch stays queued.
//
// Calls from the loop thread take no lock: they fill queues only the loop touches. Everybody
// else goes through a locked inbox that the loop folds in before it looks at its queues.
class TaskManager {
 public:
  using clock = std::chrono::steady_clock;
  using time_point = clock::time_point;
  using duration = clock::duration;

  explicit TaskManager(detail::task_host& host) : q_(*new detail::task_queue(&host)) {}
  TaskManager(const TaskManager&) = delete;
  TaskManager& operator=(const TaskManager&) = delete;

  ~TaskManager() {
    {
      std::lock_guard lock(q_.mutex);
      q_.host = nullptr;  // from now on handles leave the inbox alone
      q_.resumes.clear();
    }
    // Outside the lock: dropping the last reference runs the callable's destructor.
    auto retire = [](detail::task_entry& e) {
      namespace w = detail::task_word;
      detail::task_record& r = *e.payload;
      std::uint64_t expected = w::make(e.sequence, w::queued);
      r.word.compare_exchange_strong(expected, w::make(e.sequence, w::idle),
                                     std::memory_order_acq_rel);
      if (detail::drop_ref(r)) detail::free_record(r);
    };
    for (auto* entries : {&q_.soon, &q_.heap.entries(), &q_.inbox, &batch_}) {
      for (detail::task_entry& e : *entries)
        retire(e);
      entries->clear();
    }
    // The idle pooled records each hold a reference, dropped here in one go (the
    // TaskManager's own keeps the count above zero). Counted, not walked: a million records
    // freed in deadline order make a list that is one cache miss per link.
    std::size_t idle_records = q_.free_count;
    {
      std::lock_guard lock(q_.mutex);
      q_.returned = nullptr;
      idle_records += std::exchange(q_.returned_count, 0);
    }
    q_.free_records = nullptr;
    q_.free_count = 0;
    q_.refs.fetch_sub(idle_records + unpooled_released_, std::memory_order_relaxed);
    detail::release_queue(q_);
  }

  // Runs f on the loop as soon as possible, after the work already queued (BACpypes deferred).
  template <class F>
  TaskHandle call_soon(F&& f) {
    const bool local = host().on_loop_thread();
    return install(make_record<std::decay_t<F>>(local, std::forward<F>(f)), time_point::min(),
                   local);
  }

  template <class Rep, class Period, class F>
  TaskHandle call_later(std::chrono::duration<Rep, Period> delay, F&& f) {
    const bool local = host().on_loop_thread();
    const time_point due = detail::saturating_add<clock>(host().time_source().now(), delay);
    return install(make_record<std::decay_t<F>>(local, std::forward<F>(f)), due, local);
  }

  template <class F>
  TaskHandle call_at(time_point when, F&& f) {
    const bool local = host().on_loop_thread();
    return install(make_record<std::decay_t<F>>(local, std::forward<F>(f)), when, local);
  }

  // Runs f at every point of the grid offset + k*interval counted from the system clock's
  // epoch (virtual wall time under a TimeMachine), first at the next one after now. A run that
  // overruns skips the ticks it missed. interval <= 0 throws std::invalid_argument.
  template <class Rep1, class Period1, class F, class Rep2 = std::int64_t,
            class Period2 = std::nano>
  TaskHandle call_every(std::chrono::duration<Rep1, Period1> interval, F&& f,
                        std::chrono::duration<Rep2, Period2> offset = {}) {
    const auto step = detail::saturating_ns(interval);
    if (step.count() <= 0) {
      throw std::invalid_argument("coselect::TaskManager::call_every: interval must be > 0");
    }
    using callable = std::decay_t<F>;
    static_assert(std::is_invocable_v<callable&>, "a task must be callable with no arguments");
    const detail::task_grid grid{step, detail::saturating_ns(offset)};
    const bool local = host().on_loop_thread();
    detail::task_record* r = make_record<detail::recurring_callable<callable>>(
        local, detail::recurring_callable<callable>{grid, callable(std::forward<F>(f))});
    return install(r, next_grid_due(grid), local);
  }

  // Resumes h on the loop thread (from any thread; never inline).
  void resume(std::coroutine_handle<> h) {
    if (host().on_loop_thread()) {
      host().make_ready(h);
      return;
    }
    // Wake while holding the lock: once the loop can drain the inbox, this call may not
    // touch the scheduler any more (it may finish its run and be destroyed).
    std::lock_guard lock(q_.mutex);
    q_.resumes.push_back(h);
    q_.host->wake();
  }

  // Number of installed tasks waiting to run (diagnostics and tests).
  std::size_t pending() const {
    const std::ptrdiff_t n = q_.pending_loop.load(std::memory_order_relaxed) +
                             q_.pending_other.load(std::memory_order_relaxed);
    return n > 0 ? static_cast<std::size_t>(n) : 0;
  }

  // ---- for the owning Scheduler (loop thread) ----------------------------------------------

  // The earliest due time; nullopt when nothing is installed.
  std::optional<time_point> next_due() {
    if (q_.inbox_from_loop) fold_inbox();
    if (!q_.soon.empty()) {
      for (const detail::task_entry& e : q_.soon) {
        if (live(e)) return time_point::min();
      }
      for (const detail::task_entry& e : q_.soon)
        release(*e.payload);
      q_.soon.clear();
    }
    while (!q_.heap.empty()) {
      const detail::task_entry e = q_.heap.top();
      if (live(e)) return e.due;
      q_.heap.pop();
      release(*e.payload);
    }
    return std::nullopt;
  }

  // Moves the coroutines other threads asked to resume into `out`, and takes in the tasks they
  // installed.
  void take_inbox(std::vector<std::coroutine_handle<>>& out) {
    {
      std::lock_guard lock(q_.mutex);
      out.swap(q_.resumes);
      q_.incoming.swap(q_.inbox);
      q_.inbox_full.store(false, std::memory_order_relaxed);
    }
    q_.inbox_from_loop = false;
    place_incoming();
  }

  // Runs the tasks due at `now` (those due when the call began; tasks they install run on a
  // later call). Returns the first exception a callback threw; the tasks after it stay queued.
  std::exception_ptr run_due(time_point now) {
    namespace w = detail::task_word;
    const auto earliest = next_due();
    if (!earliest || now < *earliest) return nullptr;
    batch_.swap(q_.soon);
    try {
      while (!q_.heap.empty() && !(now < q_.heap.top().due)) {
        batch_.push_back(q_.heap.top());
        q_.heap.pop();
      }
    } catch (...) {
      requeue_rest(0);
      throw;
    }
    std::exception_ptr failure;
    for (std::size_t i = 0; i < batch_.size(); ++i) {
      const detail::task_entry e = batch_[i];
      detail::task_record& r = *e.payload;
      // Without a handle nobody else can reach the record: plain stores will do.
      const bool sole = r.refs.load(std::memory_order_acquire) == 1;
      std::uint64_t word = w::make(e.sequence, w::queued);
      const std::uint64_t running = w::make(e.sequence, w::running);
      if (sole) {
        if (r.word.load(std::memory_order_relaxed) != word) {
          release(r);  // suspended or moved meanwhile
          continue;
        }
        r.word.store(running, std::memory_order_relaxed);
      } else if (!r.word.compare_exchange_strong(word, running, std::memory_order_acq_rel,
                                                 std::memory_order_acquire)) {
        release(r);
        continue;
      }
      q_.count_loop(-1);
      try {
        r.ops->invoke(r);
      } catch (...) {
        failure = std::current_exception();
      }
      finish_run(r, e.sequence, sole);
      if (failure) {
        requeue_rest(i + 1);
        break;
      }
    }
    batch_.clear();
    return failure;
  }

 private:
  detail::task_host& host() const {
    detail::task_host* h = q_.host;
    return *h;
  }

  static bool live(const detail::task_entry& e) noexcept {
    return e.payload->word.load(std::memory_order_acquire) ==
           detail::task_word::make(e.sequence, detail::task_word::queued);
  }

  // Loop thread: drops an entry's reference; the record goes on the free list if it was the
  // last one.
  void release(detail::task_record& r) noexcept {
    if (!detail::drop_ref(r)) return;
    if (r.pooled) {
      detail::link_free(q_.free_records, r);
      ++q_.free_count;
    } else {
      // Back to malloc, which hands it to the thread that allocated it again: kept here it
      // would make that thread fault in fresh memory for every record. Its reference to the
      // queue is dropped with the others at the end (the TaskManager's own keeps the queue
      // alive until then): a locked decrement per record would pull the count's cache line
      // away from the thread that is installing.
      r.~task_record();
      ::operator delete(static_cast<void*>(&r));
      ++unpooled_released_;
    }
  }

  // Loop thread: a record from the pool, refilled from the records that came back through
  // handles, or from a new block.
  // Other threads allocate on their own rather than lock the pool.
  detail::task_record* take_unpooled() {
    detail::task_record& r =
        *::new (::operator new(sizeof(detail::task_record))) detail::task_record;
    r.queue = &q_;
    q_.refs.fetch_add(1, std::memory_order_relaxed);
    return &r;
  }

  detail::task_record* take_pooled() {
    if (q_.free_records == nullptr && q_.has_returned.load(std::memory_order_relaxed)) {
      std::lock_guard lock(q_.mutex);
      q_.free_records = std::exchange(q_.returned, nullptr);
      q_.free_count = std::exchange(q_.returned_count, 0);
      q_.has_returned.store(false, std::memory_order_relaxed);
    }
    if (q_.free_records == nullptr) {
      constexpr std::size_t n = detail::task_queue::block_records;
      q_.blocks.push_back(nullptr);  // first, so that a failure here leaks nothing
      void* block;
      try {
        block = ::operator new(n * sizeof(detail::task_record));
      } catch (...) {
        q_.blocks.pop_back();
        throw;
      }
      q_.blocks.back() = block;
      auto* records = static_cast<detail::task_record*>(block);
      for (std::size_t i = n; i-- > 0;) {
        detail::task_record& r = *::new (static_cast<void*>(records + i)) detail::task_record;
        r.queue = &q_;
        r.pooled = true;
        detail::link_free(q_.free_records, r);
      }
      q_.free_count = n;
      q_.refs.fetch_add(n, std::memory_order_relaxed);
    }
    detail::task_record* r = q_.free_records;
    q_.free_records = detail::next_free(*r);
    --q_.free_count;
    return r;
  }

  // A record that never got installed: back where it came from.
  void discard(detail::task_record& r, bool local) noexcept {
    if (local) {
      detail::link_free(q_.free_records, r);
      ++q_.free_count;
    } else {
      detail::free_record(r);
    }
  }

  template <class C, class F>
  detail::task_record* make_record(bool local, F&& f) {
    static_assert(std::is_invocable_v<C&>, "a task must be callable with no arguments");
    detail::task_record* r = local ? take_pooled() : take_unpooled();
    try {
      detail::construct_callable<C>(*r, std::forward<F>(f));
    } catch (...) {
      discard(*r, local);
      throw;
    }
    return r;
  }

  time_point next_grid_due(const detail::task_grid& g) const {
    const detail::clock_source& c = host().time_source();
    const auto wall =
        std::chrono::duration_cast<std::chrono::nanoseconds>(c.wall_now().time_since_epoch());
    const auto next = detail::next_grid_point(wall, g.interval, g.offset);
    return c.now() + std::chrono::duration_cast<duration>(next - wall);
  }

  void push_local(const detail::task_entry& e) {
    if (e.due == time_point::min()) {
      q_.soon.push_back(e);
    } else {
      q_.heap.push(e.due, e.sequence, e.payload);
    }
  }

  TaskHandle install(detail::task_record* r, time_point due, bool local) {
    namespace w = detail::task_word;
    r->set_due(due);
    r->refs.store(2, std::memory_order_relaxed);  // the queue entry's and the handle's
    try {
      if (local) {
        // What other threads installed before this call goes first (FIFO among equals).
        if (q_.inbox_full.load(std::memory_order_acquire)) fold_inbox();
        const std::uint64_t sequence = q_.next_sequence++;
        r->word.store(w::make(sequence, w::queued), std::memory_order_relaxed);
        push_local(detail::task_entry{due, sequence, r});
        q_.count_loop(1);
        sweep_if_mostly_tombstones();
      } else {
        std::lock_guard lock(q_.mutex);
        const std::uint64_t tag = q_.next_remote++;
        r->word.store(w::make(tag, w::queued), std::memory_order_relaxed);
        q_.inbox.push_back(detail::task_entry{due, tag, r});
        q_.inbox_full.store(true, std::memory_order_release);
        q_.pending_other.fetch_add(1, std::memory_order_relaxed);
        q_.host->wake();  // under the lock: see resume()
      }
    } catch (...) {
      r->ops->destroy(*r);
      discard(*r, local);
      throw;
    }
    return TaskHandle(r);
  }

  void fold_inbox() {
    {
      std::lock_guard lock(q_.mutex);
      q_.incoming.swap(q_.inbox);
      q_.inbox_full.store(false, std::memory_order_relaxed);
    }
    q_.inbox_from_loop = false;
    place_incoming();
  }

  // Gives the entries taken from the inbox their place among the loop's own, in inbox order.
  void place_incoming() {
    namespace w = detail::task_word;
    for (const detail::task_entry& e : q_.incoming) {
      detail::task_record& r = *e.payload;
      std::uint64_t expected = w::make(e.sequence, w::queued);
      const std::uint64_t sequence = q_.next_sequence++;
      bool placed;
      if (r.refs.load(std::memory_order_acquire) == 1) {  // no handle: nobody else writes it
        placed = r.word.load(std::memory_order_relaxed) == expected;
        if (placed) r.word.store(w::make(sequence, w::queued), std::memory_order_relaxed);
      } else {
        placed =
            r.word.compare_exchange_strong(expected, w::make(sequence, w::queued),
                                           std::memory_order_acq_rel, std::memory_order_acquire);
      }
      if (placed) {
        push_local(detail::task_entry{e.due, sequence, &r});
      } else {
        release(r);  // suspended or moved again before the loop got to it
      }
    }
    q_.incoming.clear();
    sweep_if_mostly_tombstones();
  }

  // Suspended and moved tasks leave tombstones in the heap until their old deadline comes up,
  // each holding its record (and callable). A watchdog that reschedules on every event would
  // pile them up; sweeping once they outnumber the live tasks keeps the heap within twice its
  // live size at O(1) amortised per entry. Never called with the mutex held: releasing a
  // record may run a callable's destructor.
  void sweep_if_mostly_tombstones() noexcept {
    const std::size_t n = q_.heap.size();
    if (n <= 64 || n <= 2 * pending()) return;
    q_.heap.retain([this](const detail::task_entry& e) {
      if (live(e)) return true;
      release(*e.payload);
      return false;
    });
  }

  // After a callback: a recurring task goes back on its grid, unless it was suspended or moved
  // meanwhile; a one-shot task is done. Consumes the batch's reference.
  void finish_run(detail::task_record& r, std::uint64_t sequence, bool sole) {
    namespace w = detail::task_word;
    const std::uint64_t running = w::make(sequence, w::running);
    const auto grid_of = r.ops->grid;
    if (grid_of == nullptr && sole) {
      r.word.store(w::make(sequence, w::idle), std::memory_order_relaxed);
      release(r);
      return;
    }
    if (grid_of != nullptr) {
      const detail::task_grid* grid = grid_of(r);
      // due() is written under the lock, so that a concurrent reschedule's time wins.
      std::lock_guard lock(q_.mutex);
      std::uint64_t word = running;
      const std::uint64_t next = q_.next_sequence;
      if (q_.host != nullptr &&
          r.word.compare_exchange_strong(word, w::make(next, w::queued), std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
        ++q_.next_sequence;
        const time_point due = next_grid_due(*grid);
        r.set_due(due);
        q_.count_loop(1);
        push_local(detail::task_entry{due, next, &r});  // keeps the batch's reference
        return;
      }
    }
    std::uint64_t word = r.word.load(std::memory_order_acquire);
    while ((w::state(word) == w::running || w::state(word) == w::stopping) &&
           w::sequence(word) == sequence) {
      if (r.word.compare_exchange_weak(word, w::make(sequence, w::idle), std::memory_order_acq_rel,
                                       std::memory_order_acquire)) {
        break;
      }
    }
    release(r);
  }

  void requeue_rest(std::size_t from) {
    std::vector<detail::task_entry> front;
    for (std::size_t i = from; i < batch_.size(); ++i) {
      const detail::task_entry& e = batch_[i];
      if (!live(e)) {
        release(*e.payload);
      } else if (e.due == time_point::min()) {
        front.push_back(e);
      } else {
        q_.heap.push(e.due, e.sequence, e.payload);  // the same sequence: the same place
      }
    }
    q_.soon.insert(q_.soon.begin(), front.begin(), front.end());
    batch_.clear();
  }

  detail::task_queue& q_;
  std::vector<detail::task_entry> batch_;  // loop thread only
  std::size_t unpooled_released_ = 0;      // loop thread only: see release()
};

}  // namespace coselect
