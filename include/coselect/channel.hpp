// coselect::Channel<T>: a bounded multi-producer, multi-consumer queue between threads and
// coroutines (DESIGN.md §9).
#pragma once

#include <coroutine>
#include <cstddef>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "detail/waiter_queue.hpp"

namespace coselect {

// Channel<T> — a bounded FIFO of up to `capacity` values, with back-pressure, that coroutines
// and plain threads send to and receive from, and that anyone may close.
//
// Contract
//  * Thread-safe: every member may be called from any thread. Coroutines use send()/receive()
//    (on a Scheduler; std::logic_error where none runs), plain threads send_blocking()/
//    receive_blocking(), anyone try_send()/try_receive()/close().
//  * Nothing is lost, nothing is doubled: every value accepted (send() returned true) is
//    received exactly once, in the order each sender sent. A value may pass straight from a
//    sender to a waiting receiver; full means `capacity` values buffered.
//  * Waiting coroutines are served first in, first out, per side; they resume on their own
//    scheduler's thread, never inside the call that served them. A thread blocked in a
//    *_blocking call competes with them with no order promised.
//  * close(): idempotent, never blocks. Every waiting sender returns false (its value is not
//    enqueued), every waiting receiver returns std::nullopt; later sends return false; receivers
//    first drain what was accepted before the close.
//  * Cancellation points (DESIGN.md §8): a stop while send() waits unlinks it and throws
//    std::system_error(errc::operation_canceled): nothing was enqueued (the value is dropped with
//    the awaiter). A stop while receive() waits unlinks it and throws: it took nothing. If the
//    channel served the waiter before the stop arrived (a receiver was handed a value, a
//    sender's value was taken, or the channel closed), that outcome stands and the await
//    returns it. Sends with room (or a waiting receiver), receives with a value buffered, and
//    either on a closed channel complete without suspending: a stop requested before them does
//    not matter; one that would suspend throws at once instead.
//  * T must be move-constructible; move-only types work. The constructor throws
//    std::invalid_argument for capacity 0.
//  * A coroutine destroyed while it waits (its scheduler destroyed with it) leaves the queue and
//    takes nothing, except a value already handed to it that it had not resumed to see: that
//    value goes with its frame.
//  * Destroying a channel while coroutines of this thread's scheduler wait on it resumes them
//    with operation_canceled (values still buffered are destroyed); while coroutines of other
//    threads or blocked threads wait on it, it is a precondition violation.
template <class T>
class Channel {
  static_assert(std::is_move_constructible_v<T>, "coselect::Channel<T>: T must be movable");

 public:
  class send_awaiter;
  class receive_awaiter;

  explicit Channel(std::size_t capacity) : capacity_(capacity) {
    if (capacity == 0) throw std::invalid_argument("coselect::Channel: capacity must be >= 1");
  }
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
  ~Channel() {
    senders_.fail_all();
    receivers_.fail_all();
  }

  // co_await ch.send(v) -> bool: waits while the channel is full; false if it is (or becomes)
  // closed, with nothing enqueued.
  send_awaiter send(T v) noexcept(std::is_nothrow_move_constructible_v<T>) {
    return send_awaiter(*this, std::move(v));
  }

  // co_await ch.receive() -> std::optional<T>: waits while the channel is empty; std::nullopt
  // once it is closed and drained.
  receive_awaiter receive() noexcept { return receive_awaiter(*this); }

  // Plain threads: send() that blocks the thread.
  bool send_blocking(T v) {
    std::unique_lock lock(mutex_);
    bool accepted = false;
    if (offer(v, accepted)) return accepted;
    detail::queue_waiter self;
    self.payload = &v;
    senders_.block(lock, self);
    return self.outcome == detail::wait_outcome::released && !self.closed;
  }

  // Plain threads: receive() that blocks the thread.
  std::optional<T> receive_blocking() {
    std::unique_lock lock(mutex_);
    std::optional<T> out;
    if (take(out)) return out;
    detail::queue_waiter self;
    self.payload = &out;
    receivers_.block(lock, self);
    return out;
  }

  // Sends without waiting: false if the channel is full or closed, and then `v` is untouched;
  // on success `v` has been moved from.
  bool try_send(T& v) {
    std::lock_guard lock(mutex_);
    bool accepted = false;
    return offer(v, accepted) && accepted;
  }

  // Receives without waiting: std::nullopt if nothing is buffered (or closed and drained).
  std::optional<T> try_receive() {
    std::lock_guard lock(mutex_);
    std::optional<T> out;
    take(out);
    return out;
  }

  void close() noexcept {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
    for (detail::waiter_queue* q : {&receivers_, &senders_}) {
      while (!q->empty()) {
        detail::queue_waiter& w = *q->front();
        w.closed = true;
        q->release(w, detail::wait_outcome::released);
      }
    }
  }

  bool is_closed() const {
    std::lock_guard lock(mutex_);
    return closed_;
  }
  // Values buffered right now (a snapshot).
  std::size_t size() const {
    std::lock_guard lock(mutex_);
    return buffer_.size();
  }
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  // Lock held. Completes a send of `v` without waiting if it can (true; `accepted` says whether
  // `v` was taken); false when the sender must wait (`v` untouched).
  bool offer(T& v, bool& accepted) {
    accepted = false;
    if (closed_) return true;
    if (!receivers_.empty()) {  // then nothing is buffered: hand the value straight over
      detail::queue_waiter& r = *receivers_.front();
      static_cast<std::optional<T>*>(r.payload)->emplace(std::move(v));
      receivers_.release(r, detail::wait_outcome::released);
    } else if (buffer_.size() < capacity_) {
      buffer_.push_back(std::move(v));
    } else {
      return false;
    }
    accepted = true;
    return true;
  }

  // Lock held. Completes a receive without waiting if it can (true; `out` stays empty when the
  // channel is closed and drained); false when the receiver must wait.
  bool take(std::optional<T>& out) {
    if (buffer_.empty()) return closed_;  // (senders wait only while the buffer is full)
    out.emplace(std::move(buffer_.front()));
    buffer_.pop_front();
    if (!senders_.empty()) {  // room again: the oldest waiting sender's value goes in
      detail::queue_waiter& s = *senders_.front();
      buffer_.push_back(std::move(*static_cast<T*>(s.payload)));
      senders_.release(s, detail::wait_outcome::released);
    }
    return true;
  }

  const std::size_t capacity_;
  mutable std::mutex mutex_;
  std::deque<T> buffer_;
  bool closed_ = false;
  detail::waiter_queue senders_{mutex_};
  detail::waiter_queue receivers_{mutex_};
};

// Awaiter of `co_await ch.send(v)`: holds the value until the channel takes it.
template <class T>
class Channel<T>::send_awaiter : private detail::queued_awaiter {
 public:
  send_awaiter(Channel& ch, T&& v) noexcept(std::is_nothrow_move_constructible_v<T>)
      : queued_awaiter(ch.senders_), channel_(ch), value_(std::move(v)) {}
  send_awaiter(send_awaiter&& other) noexcept(std::is_nothrow_move_constructible_v<T>)
      : queued_awaiter(*other.queue_), channel_(other.channel_), value_(std::move(other.value_)) {}

  bool await_ready() {
    bind_loop("Channel::send()");
    return false;
  }

  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> h) {
    node_.payload = &value_;
    return suspend_unless(
        h, [this] { return channel_.offer(value_, accepted_); }, kStopped);
  }

  bool await_resume() {
    end_wait(kStopped, "coselect::Channel destroyed while a coroutine waited to send");
    if (node_.outcome == detail::wait_outcome::released) return !node_.closed;
    return accepted_;
  }

 private:
  static constexpr const char* kStopped = "coselect::Channel::send() canceled";

  Channel& channel_;
  T value_;
  bool accepted_ = false;
};

// Awaiter of `co_await ch.receive()`: the value lands here.
template <class T>
class Channel<T>::receive_awaiter : private detail::queued_awaiter {
 public:
  explicit receive_awaiter(Channel& ch) noexcept : queued_awaiter(ch.receivers_), channel_(ch) {}
  receive_awaiter(receive_awaiter&& other) noexcept
      : queued_awaiter(*other.queue_), channel_(other.channel_), value_() {}

  bool await_ready() {
    bind_loop("Channel::receive()");
    return false;
  }

  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> h) {
    node_.payload = &value_;
    return suspend_unless(
        h, [this] { return channel_.take(value_); }, kStopped);
  }

  std::optional<T> await_resume() {
    end_wait(kStopped, "coselect::Channel destroyed while a coroutine waited to receive");
    return std::move(value_);
  }

 private:
  static constexpr const char* kStopped = "coselect::Channel::receive() canceled";

  Channel& channel_;
  std::optional<T> value_;
};

}  // namespace coselect
