// A TCP echo server on 127.0.0.1 that uses every core it is given: one coselect::Scheduler (one
// loop) per thread, one coroutine per connection.
//
//   example_echo_server [--backend select|poll|epoll] [--threads N] [port]   serve until Ctrl-C
//   example_echo_server [those options] [--clients C] --self-test [port]
//       also run C clients (default 20) at once, check every byte echoed, exit 0
//
// One loop per core, sharing nothing: each loop has its own listening socket on the same port
// (SO_REUSEPORT) and the kernel spreads new connections over them, so no loop hands sockets to
// another and nothing is locked per connection (Windows cannot share a port: there loop 0
// listens alone). State that must be shared has one owner loop; a coroutine that needs it moves
// there with `co_await resume_on(owner)`. Here loop 0 owns the statistics, and every connection
// goes there to report when it ends.
//
// Sockets are non-blocking; a coroutine that would block awaits readable(fd) / writable(fd).
// Under epoll nobody may wait on an fd when it is closed (Scheduler::cancel_io(fd) first): here
// each connection closes its own socket after its last await on it.

#include <coselect.hpp>  // first: on Windows it brings <winsock2.h> before anything else

#if defined(_WIN32)
#include <winsock2.h>
#include <ws2tcpip.h>
#else
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#endif

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

using namespace std::chrono_literals;
using coselect::Task;
using socket_t = coselect::native_handle;

namespace {

// ---- the few socket calls that differ between POSIX and Winsock ------------------------------

#if defined(_WIN32)
constexpr socket_t kNoSocket = INVALID_SOCKET;
constexpr int kWouldBlock = WSAEWOULDBLOCK, kInterrupted = WSAEINTR;
constexpr int kSendFlags = 0;
constexpr bool kSharedPorts = false;  // no SO_REUSEPORT: one listening loop
int last_error() {
  return ::WSAGetLastError();
}
void close_socket(socket_t s) {
  ::closesocket(s);
}
socket_t tcp_socket_fd() {
  const socket_t s = ::socket(AF_INET, SOCK_STREAM, 0);
  u_long on = 1;
  if (s != INVALID_SOCKET) ::ioctlsocket(s, FIONBIO, &on);
  return s;
}
// Accepted sockets inherit non-blocking mode from the listener.
socket_t accept_fd(socket_t listener) {
  return ::accept(listener, nullptr, nullptr);
}
bool out_of_sockets(int error) {
  return error == WSAEMFILE || error == WSAENOBUFS;
}
bool connection_gone(int error) {
  return error == WSAECONNRESET || error == WSAECONNABORTED;
}
#else
constexpr socket_t kNoSocket = -1;
constexpr int kWouldBlock = EAGAIN, kInterrupted = EINTR;
constexpr int kSendFlags = MSG_NOSIGNAL;
constexpr bool kSharedPorts = true;
int last_error() {
  return errno;
}
void close_socket(socket_t s) {
  ::close(s);
}
socket_t tcp_socket_fd() {
  return ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
}
socket_t accept_fd(socket_t listener) {
  return ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK);
}
bool out_of_sockets(int error) {
  return error == EMFILE || error == ENFILE;
}
bool connection_gone(int error) {
  return error == ECONNABORTED;
}
#endif

[[noreturn]] void fail(const char* what) {
  throw std::system_error(last_error(), std::system_category(), what);
}

// Owns a socket; closes it on close() or when the coroutine frame holding it goes away.
class Socket {
 public:
  explicit Socket(socket_t fd) : fd_(fd) {
    if (fd_ == kNoSocket) fail("socket");
  }
  Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, kNoSocket)) {}
  Socket& operator=(Socket&&) = delete;
  ~Socket() { close(); }
  socket_t fd() const { return fd_; }
  void close() {
    if (fd_ != kNoSocket) close_socket(std::exchange(fd_, kNoSocket));
  }

 private:
  socket_t fd_;
};

Socket tcp_socket() {
  return Socket(tcp_socket_fd());
}

sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

// A listener on 127.0.0.1:port (0: any free port, then written back) that shares the port.
Socket shared_listener(std::uint16_t& port) {
  Socket s = tcp_socket();
#if !defined(_WIN32)
  const int on = 1;
  if (::setsockopt(s.fd(), SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0) fail("SO_REUSEPORT");
#endif
  sockaddr_in addr = loopback(port);
  socklen_t size = sizeof addr;
  if (::bind(s.fd(), reinterpret_cast<sockaddr*>(&addr), size) != 0) fail("bind");
  if (::listen(s.fd(), SOMAXCONN) != 0) fail("listen");
  ::getsockname(s.fd(), reinterpret_cast<sockaddr*>(&addr), &size);
  port = ntohs(addr.sin_port);
  return s;
}

Task<void> send_all(socket_t fd, std::string_view data) {
  while (!data.empty()) {
    // At most 1 MiB per call: Winsock counts in int.
    const auto size = static_cast<int>(std::min<std::size_t>(data.size(), 1 << 20));
    const auto n = ::send(fd, data.data(), size, kSendFlags);
    if (n >= 0) {
      data.remove_prefix(static_cast<std::size_t>(n));
    } else if (last_error() == kWouldBlock) {
      co_await coselect::writable(fd);  // the socket's buffer is full
    } else if (last_error() != kInterrupted) {
      fail("send");
    }
  }
}

// Loop 0 owns these: only code running on its thread touches them, so they need no lock.
struct Stats {
  coselect::Scheduler* home = nullptr;
  std::vector<std::size_t> served;  // connections that ended, per loop
  std::size_t ended = 0, expected = 0;
  std::uint64_t bytes = 0;
  coselect::WaitableEvent all_ended;  // --self-test: set once `expected` connections ended
};

// One connection: echo whatever arrives until the peer closes, then report to loop 0.
Task<void> serve(Socket conn, std::size_t loop, Stats& stats) {
  std::uint64_t bytes = 0;
  std::array<char, 4096> buffer;
  try {
    for (;;) {
      const auto n = ::recv(conn.fd(), buffer.data(), static_cast<int>(buffer.size()), 0);
      if (n == 0) break;  // the peer closed
      if (n > 0) {
        co_await send_all(conn.fd(), {buffer.data(), static_cast<std::size_t>(n)});
        bytes += static_cast<std::uint64_t>(n);
      } else if (last_error() == kWouldBlock) {
        co_await coselect::readable(conn.fd());
      } else if (last_error() != kInterrupted) {
        fail("recv");
      }
    }
  } catch (const std::system_error& e) {  // one bad connection must not stop the server
    std::fprintf(stderr, "connection dropped: %s\n", e.what());
  }
  conn.close();                               // nobody waits on it any more: fine under epoll
  co_await coselect::resume_on(*stats.home);  // from here on, on loop 0's thread
  ++stats.served[loop];
  stats.bytes += bytes;
  if (++stats.ended == stats.expected) stats.all_ended.set();
}

Task<void> accept_loop(coselect::Scheduler& loop, std::size_t index, Socket listener,
                       Stats& stats) {
  for (;;) {
    co_await coselect::readable(listener.fd());
    // Take every pending connection before waiting again: a burst can be thousands long.
    for (;;) {
      const socket_t fd = accept_fd(listener.fd());
      const int error = fd == kNoSocket ? last_error() : 0;
      if (fd != kNoSocket) {
        loop.spawn(serve(Socket(fd), index, stats));
      } else if (error == kWouldBlock) {
        break;
      } else if (out_of_sockets(error)) {  // out of fds: let connections end
        std::fprintf(stderr, "accept: out of sockets\n");
        co_await coselect::sleep_for(100ms);
        break;
      } else if (!connection_gone(error) && error != kInterrupted) {
        fail("accept");
      }
    }
  }
}

// ---- --self-test: the clients, on a loop of their own ----------------------------------------

Task<Socket> connect_to(std::uint16_t port) {
  Socket sock = tcp_socket();
  const sockaddr_in addr = loopback(port);
#if defined(_WIN32)
  constexpr int in_progress = WSAEWOULDBLOCK;
#else
  constexpr int in_progress = EINPROGRESS;
#endif
  if (::connect(sock.fd(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 &&
      last_error() != in_progress) {
    fail("connect");
  }
  const bool connected = co_await coselect::writable(sock.fd(), 10s);
  int error = connected ? 0 : static_cast<int>(std::errc::timed_out);
  socklen_t size = sizeof error;
  if (connected) {
    ::getsockopt(sock.fd(), SOL_SOCKET, SO_ERROR, reinterpret_cast<char*>(&error), &size);
  }
  if (error != 0) throw std::system_error(error, std::system_category(), "connect");
  co_return sock;
}

Task<void> recv_exactly(socket_t fd, std::string& out) {
  for (std::size_t got = 0; got < out.size();) {
    const auto size = static_cast<int>(std::min<std::size_t>(out.size() - got, 1 << 20));
    const auto n = ::recv(fd, out.data() + got, size, 0);
    if (n == 0) throw std::runtime_error("the server closed a connection");
    if (n > 0) {
      got += static_cast<std::size_t>(n);
    } else if (last_error() == kWouldBlock) {
      const bool ready = co_await coselect::readable(fd, 10s);
      if (!ready) throw std::runtime_error("no echo for 10 s");
    } else if (last_error() != kInterrupted) {
      fail("recv");
    }
  }
}

// Round trips, each with its own size and bytes. The first message of client 0 is bigger than
// socket buffers usually are, so both ends also await writable().
Task<void> converse(socket_t fd, std::size_t id) {
  for (std::size_t round = 0; round < 5; ++round) {
    std::string message(id + round == 0 ? 1 << 20 : 1 + (id * 131 + round * 977) % 1500, 0);
    for (std::size_t k = 0; k < message.size(); ++k)
      message[k] = static_cast<char>(id * 7 + round * 13 + k);
    std::string echo(message.size(), 0);
    // Send and receive at once: sending all before reading could fill both directions'
    // buffers and wait for ever.
    co_await coselect::when_all(send_all(fd, message), recv_exactly(fd, echo));
    if (echo != message) throw std::runtime_error("wrong echo to client " + std::to_string(id));
  }
}

// Every client connects before any talks, so that `count` connections are open at once.
Task<void> run_clients(std::uint16_t port, std::size_t count) {
  std::vector<Socket> sockets;
  sockets.reserve(count);
  // In batches smaller than a listen queue may be (128 before Linux 5.4): a SYN that overflows
  // one is dropped, and retried only a second later.
  for (std::size_t first = 0; first < count; first += 100) {
    std::vector<Task<Socket>> batch;
    for (std::size_t i = first; i < std::min(count, first + 100); ++i)
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

// On loop 0. The clients' loop runs on a pool thread (it is blocking work for this one), so
// the server's loops keep their cores.
Task<void> self_test(coselect::Backend backend, std::uint16_t port, Stats& stats) {
  co_await coselect::run_in_thread([&] {
    coselect::Scheduler clients(backend);
    clients.run(run_clients(port, stats.expected));
  });
  const bool all_ended = co_await stats.all_ended.wait(10s);
  if (!all_ended) throw std::runtime_error("the server did not see every client leave");
  std::printf("self-test: %zu clients served, %llu bytes echoed; per loop:", stats.ended,
              static_cast<unsigned long long>(stats.bytes));
  for (std::size_t n : stats.served)
    std::printf(" %zu", n);
  std::printf("\n");
}

Task<void> until_signalled(coselect::SignalSet& signals, const Stats& stats) {
  co_await signals.wait();
  std::printf("stopping after %zu connections\n", stats.ended);
}

struct Options {
  coselect::Backend backend = coselect::Backend::select;
  unsigned threads = 1, clients = 20, port = 0;
  bool self_test = false;
};

// Options first, then at most a port. Says what is wrong, if anything.
std::optional<Options> parse(const std::vector<std::string_view>& args) {
  Options o;
  const auto number = [](std::string_view s, unsigned low, unsigned high, unsigned& out) {
    const auto [end, error] = std::from_chars(s.data(), s.data() + s.size(), out);
    return error == std::errc{} && end == s.data() + s.size() && out >= low && out <= high;
  };
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string_view arg = args[i], value = i + 1 < args.size() ? args[i + 1] : "";
    bool ok = true;
    if (arg == "--self-test") {
      o.self_test = true;
    } else if (arg == "--backend") {
      const auto backend = coselect::backend_from_string(value);
      ok = backend && coselect::backend_available(*backend);
      if (ok) o.backend = *backend;
    } else if (arg == "--threads" || arg == "--clients") {
      ok = number(value, 1, arg == "--threads" ? 256 : 1'000'000,
                  arg == "--threads" ? o.threads : o.clients);
    } else {
      ok = !arg.starts_with("--") && i + 1 == args.size() && number(arg, 0, 65535, o.port);
    }
    if (!ok) {
      const bool option = arg.starts_with("--");
      std::fprintf(stderr, "echo_server: bad %s '%s'\n",
                   option ? std::string(arg).c_str() : "port (0 to 65535, the last argument)",
                   std::string(option ? value : arg).c_str());
      return std::nullopt;
    }
    if (arg != "--self-test") ++i;  // past the option's value
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const std::optional<Options> options = parse({argv + 1, argv + argc});
  if (!options) {
    std::fprintf(stderr,
                 "usage: %s [--backend select|poll|epoll] [--threads N] [--clients C] "
                 "[--self-test] [port]\n",
                 argv[0]);
    return 2;
  }
#if defined(_WIN32)
  WSADATA wsa;  // our own sockets may come before coselect's first
  if (::WSAStartup(MAKEWORD(2, 2), &wsa) != 0) return 1;
  if (options->self_test) {  // a time guard, whatever may hang
    std::thread([] {
      std::this_thread::sleep_for(50s);
      std::fputs("echo_server: the self-test took more than 50 s\n", stderr);
      std::_Exit(1);
    }).detach();
  }
  const std::initializer_list<int> stop_signals{SIGINT, SIGBREAK};
#else
  // Thousands of connections need thousands of fds: take all the kernel allows (best effort).
  rlimit limit{};
  ::getrlimit(RLIMIT_NOFILE, &limit);
  limit.rlim_cur = limit.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &limit);
  if (options->self_test) {  // a time guard, whatever may hang
    std::signal(SIGALRM, [](int) {
      const char message[] = "echo_server: the self-test took more than 50 s\n";
      (void)!::write(STDERR_FILENO, message, sizeof message - 1);
      ::_exit(1);
    });
    ::alarm(50);
  }
  const std::initializer_list<int> stop_signals{SIGINT, SIGTERM};
#endif

  Stats stats;
  stats.expected = options->self_test ? options->clients : 0;
  std::optional<coselect::SignalSet> signals;  // outlives the loops, which may wait on it
  if (!options->self_test) signals.emplace(stop_signals);
  std::vector<std::unique_ptr<coselect::Scheduler>> loops;
  std::vector<std::thread> threads;
  int status = 0;
  try {
    auto port = static_cast<std::uint16_t>(options->port);
    for (std::size_t i = 0; i < options->threads; ++i) {
      auto& loop = *loops.emplace_back(std::make_unique<coselect::Scheduler>(options->backend));
      if (i == 0 || kSharedPorts) loop.spawn(accept_loop(loop, i, shared_listener(port), stats));
    }
    stats.home = loops[0].get();
    stats.served.assign(loops.size(), 0);
    std::printf("echo server on 127.0.0.1:%u, %zu %s loop(s)\n", port, loops.size(),
                std::string(to_string(options->backend)).c_str());
    std::fflush(stdout);
    for (std::size_t i = 1; i < loops.size(); ++i) {
      threads.emplace_back([&loop = *loops[i], &loop0 = *loops[0]] {
        try {
          loop.run();                        // until stop()
        } catch (const std::exception& e) {  // one loop failing ends them all
          std::fprintf(stderr, "echo_server: %s\n", e.what());
          loop0.stop();
        }
      });
    }
    loops[0]->run(options->self_test ? self_test(options->backend, port, stats)
                                     : until_signalled(*signals, stats));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "echo_server: %s\n", e.what());
    status = 1;
  }
  // Every loop stops before any goes: a connection may be on its way from one to another.
  for (auto& loop : loops)
    loop->stop();
  for (std::thread& t : threads)
    t.join();
  return status;
}
