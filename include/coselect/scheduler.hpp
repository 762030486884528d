// coselect::Scheduler: the event loop (BACpypes' core.run(), without SPIN), on select() by default
// and on poll() or epoll when a program grows (backend.hpp).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "backend.hpp"
#include "clock.hpp"
#include "detail/cancel_point.hpp"
#include "detail/reactors.hpp"
#include "detail/ready_queue.hpp"
#include "detail/timer_heap.hpp"
#include "detail/wait_node.hpp"
#include "dispatcher.hpp"
#include "join_handle.hpp"
#include "task.hpp"
#include "task_manager.hpp"
#include "waitable_event.hpp"

namespace coselect {

namespace detail {
struct scheduler_access;
}

// Scheduler — one thread's event loop: coroutines, fd readiness, timers, and work from other
// threads.
//
// Contract
//  * One thread at a time calls the run* family; every other member may be called from any
//    thread (stop() also from a signal handler). Calls made while nothing runs are queued.
//  * One iteration: resume the coroutines that were ready when it began (FIFO), take work
//    other threads posted, release event waiters, fire due timers and tasks, then wait in the
//    backend (select() by default, see backend.hpp) for the fds that have waiters — blocking
//    until the next deadline only when nothing is ready. Idle means blocked there: no
//    spinning, no polling interval, whatever the number of fds open.
//  * Other threads wake a blocked loop through the loop's own WaitableEvent.
//  * An exception escaping a spawned task or a TaskManager callback is never swallowed: by
//    default the running run* stops and rethrows it (set_exception_handler changes that). A
//    spawned task ending with operation_canceled after its JoinHandle::cancel() did not fail.
//  * Stop requests from other threads for coroutines waiting on this loop go through its cancel
//    inbox and wake it; the coroutines resume here (detail/cancel_point.hpp).
//  * Schedulers share no state. Destroying one destroys the coroutine frames it owns (spawned
//    tasks, and a run(task) that was stopped before finishing); it must not be running. It
//    first waits for run_in_thread jobs its coroutines started that are still running on pool
//    threads (their results are dropped): a job that waits for this loop would never end, so
//    do not destroy a scheduler from, or while it is needed by, such a job.
class Scheduler final : private detail::loop_hooks,
                        private detail::task_host,
                        private detail::task_owner,
                        private detail::reactor_sink {
 public:
  using clock = std::chrono::steady_clock;
  using time_point = clock::time_point;
  using duration = clock::duration;

  Scheduler() : Scheduler(nullptr, detail::make_default_reactor()) {}
  // Throws std::invalid_argument for a backend this platform lacks (backend_available()), and
  // std::system_error if the backend's resources cannot be had (EMFILE).
  explicit Scheduler(Backend backend) : Scheduler(nullptr, backend) {}
  explicit Scheduler(TimeMachine& machine) : Scheduler(&machine, detail::make_default_reactor()) {}
  Scheduler(TimeMachine& machine, Backend backend) : Scheduler(&machine, backend) {}
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  ~Scheduler() {
    // Pool threads still running run_in_thread jobs write into frames we own and post to
    // tasks_: let them finish before anything goes.
    {
      std::unique_lock lock(jobs_mutex_);
      jobs_finished_.wait(lock, [this] { return jobs_running_ == 0; });
    }
    // Frames first, while every structure their awaiters unlink from is still intact.
    while (owned_head_ != nullptr) {
      detail::task_promise_base* p = owned_head_;
      unlink_owned(*p);
      p->owner = nullptr;
      p->frame().destroy();
    }
    {
      std::lock_guard lock(spawn_mutex_);
      for (auto h : spawn_inbox_)
        h.destroy();
      spawn_inbox_.clear();
      finished_elsewhere_.clear();  // their frames were in the owned list, destroyed above
    }
    // Waiters whose frames are not ours (driven by someone else) are forgotten, not resumed.
    while (watched_head_ != nullptr) {
      detail::event_watch& w = *watched_head_;
      while (w.head != nullptr)
        w.unlink(*w.head);
      drop_watch(w);
    }
    while (timers_.pop() != nullptr) {
    }
    reactor_->forget_all();
    ready_.clear();
  }

  // The scheduler running on this thread, or nullptr.
  static Scheduler* current() noexcept { return static_cast<Scheduler*>(detail::current_loop()); }

  // Runs until `main` completes and returns its value or rethrows its exception. If the loop
  // stops first (stop(), or a failure of other work), throws std::runtime_error (or that
  // failure); the unfinished task then stays with the scheduler and its result is dropped.
  template <class T>
  T run(Task<T> main) {
    if (!main.valid()) throw std::invalid_argument("coselect::Scheduler::run: empty task");
    if (running_.load(std::memory_order_acquire)) {
      throw std::logic_error("coselect::Scheduler: run* is already active");
    }
    auto frame = main.release();
    detail::task_promise_base& root = frame.promise();
    root.owner = this;
    root.at_top = true;
    bool finished = false;
    root_ = &root;
    root_finished_ = &finished;
    try {
      drive([&] { return finished; }, std::nullopt, [&] { ready_.push_back(frame); });
    } catch (...) {
      abandon_root(root, finished);
      throw;
    }
    if (!finished) {
      abandon_root(root, finished);
      throw std::runtime_error("coselect::Scheduler::run: stopped before the task completed");
    }
    root_ = nullptr;
    root_finished_ = nullptr;
    Task<T> done(frame);  // destroys the frame after taking the result
    return frame.promise().take();
  }

  // Runs until stop().
  void run() {
    drive([] { return false; }, std::nullopt, [] {});
  }

  // Runs until now() reaches now() + d and nothing is left to do at that instant: timers due
  // exactly at the limit fire (it is inclusive), and the coroutines they and earlier work made
  // ready run, without blocking. (A coroutine that never stops yielding keeps it running.)
  template <class Rep, class Period>
  void run_for(std::chrono::duration<Rep, Period> d) {
    run_until(detail::saturating_add<clock>(now(), d));
  }
  void run_until(time_point limit) {
    drive([] { return false; }, limit, [] {});
  }

  // Asks the running (or next) run* to return after its current iteration. Any thread,
  // async-signal-safe, never lost.
  void stop() noexcept {
    stop_requested_.store(true, std::memory_order_release);
    wake_.set();
  }

  // Starts `t` on the loop (never inline), detached: the scheduler owns its frame. Any thread.
  // The task runs under a stop token of its own, which only the returned handle (or a copy of
  // it) stops; dropping the handle neither cancels nor detaches anything more than it was.
  JoinHandle spawn(Task<void> t) { return spawn_under(std::move(t), nullptr); }

  TaskManager& tasks() noexcept { return tasks_; }

  time_point now() const noexcept override { return clock_.now(); }
  bool is_virtual_time() const noexcept { return clock_.is_virtual(); }

  // Replaces the failure policy (default: the running run* rethrows). The handler runs on the
  // loop thread; an exception it throws is rethrown by run*.
  void set_exception_handler(std::function<void(std::exception_ptr)> handler) {
    exception_handler_ = std::move(handler);
  }

  // Asyncore-style callback objects (see Dispatcher). Loop thread, or while nothing runs.
  void add_dispatcher(Dispatcher& d) { reactor_->add_dispatcher(d); }
  void remove_dispatcher(Dispatcher& d) noexcept { reactor_->remove_dispatcher(d); }

  Backend backend() const noexcept { return reactor_->backend(); }

  // Every coroutine of this scheduler waiting on `fd` (readable/writable, timed or not) resumes
  // with std::system_error(errc::operation_canceled), oldest first; an fd nobody waits on is
  // left alone. Under epoll, call it before closing an fd that coroutines still wait on. Loop
  // thread, or while nothing runs (else std::logic_error).
  void cancel_io(native_handle fd) {
    if (running_.load(std::memory_order_acquire) && !on_loop_thread()) {
      throw std::logic_error("coselect::Scheduler::cancel_io: call it on the loop thread");
    }
    reactor_->finish_all(fd, detail::wait_outcome::canceled, 0, *this);
  }

 private:
  friend struct detail::scheduler_access;

  Scheduler(TimeMachine* machine, Backend backend)
      : Scheduler(machine, detail::make_reactor(backend)) {}
  Scheduler(TimeMachine* machine, std::unique_ptr<detail::reactor> reactor)
      : clock_(machine), tasks_(*this), reactor_(std::move(reactor)) {
    reactor_->pin(detail::event_access::read_fd(wake_));
  }

  // spawn(), with `token` (if not null) instead of a token of the task's own: TaskGroup.
  JoinHandle spawn_under(Task<void> t, const std::stop_token* token) {
    if (!t.valid()) throw std::invalid_argument("coselect::Scheduler::spawn: empty task");
    auto frame = t.release();
    detail::frame_header& header = detail::frame_header::of(frame.address());
    frame.promise().spawned = true;  // its handle escapes here: the frame is on the heap
    if (token != nullptr) {
      frame.promise().set_token(token);
    } else {
      frame.promise().set_own_token(header);
    }
    JoinHandle handle(header, *this, JoinHandle::first_t{});  // before the frame is published
    if (on_loop_thread()) {
      adopt(frame);
      ready_.push_back(frame);
      return handle;
    }
    std::lock_guard lock(spawn_mutex_);  // wake under the lock: see TaskManager::resume
    spawn_inbox_.push_back(frame);
    wake_.set();
    return handle;
  }

  // ---- the run loop ---------------------------------------------------------------------

  struct running_scope {
    explicit running_scope(Scheduler& s) : self(s), previous(detail::current_loop()) {
      if (s.running_.exchange(true, std::memory_order_acq_rel)) {
        throw std::logic_error("coselect::Scheduler: run* is already active");
      }
      detail::set_current_loop(&s);
    }
    ~running_scope() {
      detail::set_current_loop(previous);
      self.running_.store(false, std::memory_order_release);
    }
    Scheduler& self;
    detail::loop_hooks* previous;
  };

  template <class Done, class Start>
  void drive(Done done, std::optional<time_point> limit, Start start) {
    running_scope scope(*this);
    absorb_posted_work();  // spawns made before this run start before the root
    start();
    bool reached_limit = false;
    for (;;) {
      if (done()) return;
      // Load first: an exchange is a locked read-modify-write, paid every iteration otherwise.
      const bool stop = stop_requested_.load(std::memory_order_acquire) &&
                        stop_requested_.exchange(false, std::memory_order_acq_rel);
      activity_ = false;
      iterate(!stop && !reached_limit, limit);
      if (!failures_.empty()) {
        std::exception_ptr e = failures_.front();
        failures_.pop_front();
        std::rethrow_exception(e);
      }
      if (stop) return;
      if (limit) {
        // At the limit, one more turn runs what the last timers made ready; then return as
        // soon as a turn brings nothing new (a coroutine that only yields does not count).
        if (reached_limit && !activity_) return;
        reached_limit = reached_limit || now() >= *limit;
      }
    }
  }

  void iterate(bool may_block, std::optional<time_point> limit) {
    // 1. The coroutines that were ready when the iteration began.
    for (std::size_t n = ready_.size(); n > 0 && failures_.empty(); --n) {
      std::coroutine_handle<> h = ready_.front();
      ready_.pop_front();
      h.resume();
    }
    if (!failures_.empty() || (root_finished_ != nullptr && *root_finished_)) return;
    // 2. Work from other threads, then 3. event waiters, then 4. timers and tasks.
    absorb_posted_work();
    scan_events();
    fire_due(limit);
    if (!failures_.empty()) return;
    // 5. I/O: block only when nothing is ready. (A stop() or a root that finished elsewhere,
    // seen only now that the wake-up event was cleared, must not be slept through.)
    const bool finished = root_finished_ != nullptr && *root_finished_;
    wait_for_io(may_block && ready_.empty() && !finished &&
                    !stop_requested_.load(std::memory_order_acquire),
                limit);
  }

  void absorb_posted_work() {
    const std::uint64_t s = detail::event_access::load(wake_);
    if (detail::event_access::is_set(s)) {
      activity_ = true;
      wake_.clear();  // before draining: a post after this sets it again
      {
        std::lock_guard lock(spawn_mutex_);
        spawned_.swap(spawn_inbox_);
      }
      for (auto h : spawned_) {
        adopt(h);
        ready_.push_back(h);
      }
      spawned_.clear();
      {
        std::lock_guard lock(spawn_mutex_);
        finished_.swap(finished_elsewhere_);
      }
      for (detail::task_promise_base* p : finished_)
        finish_top_task(*p, p->frame());
      finished_.clear();
      tasks_.take_inbox(posted_);
      for (auto h : posted_)
        ready_.push_back(h);
      posted_.clear();
      deliver_queued_cancels();
    }
    wake_generation_ = detail::event_access::generation(detail::event_access::load(wake_));
  }

  void fire_due(std::optional<time_point> limit) {
    if (timers_.empty() && !tasks_.next_due()) return;
    time_point t = now();
    if (limit && *limit < t) t = *limit;
    const auto due = next_deadline();
    if (!due || *due > t) return;
    activity_ = true;
    while (detail::timer_node* n = timers_.pop_due(t))
      n->fire(*n, *this);
    if (std::exception_ptr e = tasks_.run_due(t)) report_failure(e);
  }

  // Not const: the task queue drops cancelled entries it finds at its front.
  std::optional<time_point> next_deadline() {
    auto due = timers_.next_due();
    if (auto task_due = tasks_.next_due(); task_due && (!due || *task_due < *due)) due = task_due;
    return due;
  }

  void wait_for_io(bool may_block, std::optional<time_point> limit) {
    std::optional<std::chrono::nanoseconds> timeout = std::chrono::nanoseconds::zero();
    if (may_block) {
      auto due = next_deadline();
      if (limit && (!due || *limit < *due)) due = limit;
      if (clock_.is_virtual()) {
        if (external_work_.load(std::memory_order_acquire) == 0) {
          // Virtual time: look at the fds without blocking; if nothing stirs, jump to the
          // next deadline.
          io_round(std::chrono::nanoseconds::zero());
          if (!ready_.empty() || wake_.is_set()) return;
          if (due) {
            clock_.machine()->advance_to(*due);
            return;
          }
        }
        // No deadline at all, or a thread doing real work for us: block in real time until an
        // fd or that thread stirs the loop.
        timeout.reset();
      } else if (due) {
        const time_point t = now();
        timeout = *due > t ? std::chrono::duration_cast<std::chrono::nanoseconds>(*due - t)
                           : std::chrono::nanoseconds::zero();
      } else {
        timeout.reset();
      }
    }
    if (timeout && timeout->count() == 0 && !reactor_->has_interest()) return;
    io_round(timeout);
  }

  // One wait in the backend for the fd waiters, plus, when it may block, the pipes of the events
  // this loop has waiters on and its own wake-up event.
  void io_round(std::optional<std::chrono::nanoseconds> timeout) {
    extra_fds_.clear();
    bool blocking = !timeout || timeout->count() > 0;
    if (!blocking && !reactor_->has_interest()) {
      scan_events();
      return;
    }
    if (blocking) blocking = enter_event_selects(timeout);
    std::size_t ready_before = 0;
    bool dispatched = false;
    {
      // Leave the events' select registrations on every way out, or a stale registration would
      // keep their pipes written (and a later select() returning at once: a spinning loop).
      struct leave_guard {
        Scheduler& self;
        ~leave_guard() { self.leave_event_selects(); }
      } guard{*this};
      ready_before = ready_.size();
      dispatched = reactor_->wait(timeout, extra_fds_, *this);
    }
    scan_events();
    if (blocking && !dispatched && ready_.size() == ready_before && !wake_.is_set()) {
      wait_for_pipe_owners();
    }
  }

  // Woken for nothing (or by a deadline): an event's pipe may still hold a byte that another
  // thread, owning the pipe right now (waitable_event.hpp, "reconciliation"), is about to
  // drain. Waits for that owner, so that the next select() does not return at once, again and
  // again, while the owner cannot run (both threads on one CPU). A sched_yield() would be only
  // a hint; the owner wakes us when it is done. Bounded, should the owner be stopped.
  void wait_for_pipe_owners() noexcept {
    const auto limit = std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
    const timespec deadline = detail::to_timespec(limit.time_since_epoch());
    if (detail::event_access::wait_for_pipe_owner(wake_, deadline)) return;
    for (detail::event_watch* w = watched_head_; w != nullptr; w = w->next) {
      if (detail::event_access::wait_for_pipe_owner(*w->event, deadline)) return;
    }
  }

  // Registers this loop as asleep on each watched event (I5 in waitable_event.hpp). If any
  // event moved since its waiters were checked, nothing is entered and the wait becomes a poll.
  bool enter_event_selects(std::optional<std::chrono::nanoseconds>& timeout) {
    auto fallback_to_poll = [&] {
      leave_event_selects();
      extra_fds_.clear();
      timeout = std::chrono::nanoseconds::zero();
      return false;
    };
    if (!detail::event_access::enter_select(wake_, wake_generation_)) return fallback_to_poll();
    wake_in_select_ = true;
    extra_fds_.push_back(detail::event_access::read_fd(wake_));
    for (detail::event_watch* w = watched_head_; w != nullptr; w = w->next) {
      if (!detail::event_access::enter_select(*w->event, w->head->generation)) {
        return fallback_to_poll();
      }
      w->in_select = true;
      extra_fds_.push_back(detail::event_access::read_fd(*w->event));
    }
    return true;
  }

  // Drops this loop's select registration on the wake-up event and every watched event.
  void leave_event_selects() noexcept {
    if (wake_in_select_) {
      detail::event_access::leave_select(wake_);
      wake_in_select_ = false;
    }
    for (detail::event_watch* w = watched_head_; w != nullptr; w = w->next) {
      if (w->in_select) {
        detail::event_access::leave_select(*w->event);
        w->in_select = false;
      }
    }
  }

  // ---- event waiters (loop_hooks) ---------------------------------------------------------

  void scan_events() {
    for (detail::event_watch* w = watched_head_; w != nullptr;) {
      detail::event_watch* next = w->next;
      const std::uint64_t s = detail::event_access::load(*w->event);
      const bool all = detail::event_access::is_set(s);
      const std::uint32_t generation = detail::event_access::generation(s);
      while (w->head != nullptr && (all || w->head->generation != generation)) {
        finish_event_waiter(*w->head, detail::wait_outcome::released);
        activity_ = true;
      }
      if (w->empty()) watch_emptied(*w);
      w = next;
    }
  }

  void finish_event_waiter(detail::event_waiter& x, detail::wait_outcome outcome) {
    x.watch->unlink(x);
    disarm(x);
    x.outcome = outcome;
    ready_.push_back(x.handle);
  }

  void add_event_waiter(WaitableEvent& ev, detail::event_waiter& node) override {
    // The common case, an event this loop waited on before: its primary watch is still ours
    // (in use, or parked when it emptied), and taking it back is a plain store. A loop that
    // holds the primary watch never has a secondary one for the same event.
    detail::event_watch& primary = detail::event_access::primary_watch(ev);
    const std::uintptr_t mine = reinterpret_cast<std::uintptr_t>(identity_);
    const std::uintptr_t claim = primary.claim.load(std::memory_order_relaxed);
    detail::event_watch* w = &primary;
    if (claim == (mine | detail::event_watch::kParked)) {
      primary.claim.store(mine, std::memory_order_release);  // `loop` is still this one
    } else if (claim != mine) {
      w = &claim_watch(ev, primary, claim);
    }
    w->push_back(node);
    if (!w->linked) link_watch(*w);
    if (node.timed) {
      auto& t = static_cast<detail::timed_event_waiter&>(node);
      t.fire = &Scheduler::on_event_timeout;
      timers_.push(t);
    }
  }

  void disarm(detail::event_waiter& x) noexcept {
    if (!x.timed) return;
    auto& t = static_cast<detail::timed_event_waiter&>(x);
    if (t.armed()) timers_.remove(t);
  }

  // The waiters of this loop on `ev` go into a secondary watch while they have one (FIFO order
  // spans one watch only), else into the primary watch if it is free, else into a new secondary.
  detail::event_watch& claim_watch(WaitableEvent& ev, detail::event_watch& primary,
                                   std::uintptr_t claim) {
    if (!secondary_watches_.empty()) {
      if (auto it = secondary_watches_.find(&ev); it != secondary_watches_.end()) {
        return *it->second;
      }
    }
    if (claim == 0 &&
        primary.claim.compare_exchange_strong(claim, reinterpret_cast<std::uintptr_t>(identity_),
                                              std::memory_order_acq_rel)) {
      identity_->retain();
      primary.loop = this;
      return primary;
    }
    // Held by another loop (maybe parked there): ask it to give the watch back when it empties.
    if (!primary.wanted.load(std::memory_order_relaxed)) {
      primary.wanted.store(true, std::memory_order_relaxed);
    }
    auto secondary = std::make_unique<detail::event_watch>();
    secondary->event = &ev;
    secondary->loop = this;
    detail::event_watch& w = *secondary;
    secondary_watches_.emplace(&ev, std::move(secondary));
    return w;
  }

  void remove_event_waiter(detail::event_waiter& node) noexcept override {
    detail::event_watch* w = node.watch;
    w->unlink(node);
    disarm(node);
    if (w->empty()) watch_emptied(*w);
  }

  void cancel_event_waiters(WaitableEvent& ev) noexcept override {
    // Waiters a set() already released (the loop just had not looked yet) resume normally.
    const std::uint64_t s = detail::event_access::load(ev);
    auto cancel_all = [this, s](detail::event_watch& w) {
      while (w.head != nullptr) {
        const bool released = detail::event_access::is_set(s) ||
                              detail::event_access::generation(s) != w.head->generation;
        finish_event_waiter(
            *w.head, released ? detail::wait_outcome::released : detail::wait_outcome::canceled);
      }
      drop_watch(w);
    };
    detail::event_watch& primary = detail::event_access::primary_watch(ev);
    if (primary.claim.load(std::memory_order_acquire) ==
        reinterpret_cast<std::uintptr_t>(identity_)) {
      cancel_all(primary);
    }
    if (!secondary_watches_.empty()) {
      if (auto it = secondary_watches_.find(&ev); it != secondary_watches_.end()) {
        cancel_all(*it->second);
      }
    }
  }

  static void on_event_timeout(detail::timer_node& t, detail::loop_hooks& loop) noexcept {
    auto& self = static_cast<Scheduler&>(loop);
    auto& x = static_cast<detail::timed_event_waiter&>(t);
    detail::event_watch* w = x.watch;
    w->unlink(x);
    // Set in the same turn as the deadline passed: the event wins (one resumption either way).
    const std::uint64_t s = detail::event_access::load(*w->event);
    const bool released =
        detail::event_access::is_set(s) || detail::event_access::generation(s) != x.generation;
    x.outcome = released ? detail::wait_outcome::released : detail::wait_outcome::timed_out;
    self.ready_.push_back(x.handle);
    if (w->empty()) self.watch_emptied(*w);
  }

  void link_watch(detail::event_watch& w) noexcept {
    w.linked = true;
    w.prev = nullptr;
    w.next = watched_head_;
    if (watched_head_ != nullptr) watched_head_->prev = &w;
    watched_head_ = &w;
  }

  void unlink_watch(detail::event_watch& w) noexcept {
    if (!w.linked) return;
    if (w.prev != nullptr) {
      w.prev->next = w.next;
    } else {
      watched_head_ = w.next;
    }
    if (w.next != nullptr) w.next->prev = w.prev;
    w.next = w.prev = nullptr;
    w.linked = false;
  }

  // A watch lost its last waiter. A primary one stays claimed (parked) for this loop's next wait
  // on the event, unless another loop asked for it; a secondary one is freed.
  void watch_emptied(detail::event_watch& w) noexcept {
    WaitableEvent& ev = *w.event;
    detail::event_watch& primary = detail::event_access::primary_watch(ev);
    if (&w == &primary && !w.wanted.load(std::memory_order_relaxed)) {
      unlink_watch(w);
      w.claim.store(reinterpret_cast<std::uintptr_t>(identity_) | detail::event_watch::kParked,
                    std::memory_order_release);
      return;
    }
    drop_watch(w);
  }

  // Forgets an empty watch: a primary one goes back to its event, a secondary one is freed.
  void drop_watch(detail::event_watch& w) noexcept {
    unlink_watch(w);
    WaitableEvent& ev = *w.event;
    if (&w == &detail::event_access::primary_watch(ev)) {
      w.wanted.store(false, std::memory_order_relaxed);
      w.claim.store(0, std::memory_order_release);
      // Never the last reference: the loop holds its own (the analyzer cannot know that).
      identity_->release();  // NOLINT(clang-analyzer-cplusplus.NewDelete)
    } else {
      secondary_watches_.erase(&ev);
    }
  }

  // ---- reactor_sink -----------------------------------------------------------------------

  void fd_ready(detail::fd_waiter& w) noexcept override {
    if (w.armed()) timers_.remove(w);
    ready_.push_back(w.handle);
    activity_ = true;
  }
  void dispatch_failed(std::exception_ptr e) noexcept override { report_failure(e); }

  // ---- stop requests from other threads (loop_hooks) ---------------------------------------

  void queue_cancel(detail::cancel_request& c) noexcept override {
    std::lock_guard lock(cancel_mutex_);  // wake under the lock: see TaskManager::resume
    c.inbox_prev = nullptr;
    c.inbox_next = cancel_inbox_;
    if (cancel_inbox_ != nullptr) cancel_inbox_->inbox_prev = &c;
    cancel_inbox_ = &c;
    c.queued.store(true, std::memory_order_release);
    wake_.set();
  }

  void unqueue_cancel(detail::cancel_request& c) noexcept override {
    std::lock_guard lock(cancel_mutex_);
    if (!c.queued.load(std::memory_order_relaxed)) return;
    (c.inbox_prev != nullptr ? c.inbox_prev->inbox_next : cancel_inbox_) = c.inbox_next;
    if (c.inbox_next != nullptr) c.inbox_next->inbox_prev = c.inbox_prev;
    c.queued.store(false, std::memory_order_relaxed);
  }

  // Runs the queued stop requests here, on the loop thread. Each point stays valid until its
  // awaiter disarms it, which happens on this thread too: not before we are done with it.
  void deliver_queued_cancels() noexcept {
    detail::cancel_request* list = nullptr;
    {
      std::lock_guard lock(cancel_mutex_);
      list = std::exchange(cancel_inbox_, nullptr);
      for (detail::cancel_request* c = list; c != nullptr; c = c->inbox_next)
        c->queued.store(false, std::memory_order_relaxed);
    }
    while (list != nullptr) {
      detail::cancel_request* c = list;
      list = c->inbox_next;
      c->deliver();
    }
  }

  // ---- task_host --------------------------------------------------------------------------

  bool on_loop_thread() const noexcept override {
    return detail::current_loop() == static_cast<const detail::loop_hooks*>(this);
  }
  void wake() noexcept override { wake_.set(); }
  const detail::clock_source& time_source() const noexcept override { return clock_; }
  void make_ready(std::coroutine_handle<> h) override { ready_.push_back(h); }
  void resume_soon(std::coroutine_handle<> h) override { tasks_.resume(h); }

  // ---- owned frames (task_owner) ----------------------------------------------------------

  void adopt(std::coroutine_handle<detail::task_promise<void>> frame) {
    adopt_promise(frame.promise());
  }

  void adopt_promise(detail::task_promise_base& p) noexcept {
    p.owner = this;
    p.at_top = true;
    p.owned_prev = nullptr;
    p.owned_next = owned_head_;
    if (owned_head_ != nullptr) owned_head_->owned_prev = &p;
    owned_head_ = &p;
  }

  void unlink_owned(detail::task_promise_base& p) noexcept {
    if (p.owned_prev != nullptr) {
      p.owned_prev->owned_next = p.owned_next;
    } else if (owned_head_ == &p) {
      owned_head_ = p.owned_next;
    }
    if (p.owned_next != nullptr) p.owned_next->owned_prev = p.owned_prev;
    p.owned_next = p.owned_prev = nullptr;
  }

  // A task at the top (run's root or a spawned one) reached its end. It may have finished on
  // another thread (after resume_on, say): then the loop thread does the bookkeeping.
  void task_finished(detail::task_promise_base& p,
                     std::coroutine_handle<> frame) noexcept override {
    if (!on_loop_thread()) {
      std::lock_guard lock(spawn_mutex_);  // wake under the lock: see TaskManager::resume
      finished_elsewhere_.push_back(&p);
      wake_.set();
      return;
    }
    finish_top_task(p, frame);
  }

  void finish_top_task(detail::task_promise_base& p, std::coroutine_handle<> frame) noexcept {
    if (&p == root_) {
      *root_finished_ = true;
      return;  // run() takes the result and frees the frame
    }
    unlink_owned(p);
    if (p.exception && !ended_by_own_cancel(p)) report_failure(p.exception);
    frame.destroy();
  }

  static bool ended_by_own_cancel(const detail::task_promise_base& p) noexcept {
    return p.spawned && detail::frame_header::of(p.frame().address()).cancel_requested() &&
           detail::is_operation_canceled(p.exception);
  }

  // A root task that run() gives up on stays alive as a spawned task: its frame may still be
  // referenced by the ready queue or by other threads about to resume it.
  void abandon_root(detail::task_promise_base& root, bool finished) {
    root_ = nullptr;
    root_finished_ = nullptr;
    if (finished) {
      root.owner = nullptr;
      root.frame().destroy();
      return;
    }
    adopt_promise(root);
  }

  void report_failure(std::exception_ptr e) noexcept {
    if (exception_handler_) {
      try {
        exception_handler_(e);
        return;
      } catch (...) {
        e = std::current_exception();
      }
    }
    failures_.push_back(e);
  }

  detail::clock_source clock_;
  TaskManager tasks_;
  WaitableEvent wake_;  // other threads set it to wake the loop (and stop() does)
  std::uint32_t wake_generation_ = 0;
  bool wake_in_select_ = false;
  bool activity_ = false;  // this iteration absorbed posts, fired timers or released waiters
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> running_{false};
  std::atomic<int> external_work_{0};  // run_in_thread calls in flight (virtual time waits)
  // run_in_thread jobs that may still touch this scheduler or its frames (the destructor waits)
  std::mutex jobs_mutex_;
  std::condition_variable jobs_finished_;
  int jobs_running_ = 0;

  detail::ready_queue ready_;
  detail::timer_heap timers_;
  std::unique_ptr<detail::reactor> reactor_;
  std::vector<native_handle> extra_fds_;

  detail::event_watch* watched_head_ = nullptr;
  // This loop's name in the events' claims; parked claims may keep it after the loop is gone.
  struct identity_ref {
    explicit identity_ref(detail::loop_hooks& loop) : p(new detail::loop_identity(loop)) {}
    identity_ref(const identity_ref&) = delete;
    identity_ref& operator=(const identity_ref&) = delete;
    ~identity_ref() { p->release(); }
    detail::loop_identity* p;
  } identity_holder_{*this};
  detail::loop_identity* const identity_ = identity_holder_.p;
  std::unordered_map<const WaitableEvent*, std::unique_ptr<detail::event_watch>> secondary_watches_;

  std::mutex cancel_mutex_;
  detail::cancel_request* cancel_inbox_ = nullptr;  // guarded by cancel_mutex_

  std::mutex spawn_mutex_;
  std::vector<std::coroutine_handle<detail::task_promise<void>>> spawn_inbox_;
  std::vector<std::coroutine_handle<detail::task_promise<void>>> spawned_;
  std::vector<std::coroutine_handle<>> posted_;
  std::vector<detail::task_promise_base*> finished_elsewhere_;  // guarded by spawn_mutex_
  std::vector<detail::task_promise_base*> finished_;

  detail::task_promise_base* owned_head_ = nullptr;
  detail::task_promise_base* root_ = nullptr;
  bool* root_finished_ = nullptr;
  std::deque<std::exception_ptr> failures_;
  std::function<void(std::exception_ptr)> exception_handler_;
};

namespace detail {

// What the awaitables (time.hpp, io.hpp, thread.hpp) need from the loop they run on.
struct scheduler_access {
  static Scheduler& current_or_throw(const char* what) {
    Scheduler* s = Scheduler::current();
    if (s == nullptr) throw_no_scheduler(what);
    return *s;
  }
  static void make_ready(Scheduler& s, std::coroutine_handle<> h) { s.ready_.push_back(h); }
  static loop_hooks& hooks(Scheduler& s) noexcept { return s; }
  static JoinHandle spawn_under(Scheduler& s, Task<void> t, const std::stop_token* token) {
    return s.spawn_under(std::move(t), token);
  }
  static void add_timer(Scheduler& s, timer_node& t) { s.timers_.push(t); }
  static void remove_timer(Scheduler& s, timer_node& t) noexcept { s.timers_.remove(t); }
  static detail::reactor& reactor(Scheduler& s) noexcept { return *s.reactor_; }
  static void begin_external_work(Scheduler& s) noexcept {
    s.external_work_.fetch_add(1, std::memory_order_acq_rel);
  }
  static void end_external_work(Scheduler& s) noexcept {
    s.external_work_.fetch_sub(1, std::memory_order_acq_rel);
  }
  // A pool thread begins / ends a job that touches s or its frames. job_ended is the job's
  // last touch of s: the destructor may run as soon as the lock is released.
  static void job_started(Scheduler& s) {
    std::lock_guard lock(s.jobs_mutex_);
    ++s.jobs_running_;
  }
  static void job_ended(Scheduler& s) noexcept {
    std::lock_guard lock(s.jobs_mutex_);
    if (--s.jobs_running_ == 0) s.jobs_finished_.notify_all();
  }
};

}  // namespace detail
}  // namespace coselect
