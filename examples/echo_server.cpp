// A TCP echo server on 127.0.0.1 that uses every core it is given: one coselect::Scheduler (one
// loop) per thread, a coroutine per connection.
//
//   example_echo_server [--backend select|poll|epoll] [--threads N] [port]
//       serves until Ctrl-C (port 0 or none: any free port)
//   example_echo_server [those options] [--clients C] --self-test [port]
//       also runs C clients (default 20) at once, checks every byte echoed, and exits 0
//
// One loop per core, sharing nothing: each loop has its own listening socket on the same port
// (SO_REUSEPORT), and the kernel spreads new connections over them, so no loop hands sockets to
// another and nothing is locked per connection. State that must be shared has one owner loop,
// and a coroutine that needs it moves there with `co_await resume_on(owner)`: here the
// statistics belong to loop 0, and every connection reports to them when it ends.
//
// Sockets are non-blocking; a coroutine that would block awaits readable(fd) / writable(fd).
// Under epoll nobody may wait on an fd when it is closed (Scheduler::cancel_io(fd) first): here
// each connection closes its own socket after its last await on it.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <coselect.hpp>

using namespace std::chrono_literals;
using coselect::Task;

namespace {

[[noreturn]] void fail(const char* what) {
  throw std::system_error(errno, std::system_category(), what);
}

// Owns a socket; closes it when the coroutine frame holding it goes away, or on close().
class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {
    if (fd_ < 0) fail("socket");
  }
  Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Socket& operator=(Socket&&) = delete;
  ~Socket() { close(); }
  int fd() const { return fd_; }
  void close() {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  }

 private:
  int fd_;
};

sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

Socket tcp_socket() {
  return Socket(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
}

// A listening socket on 127.0.0.1:port that other sockets may share (each gets its own
// connections), and the port it got (port 0: any free one).
std::pair<Socket, std::uint16_t> shared_listener(std::uint16_t port) {
  Socket s = tcp_socket();
  const int on = 1;
  if (::setsockopt(s.fd(), SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0) fail("SO_REUSEPORT");
  sockaddr_in addr = loopback(port);
  socklen_t size = sizeof addr;
  if (::bind(s.fd(), reinterpret_cast<sockaddr*>(&addr), size) != 0) fail("bind");
  if (::listen(s.fd(), SOMAXCONN) != 0) fail("listen");
  if (::getsockname(s.fd(), reinterpret_cast<sockaddr*>(&addr), &size) != 0) fail("getsockname");
  return {std::move(s), ntohs(addr.sin_port)};
}

// Sends all of `data`, awaiting writable() whenever the socket's buffer is full.
Task<void> send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n >= 0) {
      data.remove_prefix(static_cast<std::size_t>(n));
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      co_await coselect::writable(fd);
    } else if (errno != EINTR) {
      fail("send");
    }
  }
}

// The server's statistics. They belong to loop 0: only code running on its thread touches
// them, so they need no lock.
struct Stats {
  coselect::Scheduler* home = nullptr;
  std::vector<std::size_t> served;  // connections ended, per loop
  std::size_t ended = 0;
  std::uint64_t bytes = 0;
  std::size_t expected = 0;            // --self-test: how many clients will come
  coselect::WaitableEvent all_served;  // set when `expected` connections have ended
};

// One connection: echo whatever arrives until the peer closes, then report to the statistics.
Task<void> serve(Socket conn, std::size_t loop, Stats& stats) {
  std::uint64_t bytes = 0;
  std::array<char, 4096> buffer;
  try {
    for (;;) {
      const ssize_t n = ::recv(conn.fd(), buffer.data(), buffer.size(), 0);
      if (n == 0) break;  // the peer closed
      if (n > 0) {
        co_await send_all(conn.fd(), {buffer.data(), static_cast<std::size_t>(n)});
        bytes += static_cast<std::uint64_t>(n);
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        co_await coselect::readable(conn.fd());
      } else if (errno != EINTR) {
        fail("recv");
      }
    }
  } catch (const std::system_error& e) {  // one bad connection must not stop the server
    std::fprintf(stderr, "connection dropped: %s\n", e.what());
  }
  conn.close();                               // our last await on it is over: safe on epoll too
  co_await coselect::resume_on(*stats.home);  // now on loop 0's thread, whichever loop we were on
  ++stats.served[loop];
  stats.bytes += bytes;
  if (++stats.ended == stats.expected) stats.all_served.set();
}

// Accepts connections for ever and spawns a coroutine for each, on this loop.
Task<void> accept_loop(coselect::Scheduler& loop, std::size_t index, Socket listener,
                       Stats& stats) {
  for (;;) {
    co_await coselect::readable(listener.fd());
    // Take every pending connection before waiting again: a burst can be thousands long.
    for (;;) {
      const int fd = ::accept4(listener.fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0) {
        loop.spawn(serve(Socket(fd), index, stats));
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        break;
      } else if (errno == EMFILE || errno == ENFILE) {  // out of fds: let some connections end
        std::perror("accept");
        co_await coselect::sleep_for(100ms);
        break;
      } else if (errno != ECONNABORTED && errno != EINTR && errno != EPROTO) {
        fail("accept");  // the others mean only that this one client gave up
      }
    }
  }
}

// ---- --self-test: the clients -----------------------------------------------------------

Task<Socket> connect_to(std::uint16_t port) {
  Socket sock = tcp_socket();
  const sockaddr_in addr = loopback(port);
  if (::connect(sock.fd(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 &&
      errno != EINPROGRESS) {
    fail("connect");
  }
  const bool connected = co_await coselect::writable(sock.fd(), 10s);
  if (!connected) throw std::runtime_error("connect timed out");
  int error = 0;
  socklen_t size = sizeof error;
  ::getsockopt(sock.fd(), SOL_SOCKET, SO_ERROR, &error, &size);
  if (error != 0) throw std::system_error(error, std::system_category(), "connect");
  co_return sock;
}

Task<void> recv_exactly(int fd, std::string& out) {
  for (std::size_t got = 0; got < out.size();) {
    const ssize_t n = ::recv(fd, out.data() + got, out.size() - got, 0);
    if (n > 0) {
      got += static_cast<std::size_t>(n);
    } else if (n == 0) {
      throw std::runtime_error("the server closed a connection");
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      const bool ready = co_await coselect::readable(fd, 10s);
      if (!ready) throw std::runtime_error("no echo for 10 s");
    } else if (errno != EINTR) {
      fail("recv");
    }
  }
}

// One client's round trips, each with its own bytes (all 256 values) and size. The very first
// message is bigger than socket buffers usually hold, so both sides await writable() too.
Task<void> converse(int fd, std::size_t id) {
  for (std::size_t round = 0; round < 5; ++round) {
    std::string message(id == 0 && round == 0 ? 1 << 20 : 1 + (id * 131 + round * 977) % 1500, 0);
    for (std::size_t k = 0; k < message.size(); ++k)
      message[k] = static_cast<char>((id * 7 + round * 13 + k) & 0xff);
    std::string echo(message.size(), 0);
    // Send and receive at once: sending all before reading could fill both directions' socket
    // buffers and wait for ever.
    co_await coselect::when_all(send_all(fd, message), recv_exactly(fd, echo));
    if (echo != message) throw std::runtime_error("client " + std::to_string(id) + ": bad echo");
  }
}

// `count` clients, all connected before any talks, so that `count` connections are open at once.
Task<void> run_clients(std::uint16_t port, std::size_t count) {
  std::vector<Socket> sockets;
  sockets.reserve(count);
  // Connect in batches: a flood of thousands of SYNs can overflow a listen queue, and a dropped
  // SYN is retried only a second later.
  for (std::size_t first = 0; first < count; first += 250) {
    std::vector<Task<Socket>> batch;
    for (std::size_t i = first; i < std::min(count, first + 250); ++i)
      batch.push_back(connect_to(port));
    std::vector<Socket> connected = co_await coselect::when_all(std::move(batch));
    for (Socket& s : connected)
      sockets.push_back(std::move(s));
  }
  std::vector<Task<void>> talks;
  for (std::size_t id = 0; id < count; ++id)
    talks.push_back(converse(sockets[id].fd(), id));
  co_await coselect::when_all(std::move(talks));
}

// On loop 0. The clients get a loop and a thread of their own (a pool thread: running a loop is
// blocking work), so that the server's loops keep their cores.
Task<void> self_test(coselect::Backend backend, std::uint16_t port, Stats& stats) {
  co_await coselect::run_in_thread([&] {
    coselect::Scheduler clients(backend);
    clients.run(run_clients(port, stats.expected));
  });
  const bool all_served = co_await stats.all_served.wait(10s);
  if (!all_served) throw std::runtime_error("the server did not see every client leave");
  std::printf("self-test: %zu clients echoed, %llu bytes; connections per loop:", stats.ended,
              static_cast<unsigned long long>(stats.bytes));
  for (std::size_t n : stats.served)
    std::printf(" %zu", n);
  std::printf("\n");
}

Task<void> until_signalled(coselect::SignalSet& signals, const Stats& stats) {
  co_await signals.wait();
  std::printf("stopping after %zu connections\n", stats.ended);
}

// ---- options ------------------------------------------------------------------------------

struct Options {
  coselect::Backend backend = coselect::Backend::select;
  std::size_t threads = 1;
  std::size_t clients = 20;
  bool self_test = false;
  std::uint16_t port = 0;
};

bool parse_number(std::string_view text, std::size_t high, auto& out) {
  std::size_t value = 0;
  const char* end = text.data() + text.size();
  const auto result = std::from_chars(text.data(), end, value);
  if (result.ec != std::errc{} || result.ptr != end || value > high) return false;
  out = static_cast<std::remove_reference_t<decltype(out)>>(value);
  return true;
}

std::optional<Options> parse(int argc, char** argv) {
  Options o;
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  std::size_t i = 0;
  for (; i < args.size() && args[i].starts_with("--"); ++i) {
    const std::string_view option = args[i];
    if (option == "--self-test") {
      o.self_test = true;
      continue;
    }
    const std::string_view value = ++i < args.size() ? args[i] : "";
    const auto backend = coselect::backend_from_string(value);
    bool ok = false;
    if (option == "--backend") {
      ok = backend && coselect::backend_available(*backend);
      if (ok) o.backend = *backend;
    } else if (option == "--threads") {
      ok = parse_number(value, 256, o.threads) && o.threads > 0;
    } else if (option == "--clients") {
      ok = parse_number(value, 1'000'000, o.clients) && o.clients > 0;
    } else {
      std::fprintf(stderr, "echo_server: unknown option %.*s\n", int(option.size()), option.data());
      return std::nullopt;
    }
    if (!ok) {
      std::fprintf(stderr, "echo_server: bad value for %.*s: '%.*s'\n", int(option.size()),
                   option.data(), int(value.size()), value.data());
      return std::nullopt;
    }
  }
  if (i + 1 < args.size() || (i < args.size() && !parse_number(args[i], 65535, o.port))) {
    std::fprintf(stderr, "echo_server: expected options, then at most a port (0 to 65535)\n");
    return std::nullopt;
  }
  return o;
}

// Thousands of connections need thousands of fds: take all the kernel lets this process have.
rlim_t raise_fd_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    const rlim_t before = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) limit.rlim_cur = before;
  }
  return limit.rlim_cur;
}

// The self-test's time guard, whatever hangs: SIGALRM ends the process with a message.
extern "C" void on_alarm(int) {
  const char message[] = "echo_server: the self-test took longer than 50 s\n";
  (void)!::write(STDERR_FILENO, message, sizeof message - 1);
  ::_exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  const std::optional<Options> options = parse(argc, argv);
  if (!options) {
    std::fprintf(stderr,
                 "usage: %s [--backend select|poll|epoll] [--threads N] [--clients C] "
                 "[--self-test] [port]\n",
                 argv[0]);
    return 2;
  }
  const rlim_t fds = raise_fd_limit();
  if (options->self_test && 2 * options->clients + 100 > fds) {  // both ends of each connection
    std::fprintf(stderr, "echo_server: %zu clients need more fds than the limit, %llu\n",
                 options->clients, static_cast<unsigned long long>(fds));
    return 2;
  }
  if (options->self_test) {
    std::signal(SIGALRM, on_alarm);
    ::alarm(50);
  }

  Stats stats;
  stats.expected = options->self_test ? options->clients : 0;
  std::optional<coselect::SignalSet> signals;  // outlives the loops that wait on it
  if (!options->self_test) signals.emplace({SIGINT, SIGTERM});
  std::vector<std::unique_ptr<coselect::Scheduler>> loops;
  std::vector<std::thread> threads;
  int status = 0;
  try {
    std::uint16_t port = options->port;
    for (std::size_t i = 0; i < options->threads; ++i) {
      auto& loop = *loops.emplace_back(std::make_unique<coselect::Scheduler>(options->backend));
      auto [listener, bound] = shared_listener(port);  // the first one picks the port
      port = bound;
      loop.spawn(accept_loop(loop, i, std::move(listener), stats));
    }
    stats.home = loops[0].get();
    stats.served.assign(loops.size(), 0);
    std::printf("echo server on 127.0.0.1:%u: %zu %s loop(s)\n", port, loops.size(),
                std::string(to_string(options->backend)).c_str());
    std::fflush(stdout);

    for (std::size_t i = 1; i < loops.size(); ++i) {
      threads.emplace_back([&loop = *loops[i], &main_loop = *loops[0]] {
        try {
          loop.run();                        // until stop()
        } catch (const std::exception& e) {  // a failure of one loop ends them all
          std::fprintf(stderr, "echo_server: %s\n", e.what());
          main_loop.stop();
        }
      });
    }
    loops[0]->run(options->self_test ? self_test(options->backend, port, stats)
                                     : until_signalled(*signals, stats));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "echo_server: %s\n", e.what());
    status = 1;
  }
  // Every loop stops and its thread ends before any loop goes: a connection may be on its way
  // from one loop to another (resume_on).
  for (auto& loop : loops)
    loop->stop();
  for (std::thread& t : threads)
    t.join();
  return status;
}
