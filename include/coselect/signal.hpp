// SignalSet: await signals in a coroutine (the self-pipe trick, on a WaitableEvent). POSIX
// signals on POSIX; on Windows, SIGINT and SIGBREAK (console Ctrl+C and Ctrl+Break).
#pragma once

#include <signal.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include "task.hpp"
#include "waitable_event.hpp"

namespace coselect {

// SignalSet — catches the given signals while it lives, so coroutines can co_await them.
//
// Nothing happens behind the user's back: the constructor installs handlers for exactly the
// signals named (throws std::invalid_argument for a signal another SignalSet holds, or one
// outside 1..63 or uncatchable; on Windows anything but SIGINT and SIGBREAK), and the destructor
// restores the dispositions it replaced. The handler only records the signal and sets a
// WaitableEvent (async-signal-safe). wait() is for coroutines on a Scheduler; poll() for anyone.
// Destroy it on the thread that made it after its waiters are gone.
class SignalSet {
 public:
  SignalSet(std::initializer_list<int> signals) {
    for (int sig : signals) {
      if (!detail::signal_catchable(sig)) {
        restore();
        throw std::invalid_argument(detail::kSignalNotCatchable);
      }
      SignalSet* expected = nullptr;
      if (!owners()[sig].compare_exchange_strong(expected, this)) {
        restore();
        throw std::invalid_argument("coselect::SignalSet: signal already held by another set");
      }
      detail::signal_disposition previous{};
      if (const int error = detail::install_signal_handler(sig, &SignalSet::on_signal, previous)) {
        owners()[sig].store(nullptr);
        restore();
        throw std::system_error(error, std::system_category(),
                                "coselect::SignalSet: installing a handler");
      }
      installed_.push_back({sig, previous});
    }
  }
  SignalSet(const SignalSet&) = delete;
  SignalSet& operator=(const SignalSet&) = delete;
  ~SignalSet() { restore(); }

  // Takes one caught signal (the lowest-numbered pending one) without waiting.
  std::optional<int> poll() noexcept {
    std::uint64_t p = pending_.load(std::memory_order_acquire);
    while (p != 0) {
      const int sig = __builtin_ctzll(p);
      const std::uint64_t rest = p & ~(std::uint64_t{1} << sig);
      if (pending_.compare_exchange_weak(p, rest, std::memory_order_acq_rel)) {
        if (rest == 0) {
          // fileno() must not stay readable once nothing is pending; a signal that lands
          // between these two lines is seen by the re-check.
          arrived_.clear();
          if (pending_.load(std::memory_order_acquire) != 0) arrived_.set();
        }
        return sig;
      }
    }
    return std::nullopt;
  }

  // co_await set.wait(): the next caught signal's number. Signals caught while nobody waits
  // are kept (once per signal number, like the kernel's pending set). Cancellation point (it
  // waits on an event): a stop while it waits throws operation_canceled and consumes no signal.
  Task<int> wait() {
    for (;;) {
      if (auto sig = poll()) co_return *sig;
      arrived_.clear();
      if (auto sig = poll()) co_return *sig;
      co_await arrived_.wait();
    }
  }

  // Readable while a caught signal is pending: for fd-based loops.
  native_handle fileno() const noexcept { return arrived_.fileno(); }

 private:
  struct installed {
    int signal;
    detail::signal_disposition previous;
  };

  static std::array<std::atomic<SignalSet*>, 64>& owners() noexcept {
    static std::array<std::atomic<SignalSet*>, 64> table{};
    return table;
  }

  // Handlers running right now, per signal: the destructor waits for them to leave the set.
  static std::array<std::atomic<int>, 64>& handlers_running() noexcept {
    static std::array<std::atomic<int>, 64> table{};
    return table;
  }

  static void on_signal(int sig) noexcept {
    const int saved_errno = errno;
    handlers_running()[sig].fetch_add(1, std::memory_order_seq_cst);
    if (SignalSet* set = owners()[sig].load(std::memory_order_seq_cst)) {
      set->pending_.fetch_or(std::uint64_t{1} << sig, std::memory_order_acq_rel);
      set->arrived_.set();
    }
    handlers_running()[sig].fetch_sub(1, std::memory_order_release);
    errno = saved_errno;
  }

  void restore() noexcept {
    for (auto it = installed_.rbegin(); it != installed_.rend(); ++it) {
      detail::restore_signal_handler(it->signal, it->previous);
      owners()[it->signal].store(nullptr, std::memory_order_seq_cst);
      // A handler on another thread may still be setting our event: wait until it is out.
      while (handlers_running()[it->signal].load(std::memory_order_seq_cst) != 0) {
        std::this_thread::yield();
      }
    }
    installed_.clear();
  }

  std::atomic<std::uint64_t> pending_{0};
  WaitableEvent arrived_;
  std::vector<installed> installed_;
};

}  // namespace coselect
