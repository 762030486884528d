// A TCP echo server on 127.0.0.1: one coroutine accepts, one coroutine per connection echoes.
// Everything runs on one thread, on one coselect::Scheduler; the sockets are non-blocking and a
// coroutine that would block awaits readable(fd) / writable(fd) instead.
//
//   example_echo_server [port]          serve until killed (port 0 or none: any free port)
//   example_echo_server --self-test     also run a client on the same loop, check, and exit 0

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <coselect.hpp>

using namespace std::chrono_literals;
using coselect::Task;

namespace {

[[noreturn]] void fail(const char* what) {
  throw std::system_error(errno, std::system_category(), what);
}

// Owns a socket; closes it when the coroutine frame holding it goes away.
class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {
    if (fd_ < 0) fail("socket");
  }
  Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Socket& operator=(Socket&&) = delete;
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }

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

// One connection: echo whatever arrives until the peer closes (or the connection fails).
Task<void> serve(Socket conn) {
  std::array<char, 4096> buffer;
  try {
    for (;;) {
      co_await coselect::readable(conn.fd());
      const ssize_t n = ::recv(conn.fd(), buffer.data(), buffer.size(), 0);
      if (n == 0) co_return;  // the peer closed
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        fail("recv");
      }
      co_await send_all(conn.fd(), {buffer.data(), static_cast<std::size_t>(n)});
    }
  } catch (const std::system_error& e) {  // one bad connection must not stop the server
    std::fprintf(stderr, "connection dropped: %s\n", e.what());
  }
}

// Accepts connections for ever, and spawns a coroutine for each.
Task<void> accept_loop(coselect::Scheduler& scheduler, int listener) {
  for (;;) {
    co_await coselect::readable(listener);
    const int fd = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) scheduler.spawn(serve(Socket(fd)));
    // fd < 0: the client gave up already (ECONNABORTED) or EAGAIN; wait for the next one.
  }
}

// --self-test: connect, send a few messages, check each echo, then stop the loop.
Task<void> self_test(coselect::Scheduler& scheduler, std::uint16_t port) {
  Socket sock = tcp_socket();
  const sockaddr_in addr = loopback(port);
  if (::connect(sock.fd(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 &&
      errno != EINPROGRESS) {
    fail("connect");
  }
  if (!co_await coselect::writable(sock.fd(), 5s)) throw std::runtime_error("connect timed out");
  int error = 0;
  socklen_t size = sizeof error;
  ::getsockopt(sock.fd(), SOL_SOCKET, SO_ERROR, &error, &size);
  if (error != 0) throw std::system_error(error, std::system_category(), "connect");

  const std::string big(64 * 1024, 'x');  // more than one recv() at a time
  for (std::string_view message : std::array<std::string_view, 3>{"hello", "coselect", big}) {
    co_await send_all(sock.fd(), message);
    std::string echo;
    while (echo.size() < message.size()) {
      if (!co_await coselect::readable(sock.fd(), 5s)) throw std::runtime_error("no echo");
      std::array<char, 4096> buffer;
      const ssize_t n = ::recv(sock.fd(), buffer.data(), buffer.size(), 0);
      if (n == 0) throw std::runtime_error("server closed the connection");
      if (n > 0) echo.append(buffer.data(), static_cast<std::size_t>(n));
    }
    if (echo != message) throw std::runtime_error("echo differs from the message");
    std::printf("self-test: %zu bytes echoed\n", echo.size());
  }
  scheduler.stop();  // run() returns; the server's coroutines are destroyed with the scheduler
}

}  // namespace

int main(int argc, char** argv) {
  const bool testing = argc > 1 && std::string_view(argv[1]) == "--self-test";
  const auto port = static_cast<std::uint16_t>(argc > 1 && !testing ? std::atoi(argv[1]) : 0);
  try {
    Socket listener = tcp_socket();
    const int on = 1;
    ::setsockopt(listener.fd(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    sockaddr_in addr = loopback(port);
    socklen_t size = sizeof addr;
    if (::bind(listener.fd(), reinterpret_cast<sockaddr*>(&addr), size) != 0) fail("bind");
    if (::listen(listener.fd(), SOMAXCONN) != 0) fail("listen");
    if (::getsockname(listener.fd(), reinterpret_cast<sockaddr*>(&addr), &size) != 0) {
      fail("getsockname");
    }
    std::printf("echo server on 127.0.0.1:%u\n", ntohs(addr.sin_port));
    std::fflush(stdout);

    coselect::Scheduler scheduler;
    scheduler.spawn(accept_loop(scheduler, listener.fd()));
    if (testing) scheduler.spawn(self_test(scheduler, ntohs(addr.sin_port)));
    scheduler.run();  // until stop(); an exception escaping a coroutine ends up here
  } catch (const std::exception& e) {
    std::fprintf(stderr, "echo_server: %s\n", e.what());
    return 1;
  }
  return 0;
}
