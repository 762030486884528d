// Tests of coselect::Channel<T> (DESIGN.md §9): buffering and back-pressure, direct hand-off,
// FIFO on both sides, try_*, the blocking forms, close() with waiters on both sides and
// draining, move-only values, cancellation (support/primitive_waits.hpp), and an exactly-once
// stress of threads and coroutines on two schedulers. Coroutines only record; assertions follow
// run().

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <coselect.hpp>
#include "support/fixtures.hpp"
#include "support/primitive_waits.hpp"
#include "support/sanitizers.hpp"
#include "support/thread_probe.hpp"

namespace {

using namespace std::chrono_literals;
using coselect::Channel;
using coselect::Scheduler;
using coselect::Task;
using coselect_test::Blocked;
using coselect_test::BlockedCase;
using coselect_test::PrimitiveWait;

// ---- cancellation rules, shared with the other primitives -----------------------------------

// An empty channel: receive() waits; serve() offers 42.
class EmptyChannel : public Blocked {
 public:
  EmptyChannel() { ch_.emplace(1); }
  Task<void> wait() override {
    std::optional<int> v = co_await ch_->receive();
    got_ = v.value_or(-1);
  }
  void serve() override {
    int v = 42;
    EXPECT_TRUE(ch_->try_send(v));
  }
  void check(bool served) override {
    if (served) {  // the value went to the waiter, and only there
      EXPECT_EQ(got_, 42);
      EXPECT_EQ(ch_->size(), 0u);
    } else {  // a cancelled receive took nothing: the value is still there
      EXPECT_EQ(got_, 0);
      EXPECT_EQ(ch_->try_receive(), std::optional<int>(42));
    }
  }
  void destroy() override { ch_.reset(); }

 private:
  std::optional<Channel<int>> ch_;
  int got_ = 0;
};

// A full channel holding 1: send(2) waits; serve() receives (1), making room.
class FullChannel : public Blocked {
 public:
  FullChannel() {
    ch_.emplace(1);
    int v = 1;
    EXPECT_TRUE(ch_->try_send(v));
  }
  Task<void> wait() override {
    const bool sent = co_await ch_->send(2);
    EXPECT_TRUE(sent);
  }
  void serve() override { EXPECT_EQ(ch_->try_receive(), std::optional<int>(1)); }
  void check(bool served) override {
    if (served) {  // 2 was enqueued, once
      EXPECT_EQ(ch_->try_receive(), std::optional<int>(2));
    }
    EXPECT_EQ(ch_->try_receive(), std::nullopt) << "a cancelled send enqueued its value";
  }
  void destroy() override { ch_.reset(); }

 private:
  std::optional<Channel<int>> ch_;
};

INSTANTIATE_TEST_SUITE_P(
    Channel, PrimitiveWait,
    testing::Values(BlockedCase{"Receive", [] { return std::make_unique<EmptyChannel>(); }},
                    BlockedCase{"Send", [] { return std::make_unique<FullChannel>(); }}),
    coselect_test::blocked_case_name);

// ---- buffering, try_*, move-only values --------------------------------------------------------

TEST(Channel, CapacityZeroThrowsInvalidArgument) {
  EXPECT_THROW(Channel<int>(0), std::invalid_argument);
  EXPECT_EQ(Channel<int>(3).capacity(), 3u);
}

TEST(Channel, BuffersUpToCapacityInOrder) {
  Channel<int> ch(3);
  for (int i = 1; i <= 3; ++i) {
    int v = i;
    EXPECT_TRUE(ch.try_send(v));
  }
  int extra = 4;
  EXPECT_FALSE(ch.try_send(extra)) << "full means capacity values buffered";
  EXPECT_EQ(ch.size(), 3u);
  for (int i = 1; i <= 3; ++i)
    EXPECT_EQ(ch.try_receive(), std::optional<int>(i));
  EXPECT_EQ(ch.try_receive(), std::nullopt);
}

TEST(Channel, TrySendMovesOnlyOnSuccess) {
  Channel<std::unique_ptr<int>> ch(1);
  auto a = std::make_unique<int>(1);
  auto b = std::make_unique<int>(2);
  EXPECT_TRUE(ch.try_send(a));
  EXPECT_EQ(a, nullptr) << "moved from on success";
  EXPECT_FALSE(ch.try_send(b));
  ASSERT_NE(b, nullptr) << "untouched when full";
  EXPECT_EQ(*b, 2);
  ch.close();
  auto c = std::make_unique<int>(3);
  EXPECT_FALSE(ch.try_send(c));
  EXPECT_NE(c, nullptr) << "untouched when closed";
  auto got = ch.try_receive();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(**got, 1);
}

// Move-only values through every path: coroutine send/receive, blocking forms, hand-off.
TEST(Channel, MoveOnlyValuesPassThroughEveryPath) {
  Scheduler s;
  Channel<std::unique_ptr<int>> ch(1);
  std::vector<int> got;
  std::thread producer([&] {
    for (int i = 0; i < 3; ++i)
      EXPECT_TRUE(ch.send_blocking(std::make_unique<int>(i)));
  });
  auto main = [&]() -> Task<void> {
    for (int i = 0; i < 3; ++i) {
      std::optional<std::unique_ptr<int>> v = co_await ch.receive();
      got.push_back(v && *v ? **v : -1);
    }
    const bool sent = co_await ch.send(std::make_unique<int>(3));
    got.push_back(sent ? 3 : -1);
  };
  s.run(main());
  producer.join();
  auto last = ch.receive_blocking();
  ASSERT_TRUE(last && *last);
  EXPECT_EQ(**last, 3);
  EXPECT_EQ(got, (std::vector<int>{0, 1, 2, 3}));
}

// Sends with room, receives with a value buffered, and both on a closed channel complete
// without suspending, so a stop requested before them does not matter; a send to a full
// channel, under the same stop, throws at once and enqueues nothing.
TEST(Channel, FastPathsIgnoreAPriorStop) {
  Scheduler s;
  Channel<int> ch(1);
  std::stop_source stop;
  stop.request_stop();
  std::vector<std::string> log;
  auto body = [&]() -> Task<void> {
    const bool sent = co_await ch.send(1);  // room
    log.push_back(sent ? "sent" : "not sent");
    try {
      co_await ch.send(2);  // full: would suspend
      log.push_back("sent to a full channel");
    } catch (const std::system_error& e) {
      log.push_back(e.code() == std::errc::operation_canceled ? "canceled" : "other error");
    }
    std::optional<int> v = co_await ch.receive();  // buffered
    log.push_back("got " + std::to_string(v.value_or(-1)));
    ch.close();
    const bool after_close = co_await ch.send(3);
    log.push_back(after_close ? "sent after close" : "closed");
    std::optional<int> none = co_await ch.receive();
    log.push_back(none ? "got after close" : "drained");
  };
  s.run(coselect::with_stop_token(stop.get_token(), body()));
  EXPECT_EQ(log, (std::vector<std::string>{"sent", "canceled", "got 1", "closed", "drained"}));
}

// A receive racing a sleep in when_any: the sleep wins, the receive is cancelled and takes
// nothing; then a receive racing a send from another thread wins with that value.
TEST(Channel, ReceiveRacesInWhenAnyAndTheLoserTakesNothing) {
  Scheduler s;
  Channel<int> ch(1);
  std::size_t first_winner = 9;
  std::optional<int> second_value;
  std::thread sender;
  auto receive = [&]() -> Task<std::optional<int>> { co_return co_await ch.receive(); };
  auto nap = [](Scheduler::duration d) -> Task<void> { co_await coselect::sleep_for(d); };
  auto main = [&]() -> Task<void> {
    auto first = co_await coselect::when_any(receive(), nap(1ms));
    first_winner = first.index();
    int v = 5;
    EXPECT_TRUE(ch.try_send(v));  // the cancelled receive left no trace: the value is buffered
    EXPECT_EQ(ch.size(), 1u);
    std::optional<int> buffered = co_await ch.receive();
    sender = std::thread([&] { ch.send_blocking(buffered.value_or(0) + 1); });
    auto second = co_await coselect::when_any(receive(), nap(1h));
    if (second.index() == 0) second_value = std::get<0>(second);
  };
  s.run(main());
  sender.join();
  EXPECT_EQ(first_winner, 1u);
  EXPECT_EQ(second_value, std::optional<int>(6));
  EXPECT_EQ(ch.size(), 0u);
}

// ---- waiting: hand-off, back-pressure, FIFO --------------------------------------------------

// A value sent while a receiver waits passes straight to it: nothing is buffered.
TEST(Channel, ValuePassesStraightToAWaitingReceiver) {
  Scheduler s;
  Channel<int> ch(1);
  std::optional<int> got;
  std::size_t buffered_after_send = 99;
  bool sending = false;
  bool resumed_inside_send = false;
  auto receiver = [&]() -> Task<void> {
    got = co_await ch.receive();
    resumed_inside_send = sending;
  };
  auto main = [&]() -> Task<void> {
    auto h = s.spawn(receiver());
    co_await coselect::yield_now();
    sending = true;
    const bool sent = co_await ch.send(7);  // completes without waiting
    sending = false;
    buffered_after_send = sent ? ch.size() : 98;
    co_await h.join();
  };
  s.run(main());
  EXPECT_EQ(got, std::optional<int>(7));
  EXPECT_EQ(buffered_after_send, 0u);
  EXPECT_FALSE(resumed_inside_send);
}

// A sender waits while the channel is full and continues once a receive makes room.
TEST(Channel, SenderWaitsWhileFull) {
  Scheduler s;
  Channel<int> ch(2);
  std::vector<std::string> log;
  auto sender = [&]() -> Task<void> {
    for (int i = 0; i < 4; ++i) {
      const bool sent = co_await ch.send(i);
      log.push_back("sent " + std::to_string(i) + (sent ? "" : " FAILED"));
    }
  };
  auto main = [&]() -> Task<void> {
    auto h = s.spawn(sender());
    co_await coselect::yield_now();
    co_await coselect::yield_now();
    log.push_back("receiving");
    for (int i = 0; i < 4; ++i) {
      std::optional<int> v = co_await ch.receive();
      log.push_back("got " + std::to_string(v.value_or(-1)));
    }
    co_await h.join();
  };
  s.run(main());
  // The first receive takes 0 and moves the waiting 2 into the buffer; the sender resumes later.
  EXPECT_EQ(log, (std::vector<std::string>{"sent 0", "sent 1", "receiving", "got 0", "got 1",
                                           "got 2", "sent 2", "sent 3", "got 3"}));
}

// Waiting senders are served in the order they began waiting, and so are waiting receivers.
TEST(Channel, WaitersOnBothSidesAreServedFifo) {
  Scheduler s;
  Channel<int> ch(1);
  std::vector<int> received_by;  // receiver ids, in the order values reached them
  std::vector<int> values;
  auto receiver = [&](int id) -> Task<void> {
    std::optional<int> v = co_await ch.receive();
    received_by.push_back(id);
    values.push_back(v.value_or(-1));
  };
  auto sender = [&](int v) -> Task<void> {
    const bool sent = co_await ch.send(v);
    EXPECT_TRUE(sent);
  };
  auto main = [&]() -> Task<void> {
    std::vector<coselect::JoinHandle> hs;
    for (int i = 0; i < 4; ++i)
      hs.push_back(s.spawn(receiver(i)));
    co_await coselect::yield_now();
    for (int v = 10; v < 14; ++v)  // each hands straight to the oldest receiver
      co_await ch.send(v);
    for (int v = 20; v < 24; ++v)  // one buffered, three waiting in this order
      hs.push_back(s.spawn(sender(v)));
    co_await coselect::yield_now();
    for (int i = 4; i < 8; ++i)
      hs.push_back(s.spawn(receiver(i)));
    for (auto& h : hs)
      co_await h.join();
  };
  s.run(main());
  EXPECT_EQ(received_by, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(values, (std::vector<int>{10, 11, 12, 13, 20, 21, 22, 23}));
}

// ---- close ---------------------------------------------------------------------------------

// close() from another thread wakes waiting receivers (nullopt) on two schedulers, and a
// blocked receive_blocking thread.
TEST(Channel, CloseWakesEveryWaitingReceiver) {
  Channel<int> ch(2);
  std::atomic<int> nullopts{0};
  coselect::Latch waiting(2);
  auto loop = [&] {
    Scheduler s;
    auto receiver = [&]() -> Task<void> {
      std::optional<int> v = co_await ch.receive();
      if (!v) ++nullopts;
    };
    auto main = [&]() -> Task<void> {
      auto a = s.spawn(receiver());
      auto b = s.spawn(receiver());
      co_await coselect::yield_now();
      waiting.count_down();
      co_await a.join();
      co_await b.join();
    };
    s.run(main());
  };
  std::thread l1(loop);
  std::thread l2(loop);
  std::thread blocked([&] {
    if (!ch.receive_blocking()) ++nullopts;
  });
  waiting.wait_blocking();
  ch.close();
  l1.join();
  l2.join();
  blocked.join();
  EXPECT_EQ(nullopts, 5);
  EXPECT_TRUE(ch.is_closed());
}

// close() wakes waiting senders (false; their values are not enqueued), and a blocked
// send_blocking thread; receivers then drain what was accepted before the close.
TEST(Channel, CloseFailsWaitingSendersAndLetsReceiversDrain) {
  Scheduler s;
  Channel<int> ch(2);
  std::vector<bool> results;
  std::atomic<int> blocked_result{-1};
  std::thread blocked_sender;
  auto sender = [&](int v) -> Task<void> { results.push_back(co_await ch.send(v)); };
  std::vector<std::optional<int>> drained;
  auto main = [&]() -> Task<void> {
    co_await ch.send(1);
    co_await ch.send(2);
    auto a = s.spawn(sender(3));
    auto b = s.spawn(sender(4));
    co_await coselect::yield_now();
    blocked_sender = std::thread([&] { blocked_result = ch.send_blocking(5) ? 1 : 0; });
    std::thread([&] { ch.close(); }).join();
    co_await a.join();
    co_await b.join();
    results.push_back(co_await ch.send(6));  // after the close: false at once
    for (int i = 0; i < 3; ++i)
      drained.push_back(co_await ch.receive());
  };
  s.run(main());
  blocked_sender.join();
  EXPECT_EQ(results, (std::vector<bool>{false, false, false}));
  EXPECT_EQ(blocked_result, 0);
  EXPECT_EQ(drained, (std::vector<std::optional<int>>{1, 2, std::nullopt}));
  EXPECT_FALSE(ch.send_blocking(7));
  EXPECT_EQ(ch.receive_blocking(), std::nullopt);
  ch.close();  // idempotent
}

// ---- threads and coroutines -----------------------------------------------------------------

// A blocked send_blocking thread (observed asleep) continues once a coroutine receives, and a
// thread's sends resume the receiving coroutine on its own loop thread.
TEST(Channel, BlockingSenderAndCoroutineReceiver) {
  Scheduler s;
  Channel<int> ch(1);
  std::atomic<pid_t> producer_tid{0};
  std::vector<int> got;
  std::vector<long> resumed_on;
  std::thread producer([&] {
    producer_tid = static_cast<pid_t>(coselect_test::primitive_test_tid());
    for (int i = 0; i < 3; ++i)
      EXPECT_TRUE(ch.send_blocking(i));
    ch.close();
  });
  auto main = [&]() -> Task<void> {
    for (;;) {
      std::optional<int> v = co_await ch.receive();
      if (!v) break;
      got.push_back(*v);
      resumed_on.push_back(coselect_test::primitive_test_tid());
    }
  };
  // Let the producer fill the channel and block on the second value before the loop runs.
  while (producer_tid == 0)
    std::this_thread::yield();
  long nr = -1;
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (ch.size() == 0 || (!coselect_test::read_task_syscall(producer_tid, nr) &&
                            std::chrono::steady_clock::now() < deadline)) {
    std::this_thread::yield();
  }
  s.run(main());
  producer.join();
  EXPECT_EQ(got, (std::vector<int>{0, 1, 2}));
  for (long tid : resumed_on)
    EXPECT_EQ(tid, coselect_test::primitive_test_tid());
}

// A coroutine's sends wake a thread blocked in receive_blocking.
TEST(Channel, CoroutineSenderAndBlockingReceiver) {
  Scheduler s;
  Channel<int> ch(2);
  std::vector<int> got;
  std::thread consumer([&] {
    while (auto v = ch.receive_blocking())
      got.push_back(*v);
  });
  auto main = [&]() -> Task<void> {
    for (int i = 0; i < 100; ++i) {
      const bool sent = co_await ch.send(i);
      if (!sent) co_return;
    }
    ch.close();
  };
  s.run(main());
  consumer.join();
  ASSERT_EQ(got.size(), 100u);
  for (int i = 0; i < 100; ++i)
    EXPECT_EQ(got[static_cast<std::size_t>(i)], i);
}

// ---- exactly once under load ------------------------------------------------------------------

// Four producer threads (send_blocking) and a producer coroutine whose sends often time out
// (with_timeout: a cancelled send enqueues nothing, so it sends the same value again) feed a
// small channel; four consumer coroutines on two schedulers, half of whose receives time out
// (a cancelled receive takes nothing), and a consumer thread (receive_blocking) drain it until
// close(). Every value must arrive exactly once, and each consumer must see each producer's
// values in increasing order.
TEST(Channel, ExactlyOnceAcrossThreadsAndCoroutinesWithCancellation) {
  constexpr int kProducerThreads = 4;
  constexpr int kProducers = kProducerThreads + 1;  // + the coroutine
  constexpr int kConsumerLoops = 2;
  constexpr int kConsumersPerLoop = 2;
  const std::uint32_t per_producer = coselect_test::kSanitized ? 10000 : 40000;
  Channel<std::uint64_t> ch(8);
  auto encode = [](std::uint32_t producer, std::uint32_t seq) {
    return (std::uint64_t{producer} << 32) | seq;
  };
  std::vector<std::atomic<std::uint8_t>> seen(kProducers * std::size_t{per_producer});
  std::atomic<std::uint64_t> received{0};
  std::atomic<std::uint64_t> out_of_order{0};
  std::atomic<std::uint64_t> canceled_receives{0};
  std::atomic<std::uint64_t> canceled_sends{0};
  // One consumer's view: the last seq it saw from each producer.
  struct Order {
    std::vector<std::int64_t> last = std::vector<std::int64_t>(kProducers, -1);
  };
  auto record = [&](std::uint64_t v, Order& order) {
    const auto producer = static_cast<std::uint32_t>(v >> 32);
    const auto seq = static_cast<std::uint32_t>(v);
    seen[producer * std::size_t{per_producer} + seq].fetch_add(1, std::memory_order_relaxed);
    if (static_cast<std::int64_t>(seq) <= order.last[producer]) ++out_of_order;
    order.last[producer] = seq;
    ++received;
  };
  std::atomic<int> producers_left{kProducers};
  auto producer_done = [&] {
    if (--producers_left == 0) ch.close();
  };

  auto consumer = [&](int index) -> Task<void> {
    Order order;
    for (std::uint64_t i = 0;; ++i) {
      if (index % 2 == 1) {  // half the consumers give up waiting often
        std::optional<std::optional<std::uint64_t>> v =
            co_await coselect::with_timeout(i % 2 == 0 ? 0us : 50us, ch.receive());
        if (!v) {
          ++canceled_receives;
          continue;
        }
        if (!*v) break;
        record(**v, order);
      } else {
        std::optional<std::uint64_t> v = co_await ch.receive();
        if (!v) break;
        record(*v, order);
      }
      if (i % 64 == 0) {
        co_await coselect::yield_now();
      }
    }
  };
  auto coroutine_producer = [&]() -> Task<void> {
    for (std::uint32_t seq = 0, attempt = 0; seq < per_producer; ++attempt) {
      std::optional<bool> sent = co_await coselect::with_timeout(
          attempt % 2 == 0 ? 0us : 50us, ch.send(encode(kProducerThreads, seq)));
      if (!sent) {
        ++canceled_sends;
        continue;  // nothing was enqueued: the same value again
      }
      EXPECT_TRUE(*sent);
      ++seq;
    }
    producer_done();
  };

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int l = 0; l < kConsumerLoops; ++l) {
    threads.emplace_back([&, l] {
      Scheduler s;
      std::vector<Task<void>> tasks;
      for (int c = 0; c < kConsumersPerLoop; ++c)
        tasks.push_back(consumer(l * kConsumersPerLoop + c));
      if (l == 0) tasks.push_back(coroutine_producer());
      EXPECT_EQ(coselect_test::run_all_within(s, 120s, std::move(tasks)), 0u);
    });
  }
  threads.emplace_back([&] {
    Order order;
    while (auto v = ch.receive_blocking())
      record(*v, order);
  });
  for (std::uint32_t p = 0; p < kProducerThreads; ++p) {
    threads.emplace_back([&, p] {
      for (std::uint32_t seq = 0; seq < per_producer; ++seq)
        EXPECT_TRUE(ch.send_blocking(encode(p, seq)));
      producer_done();
    });
  }
  for (auto& t : threads)
    t.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const std::uint64_t sent = std::uint64_t{kProducers} * per_producer;
  std::uint64_t missing = 0;
  std::uint64_t doubled = 0;
  for (const auto& n : seen) {
    missing += n.load() == 0;
    doubled += n.load() > 1;
  }
  EXPECT_EQ(received.load(), sent);
  EXPECT_EQ(missing, 0u);
  EXPECT_EQ(doubled, 0u);
  EXPECT_EQ(out_of_order.load(), 0u);
  const int coroutines = kConsumerLoops * kConsumersPerLoop + 1;
  std::printf(
      "STRESS channel: sent %llu, received %llu, producer threads %d + 1 producer coroutine, "
      "consumer coroutines %d on %d schedulers + 1 consumer thread, cancelled receives %llu, "
      "cancelled sends %llu, %.2f s\n",
      static_cast<unsigned long long>(sent), static_cast<unsigned long long>(received.load()),
      kProducerThreads, coroutines - 1, kConsumerLoops,
      static_cast<unsigned long long>(canceled_receives.load()),
      static_cast<unsigned long long>(canceled_sends.load()), seconds);
  RecordProperty("sent", std::to_string(sent));
  RecordProperty("received", std::to_string(received.load()));
  RecordProperty("canceled_receives", std::to_string(canceled_receives.load()));
  RecordProperty("canceled_sends", std::to_string(canceled_sends.load()));
  RecordProperty("seconds", std::to_string(seconds));
}

}  // namespace
