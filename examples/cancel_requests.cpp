// Cancellation on real sockets: a request raced against a timeout, the fastest of two replicas
// (when_any), and a TaskGroup fanning out to three workers, one of which fails.
//
// Each worker is a thread behind a socket pair: it reads a request, waits its delay, and
// answers (or, for "broken", hangs up). The coroutines wait with readable(fd); a timeout or a
// lost race cancels that wait, and the socket is simply left as it was.
//
//   example_cancel_requests              run the three scenarios, print what happened
//   example_cancel_requests --self-test  the same, exit 1 if any outcome is not the expected one
#include <coselect.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <variant>
#include <vector>

using namespace std::chrono_literals;
using coselect::Task;

// A worker thread answering requests on its end of a socket pair.
class Worker {
 public:
  Worker(std::string name, std::chrono::milliseconds delay) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
      throw std::system_error(errno, std::system_category(), "socketpair");
    }
    fd_ = fds[0];
    ::fcntl(fd_, F_SETFL, O_NONBLOCK);  // our end: the coroutines never block in read()
    thread_ = std::thread([name, delay, peer = fds[1]] {
      char request[64];
      while (::read(peer, request, sizeof request) > 0) {
        // Take `delay` to answer; our end shutting down (the Worker going away) ends it early.
        pollfd hangup{peer, POLLIN, 0};
        if (::poll(&hangup, 1, static_cast<int>(delay.count())) != 0) break;
        if (name == "broken") break;  // hangs up instead of answering
        const std::string reply = name + " says hi";
        if (::send(peer, reply.data(), reply.size(), MSG_NOSIGNAL) < 0) break;
      }
      ::close(peer);
    });
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() {
    ::shutdown(fd_, SHUT_RDWR);  // the thread's read() returns 0
    thread_.join();
    ::close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  std::thread thread_;
};

// Sends a request and waits for the reply. Cancelling it while it waits (a timeout, a lost
// race, a failed sibling) ends the readable() wait with operation_canceled.
Task<std::string> fetch(const Worker& w) {
  if (::send(w.fd(), "?", 1, MSG_NOSIGNAL) != 1) {
    throw std::system_error(errno, std::system_category(), "send");
  }
  char buffer[64];
  ssize_t n = -1;
  while (n < 0) {
    co_await coselect::readable(w.fd());
    n = ::read(w.fd(), buffer, sizeof buffer);
    if (n < 0 && errno != EAGAIN) throw std::system_error(errno, std::system_category(), "read");
  }
  if (n == 0) throw std::runtime_error("worker hung up");
  co_return std::string(buffer, static_cast<std::size_t>(n));
}

// A request handler racing the reply against a timeout.
Task<std::string> handle_request(const Worker& w) {
  std::optional<std::string> reply = co_await coselect::with_timeout(1s, fetch(w));
  co_return reply ? *reply : "timed out";
}

// The faster of two replicas; the slower one's wait is cancelled.
Task<std::string> fastest(const Worker& a, const Worker& b) {
  auto winner = co_await coselect::when_any(fetch(a), fetch(b));
  const std::string& reply = winner.index() == 0 ? std::get<0>(winner) : std::get<1>(winner);
  co_return "replica " + std::to_string(winner.index()) + ": " + reply;
}

// Fans out to three workers; the first failure stops the others and is rethrown by join().
Task<std::string> fan_out(const std::vector<const Worker*>& workers) {
  std::vector<std::string> replies(workers.size());
  coselect::TaskGroup group;
  for (std::size_t i = 0; i < workers.size(); ++i) {
    group.spawn([](const Worker& w, std::string& out) -> Task<void> { out = co_await fetch(w); }(
                                                          *workers[i], replies[i]));
  }
  try {
    co_await group.join();
  } catch (const std::exception& e) {
    co_return std::string("group failed: ") + e.what();
  }
  co_return replies[0] + ", " + replies[1] + ", " + replies[2];
}

int main(int argc, char** argv) {
  const bool self_test = argc > 1 && std::string(argv[1]) == "--self-test";
  coselect::Scheduler loop;
  auto scenarios = []() -> Task<std::vector<std::string>> {
    std::vector<std::string> out;
    Worker quick("quick", 10ms), slow("slow", 10s);
    out.push_back(co_await handle_request(quick));
    out.push_back(co_await handle_request(slow));
    Worker replica0("replica", 10s), replica1("replica", 10ms);
    out.push_back(co_await fastest(replica0, replica1));
    Worker a("a", 10ms), b("b", 20ms), c("c", 30ms);
    const std::vector<const Worker*> healthy{&a, &b, &c};
    out.push_back(co_await fan_out(healthy));
    Worker late("late", 10s), broken("broken", 30ms), fine("fine", 10ms);
    const std::vector<const Worker*> failing{&late, &broken, &fine};
    out.push_back(co_await fan_out(failing));
    co_return out;
  };
  const std::vector<std::string> got = loop.run(scenarios());
  const std::vector<std::string> expected = {
      "quick says hi", "timed out", "replica 1: replica says hi", "a says hi, b says hi, c says hi",
      "group failed: worker hung up"};
  for (const std::string& line : got)
    std::printf("%s\n", line.c_str());
  if (self_test && got != expected) {
    std::fprintf(stderr, "unexpected outcome\n");
    return 1;
  }
  return 0;
}
