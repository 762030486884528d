// The coordination primitives (DESIGN.md §9) against their peers, in one run.
//
//   lock/*         uncontended lock + unlock on one thread, 10,000,000 times: co_await m.lock()
//                  with its guard dropped (goal <= 20 ns), and std::mutex as the floor
//   channel_loop/* a producer coroutine sends 1,000,000 ints to a consumer coroutine on the
//                  same loop through a channel of capacity 1; one op = one value passed.
//                  coselect::Channel vs asio::experimental::channel (goal <= 0.5x Asio)
//   thread_to_coroutine/*  a producer thread sends 1,000,000 ints to a consumer through a
//                  bounded queue of 1,024: coselect::Channel (send_blocking -> co_await
//                  receive) vs std::mutex + std::deque + two condition_variables between two
//                  threads (goal: at least the same throughput)
//   pipeline/*     a producer thread -> a coroutine stage (x * 2) -> a sink coroutine on the
//                  same loop, 1,000,000 ints: two Channels vs the same built by hand on
//                  WaitableEvents and locked/unlocked deques
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/channel.hpp>
#include <asio/io_context.hpp>
#include <asio/use_awaitable.hpp>
#include <condition_variable>
#include <coselect.hpp>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "common.hpp"

namespace {

constexpr std::int64_t kLocks = 10'000'000;
constexpr std::int64_t kValues = 1'000'000;
constexpr std::size_t kQueueCapacity = 1'024;

using coselect::Task;

void check(bool ok, const char* what) {
  if (!ok) bench::fail(what);
}

// ==== lock ===================================================================================

Task<void> lock_unlock(coselect::Mutex& m, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    coselect::MutexGuard g = co_await m.lock();
    benchmark::DoNotOptimize(g);
  }
}

void lock_coselect_mutex(benchmark::State& state) {
  const std::int64_t n = bench::count(kLocks);
  for (auto _ : state) {
    coselect::Scheduler s;
    coselect::Mutex m;
    bench::Stopwatch sw;
    s.run(lock_unlock(m, n));
    sw.stop(state, n);
  }
}
COSELECT_BENCH(lock_coselect_mutex)->Name("lock/coselect_mutex");

void lock_std_mutex(benchmark::State& state) {
  const std::int64_t n = bench::count(kLocks);
  for (auto _ : state) {
    std::mutex m;
    bench::Stopwatch sw;
    for (std::int64_t i = 0; i < n; ++i) {
      std::lock_guard g(m);
      benchmark::DoNotOptimize(&m);
    }
    sw.stop(state, n);
  }
}
COSELECT_BENCH(lock_std_mutex)->Name("lock/floor_std_mutex");

// ==== channel on one loop ======================================================================

Task<void> cs_producer(coselect::Channel<int>& ch, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const bool sent = co_await ch.send(static_cast<int>(i));
    check(sent, "send");
  }
}

Task<void> cs_consumer(coselect::Channel<int>& ch, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    std::optional<int> v = co_await ch.receive();
    check(v && *v == static_cast<int>(i), "receive");
  }
}

void channel_loop_coselect(benchmark::State& state) {
  const std::int64_t n = bench::count(kValues);
  for (auto _ : state) {
    coselect::Scheduler s;
    coselect::Channel<int> ch(1);
    s.spawn(cs_consumer(ch, n));
    s.run_for(std::chrono::seconds(0));  // the consumer waits now
    bench::Stopwatch sw;
    s.run(cs_producer(ch, n));
    s.run_for(std::chrono::seconds(0));  // the consumer takes the last value
    sw.stop(state, n);
  }
}
COSELECT_BENCH(channel_loop_coselect)->Name("channel_loop/coselect");

using AsioChannel = asio::experimental::channel<void(asio::error_code, int)>;

asio::awaitable<void> asio_producer(AsioChannel& ch, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i)
    co_await ch.async_send(asio::error_code{}, static_cast<int>(i), asio::use_awaitable);
}

asio::awaitable<void> asio_consumer(AsioChannel& ch, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const int v = co_await ch.async_receive(asio::use_awaitable);
    check(v == static_cast<int>(i), "asio receive");
  }
}

void channel_loop_asio(benchmark::State& state) {
  const std::int64_t n = bench::count(kValues);
  for (auto _ : state) {
    asio::io_context ctx(1);
    AsioChannel ch(ctx, 1);
    asio::co_spawn(ctx, asio_consumer(ch, n), asio::detached);
    ctx.poll();  // the consumer waits now
    ctx.restart();
    bench::Stopwatch sw;
    asio::co_spawn(ctx, asio_producer(ch, n), asio::detached);
    ctx.run();
    sw.stop(state, n);
  }
}
COSELECT_BENCH(channel_loop_asio)->Name("channel_loop/asio_channel");

// ==== a thread feeding a coroutine ==============================================================

void thread_to_coroutine_coselect(benchmark::State& state) {
  const std::int64_t n = bench::count(kValues);
  for (auto _ : state) {
    coselect::Scheduler s;
    coselect::Channel<int> ch(kQueueCapacity);
    bench::Stopwatch sw;
    std::thread producer([&] {
      for (std::int64_t i = 0; i < n; ++i)
        check(ch.send_blocking(static_cast<int>(i)), "send_blocking");
    });
    s.run(cs_consumer(ch, n));
    producer.join();
    sw.stop(state, n);
  }
}
COSELECT_BENCH(thread_to_coroutine_coselect)->Name("thread_to_coroutine/coselect_channel");

// The classic bounded queue between two threads.
class LockedQueue {
 public:
  void push(int v) {
    std::unique_lock lock(mutex_);
    not_full_.wait(lock, [this] { return items_.size() < kQueueCapacity; });
    items_.push_back(v);
    lock.unlock();
    not_empty_.notify_one();
  }
  int pop() {
    std::unique_lock lock(mutex_);
    not_empty_.wait(lock, [this] { return !items_.empty(); });
    const int v = items_.front();
    items_.pop_front();
    lock.unlock();
    not_full_.notify_one();
    return v;
  }

 private:
  std::mutex mutex_;
  std::condition_variable not_full_;
  std::condition_variable not_empty_;
  std::deque<int> items_;
};

void thread_to_thread_std_queue(benchmark::State& state) {
  const std::int64_t n = bench::count(kValues);
  for (auto _ : state) {
    LockedQueue q;
    bench::Stopwatch sw;
    std::thread producer([&] {
      for (std::int64_t i = 0; i < n; ++i)
        q.push(static_cast<int>(i));
    });
    for (std::int64_t i = 0; i < n; ++i)
      check(q.pop() == static_cast<int>(i), "pop");
    producer.join();
    sw.stop(state, n);
  }
}
COSELECT_BENCH(thread_to_thread_std_queue)->Name("thread_to_coroutine/std_queue_two_threads");

// ==== a pipeline: thread -> coroutine stage -> sink coroutine
// =====================================

Task<void> cs_stage(coselect::Channel<int>& in, coselect::Channel<int>& out) {
  for (;;) {
    std::optional<int> v = co_await in.receive();
    if (!v) break;
    const bool sent = co_await out.send(*v * 2);
    check(sent, "stage send");
  }
  out.close();
}

Task<void> cs_sink(coselect::Channel<int>& in, std::int64_t n) {
  std::int64_t i = 0;
  for (;; ++i) {
    std::optional<int> v = co_await in.receive();
    if (!v) break;
    check(*v == static_cast<int>(i) * 2, "sink");
  }
  check(i == n, "sink count");
}

void pipeline_coselect(benchmark::State& state) {
  const std::int64_t n = bench::count(kValues);
  for (auto _ : state) {
    coselect::Scheduler s;
    coselect::Channel<int> first(kQueueCapacity);
    coselect::Channel<int> second(kQueueCapacity);
    bench::Stopwatch sw;
    std::thread producer([&] {
      for (std::int64_t i = 0; i < n; ++i)
        check(first.send_blocking(static_cast<int>(i)), "send_blocking");
      first.close();
    });
    s.spawn(cs_stage(first, second));
    s.run(cs_sink(second, n));
    producer.join();
    sw.stop(state, n);
  }
}
COSELECT_BENCH(pipeline_coselect)->Name("pipeline/coselect_channels");

// By hand: a locked deque with a WaitableEvent that says "not empty" (and another that says
// "not full" for the producer thread), then an unlocked deque + event between the two
// coroutines of the loop. A batch is taken at each wake-up.
struct HandQueue {
  std::mutex mutex;
  std::deque<int> items;
  bool closed = false;
  coselect::WaitableEvent not_empty;
  coselect::WaitableEvent not_full;
};

struct LoopQueue {
  std::deque<int> items;
  bool closed = false;
  coselect::WaitableEvent not_empty;
  coselect::WaitableEvent not_full;
};

Task<void> hand_stage(HandQueue& in, LoopQueue& out) {
  std::deque<int> batch;
  bool closed = false;
  while (!closed) {
    co_await in.not_empty.wait();
    {
      std::lock_guard lock(in.mutex);
      batch.swap(in.items);
      closed = in.closed;
      in.not_empty.clear();
      in.not_full.set();
    }
    for (int v : batch) {
      while (out.items.size() >= kQueueCapacity) {
        out.not_full.clear();
        co_await out.not_full.wait();
      }
      out.items.push_back(v * 2);
      out.not_empty.set();
    }
    batch.clear();
  }
  out.closed = true;
  out.not_empty.set();
}

Task<void> hand_sink(LoopQueue& in, std::int64_t n) {
  std::int64_t i = 0;
  for (;;) {
    co_await in.not_empty.wait();
    while (!in.items.empty()) {
      check(in.items.front() == static_cast<int>(i) * 2, "hand sink");
      in.items.pop_front();
      ++i;
    }
    in.not_empty.clear();
    in.not_full.set();
    if (in.closed) break;
  }
  check(i == n, "hand sink count");
}

void pipeline_by_hand(benchmark::State& state) {
  const std::int64_t n = bench::count(kValues);
  for (auto _ : state) {
    coselect::Scheduler s;
    HandQueue first;
    LoopQueue second;
    bench::Stopwatch sw;
    std::thread producer([&] {
      for (std::int64_t i = 0; i < n; ++i) {
        for (;;) {
          std::unique_lock lock(first.mutex);
          if (first.items.size() < kQueueCapacity) {
            first.items.push_back(static_cast<int>(i));
            first.not_empty.set();
            break;
          }
          first.not_full.clear();
          lock.unlock();
          first.not_full.wait_blocking();
        }
      }
      std::lock_guard lock(first.mutex);
      first.closed = true;
      first.not_empty.set();
    });
    s.spawn(hand_stage(first, second));
    s.run(hand_sink(second, n));
    producer.join();
    sw.stop(state, n);
  }
}
COSELECT_BENCH(pipeline_by_hand)->Name("pipeline/by_hand_waitable_events");

}  // namespace

COSELECT_BENCH_MAIN()
