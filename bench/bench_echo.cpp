// Echo at scale: C concurrent TCP connections over 127.0.0.1 (C = 100, 1,000, 10,000), each
// doing round trips of a 32-byte message, against one single-threaded server:
//
//   coselect   one coroutine per connection on a Scheduler, once per backend (select, poll,
//              epoll): co_await readable(fd), recv(); send(), co_await writable(fd) only when the
//              socket buffer is full. One coroutine accepts.
//   Asio       io_context(1) with the classic completion-handler session (async_read_some ->
//              async_write -> async_read_some, the session kept alive by shared_from_this): Asio's
//              fastest idiomatic form. Also C++20 coroutines (asio::awaitable), for reference.
//   libuv      uv_tcp_t per connection, uv_read_start, the echo written with uv_try_write (and
//              uv_write for whatever the socket does not take at once).
//
// The load generator is the same for every server: one plain epoll loop (level-triggered, one
// message in flight per connection) in a child process, so that client and server each have
// their own RLIMIT_NOFILE (10,000 connections are 20,000 descriptors; the hard limit here is
// 20,000). It connects all C, waits until the server has accepted every one, then each
// connection does R round trips (R * C = 200,000 messages, R >= 4); every echo is checked byte
// for byte. The client stops starting round trips after --max_seconds (default 20) and gives up
// (the benchmark fails) if the server then needs more than 30 s more.
//
// Reported per run (one Google Benchmark iteration), all per message (one round trip):
//   msgs_per_s            messages / wall time of the traffic phase, as the client measures it
//   ns_per_op             wall ns per message (the same, inverted; the iteration time)
//   cpu_ns_per_op         CPU of the server thread (pthread_getcpuclockid) during the traffic
//   client_cpu_ns_per_op  CPU of the client process during the traffic (is it the bottleneck?)
//   conns, conns_served   connections, and connections that got every one of their echoes
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <array>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <coselect.hpp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common.hpp"

namespace {

constexpr std::size_t kMsg = 32;
constexpr std::int64_t kMessages = 200'000;
constexpr std::size_t kBuffer = 1024;  // every server reads into 1 KiB per connection

void check(bool ok, const char* what) {
  if (!ok) bench::fail(std::string(what) + ": " + std::strerror(errno));
}

void raise_fd_limit() {
  rlimit rl{};
  check(::getrlimit(RLIMIT_NOFILE, &rl) == 0, "getrlimit");
  rl.rlim_cur = rl.rlim_max;
  check(::setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit");
}

std::int64_t now_ns(clockid_t clock) {
  timespec ts{};
  check(clock_gettime(clock, &ts) == 0, "clock_gettime");
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

void set_nodelay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

// What a server gets: a listening socket on 127.0.0.1 (non-blocking), how many connections to
// accept, and a pipe to write one byte to once it has accepted them all. It closes the listener
// then, and returns once every connection has been closed by the client.
struct ServerJob {
  int listener = -1;
  int conns = 0;
  int accepted_fd = -1;
  int closed = 0;  // connections the server saw end

  void all_accepted() const {
    const char c = 'a';
    check(::write(accepted_fd, &c, 1) == 1, "write(accepted)");
  }
};

// ---- the client (child process) ------------------------------------------------------------

struct ClientResult {
  std::int64_t rounds = 0;
  std::int64_t served = 0;  // connections that got all their echoes
  std::int64_t wall_ns = 0;
  std::int64_t cpu_ns = 0;
  char error[200] = {};
};

struct ClientConn {
  int fd = -1;
  std::uint32_t seq = 0;   // of the message in flight
  std::uint32_t done = 0;  // round trips completed
  std::uint32_t got = 0;   // bytes of the echo received so far
  bool finished = false;
  std::array<char, kMsg> in{};
};

void message(std::uint32_t id, std::uint32_t seq, char* out) {
  std::memcpy(out, &id, 4);
  std::memcpy(out + 4, &seq, 4);
  for (std::size_t i = 8; i < kMsg; ++i)
    out[i] = static_cast<char>('a' + (id + seq + i) % 26);
}

class Client {
 public:
  Client(std::uint16_t port, int conns, std::int64_t rounds, double max_seconds)
      : port_(port), rounds_(rounds), max_seconds_(max_seconds), conns_(conns) {}

  // Returns an error message, or "" on success.
  std::string run(int accepted_fd, int status_fd, ClientResult& r) {
    ep_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) return errno_text("epoll_create1");
    if (std::string e = connect_all(); !e.empty()) return e;
    // Wait until the server has accepted every connection (its byte), 60 s at most.
    pollfd p{accepted_fd, POLLIN, 0};
    if (::poll(&p, 1, 60'000) != 1) return "the server did not accept every connection in 60 s";
    const char go = 'g';
    if (::write(status_fd, &go, 1) != 1) return errno_text("write(go)");

    const std::int64_t wall0 = now_ns(CLOCK_MONOTONIC);
    const std::int64_t cpu0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    const std::int64_t stop_at = wall0 + static_cast<std::int64_t>(max_seconds_ * 1e9);
    const std::int64_t give_up = stop_at + 30'000'000'000;
    for (std::uint32_t i = 0; i < conns_.size(); ++i) {
      if (std::string e = send_next(i); !e.empty()) return e;
    }
    std::size_t finished = 0;
    bool stopping = false;
    std::vector<epoll_event> events(1024);
    while (finished < conns_.size()) {
      const int n = ::epoll_wait(ep_, events.data(), static_cast<int>(events.size()), 100);
      if (n < 0 && errno != EINTR) return errno_text("epoll_wait");
      const std::int64_t t = now_ns(CLOCK_MONOTONIC);
      stopping = stopping || t >= stop_at;
      if (t >= give_up) return "the server stopped answering (30 s past --max_seconds)";
      for (int k = 0; k < n; ++k) {
        const std::uint32_t i = events[static_cast<std::size_t>(k)].data.u32;
        ClientConn& c = conns_[i];
        const ssize_t got = ::recv(c.fd, c.in.data() + c.got, kMsg - c.got, 0);
        if (got == 0) return "the server closed a connection";
        if (got < 0) {
          if (errno == EAGAIN || errno == EINTR) continue;
          return errno_text("recv");
        }
        c.got += static_cast<std::uint32_t>(got);
        if (c.got < kMsg) continue;
        char expected[kMsg];
        message(i, c.seq, expected);
        if (std::memcmp(expected, c.in.data(), kMsg) != 0)
          return "an echo differs from its message";
        c.got = 0;
        ++c.done;
        ++r.rounds;
        if (c.done < rounds_ && !stopping) {
          if (std::string e = send_next(i); !e.empty()) return e;
        } else {
          c.finished = true;
          ++finished;
          if (c.done == rounds_) ++r.served;
          ::epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
        }
      }
    }
    r.wall_ns = now_ns(CLOCK_MONOTONIC) - wall0;
    r.cpu_ns = now_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
    // Reset, not close: no TIME_WAIT left behind by the thousands of connections of each run.
    const linger reset{1, 0};
    for (ClientConn& c : conns_) {
      ::setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
      ::close(c.fd);
    }
    return "";
  }

 private:
  static std::string errno_text(const char* what) {
    return std::string(what) + ": " + std::strerror(errno);
  }

  // Connects in batches of 256 (the server accepts meanwhile), 60 s at most in all.
  std::string connect_all() {
    const sockaddr_in addr = loopback(port_);
    const std::int64_t give_up = now_ns(CLOCK_MONOTONIC) + 60'000'000'000;
    std::vector<epoll_event> events(256);
    for (std::size_t first = 0; first < conns_.size(); first += 256) {
      const std::size_t last = std::min(conns_.size(), first + 256);
      for (std::size_t i = first; i < last; ++i) {
        ClientConn& c = conns_[i];
        c.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c.fd < 0) return errno_text("socket");
        set_nodelay(c.fd);
        if (::connect(c.fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 &&
            errno != EINPROGRESS) {
          return errno_text("connect");
        }
        epoll_event ev{};
        ev.events = EPOLLOUT;
        ev.data.u32 = static_cast<std::uint32_t>(i);
        if (::epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev) != 0) return errno_text("epoll_ctl");
      }
      for (std::size_t pending = last - first; pending > 0;) {
        if (now_ns(CLOCK_MONOTONIC) > give_up) return "connect timed out";
        const int n = ::epoll_wait(ep_, events.data(), static_cast<int>(events.size()), 100);
        if (n < 0 && errno != EINTR) return errno_text("epoll_wait");
        for (int k = 0; k < n; ++k) {
          ClientConn& c = conns_[events[static_cast<std::size_t>(k)].data.u32];
          int error = 0;
          socklen_t size = sizeof error;
          ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &error, &size);
          if (error != 0) {
            errno = error;
            return errno_text("connect");
          }
          epoll_event ev = events[static_cast<std::size_t>(k)];
          ev.events = EPOLLIN;  // from now on: the echoes
          if (::epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev) != 0) return errno_text("epoll_ctl");
          --pending;
        }
      }
    }
    return "";
  }

  std::string send_next(std::uint32_t i) {
    ClientConn& c = conns_[i];
    c.seq = c.done;
    char out[kMsg];
    message(i, c.seq, out);
    // 32 bytes into an empty socket buffer (one message in flight): taken whole or not at all.
    if (::send(c.fd, out, kMsg, MSG_NOSIGNAL) != static_cast<ssize_t>(kMsg)) {
      return errno_text("send");
    }
    return "";
  }

  std::uint16_t port_;
  std::int64_t rounds_;
  double max_seconds_;
  std::vector<ClientConn> conns_;
  int ep_ = -1;
};

[[noreturn]] void client_main(std::uint16_t port, int conns, std::int64_t rounds,
                              double max_seconds, int accepted_fd, int status_fd) {
  raise_fd_limit();
  ClientResult r;
  Client client(port, conns, rounds, max_seconds);
  const std::string error = client.run(accepted_fd, status_fd, r);
  std::snprintf(r.error, sizeof r.error, "%s", error.c_str());
  const bool ok = ::write(status_fd, &r, sizeof r) == static_cast<ssize_t>(sizeof r);
  ::_exit(ok ? 0 : 1);
}

// ---- the harness -----------------------------------------------------------------------------

// Reads exactly `size` bytes from a pipe within `timeout_ms`; false on timeout, EOF or error.
bool read_within(int fd, void* out, std::size_t size, int timeout_ms) {
  auto* p = static_cast<char*>(out);
  const std::int64_t give_up = now_ns(CLOCK_MONOTONIC) + std::int64_t{timeout_ms} * 1'000'000;
  while (size > 0) {
    const auto left = static_cast<int>((give_up - now_ns(CLOCK_MONOTONIC)) / 1'000'000);
    if (left <= 0) return false;
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, left) != 1) continue;
    const ssize_t n = ::read(fd, p, size);
    if (n == 0) return false;
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

// Runs one echo workload: `serve(job)` is the server, called on a thread of its own.
template <class Serve>
void echo(benchmark::State& state, Serve serve) {
  std::signal(SIGPIPE, SIG_IGN);
  raise_fd_limit();
  const auto nominal = static_cast<int>(state.range(0));
  const int conns = bench::scale() >= 1.0
                        ? nominal
                        : static_cast<int>(std::max<std::int64_t>(4, bench::count(nominal)));
  const std::int64_t rounds = std::max<std::int64_t>(4, bench::count(kMessages) / conns);
  for (auto _ : state) {
    const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    check(listener >= 0, "socket");
    const int one = 1;
    ::setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr = loopback(0);
    check(::bind(listener, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0, "bind");
    check(::listen(listener, 4096) == 0, "listen");
    socklen_t len = sizeof addr;
    check(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0, "getsockname");
    int accepted[2], status[2];
    check(::pipe2(accepted, O_CLOEXEC) == 0 && ::pipe2(status, O_CLOEXEC) == 0, "pipe2");

    const pid_t child = ::fork();  // this process has one thread here: fork is safe
    check(child >= 0, "fork");
    if (child == 0) {
      ::close(listener);
      ::close(accepted[1]);
      ::close(status[0]);
      client_main(ntohs(addr.sin_port), conns, rounds, bench::max_seconds(), accepted[0],
                  status[1]);
    }
    ::close(accepted[0]);
    ::close(status[1]);

    ServerJob job{listener, conns, accepted[1], 0};
    // The server thread stays alive (its CPU clock readable) until released, after the reading.
    std::promise<void> release;
    std::packaged_task<void()> task([&, released = release.get_future()] {
      serve(job);
      released.wait();
    });
    std::future<void> finished = task.get_future();
    std::thread server(std::move(task));
    clockid_t server_clock{};
    check(pthread_getcpuclockid(server.native_handle(), &server_clock) == 0, "getcpuclockid");

    auto give_up = [&](const std::string& why) {
      ::kill(child, SIGKILL);
      bench::fail(why);  // aborts: a server that does not finish is a bug, not a number
    };
    char go = 0;
    if (!read_within(status[0], &go, 1, 120'000)) give_up("the client never started");
    const std::int64_t cpu0 = now_ns(server_clock);
    ClientResult r;
    const int result_ms = static_cast<int>(bench::max_seconds() * 1000) + 60'000;
    if (!read_within(status[0], &r, sizeof r, result_ms)) give_up("no result from the client");
    const std::int64_t cpu1 = now_ns(server_clock);
    release.set_value();
    if (r.error[0] != 0) give_up(std::string("client: ") + r.error);
    if (finished.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
      give_up("the server did not finish after the client closed every connection");
    }
    server.join();
    finished.get();  // rethrows a server's exception
    int wstatus = 0;
    ::waitpid(child, &wstatus, 0);
    ::close(accepted[1]);
    ::close(status[0]);
    if (job.closed != conns) bench::fail("the server did not see every connection close");

    const double msgs = static_cast<double>(r.rounds);
    state.SetIterationTime(static_cast<double>(r.wall_ns) * 1e-9);
    state.counters["msgs_per_s"] = msgs / (static_cast<double>(r.wall_ns) * 1e-9);
    state.counters["ns_per_op"] = static_cast<double>(r.wall_ns) / msgs;
    state.counters["cpu_ns_per_op"] = static_cast<double>(cpu1 - cpu0) / msgs;
    state.counters["client_cpu_ns_per_op"] = static_cast<double>(r.cpu_ns) / msgs;
    state.counters["ops"] = msgs;
    state.counters["conns"] = conns;
    state.counters["conns_served"] = static_cast<double>(r.served);
  }
}

void args(benchmark::internal::Benchmark* b) {
  bench::configure(b);
  b->ArgName("conns")->Arg(100)->Arg(1000)->Arg(10000);
}

// ---- coselect --------------------------------------------------------------------------------

struct CsServer {
  ServerJob& job;
  coselect::WaitableEvent all_closed;
};

coselect::Task<void> cs_connection(CsServer& srv, int fd) {
  std::array<char, kBuffer> buffer;
  for (;;) {
    co_await coselect::readable(fd);
    const ssize_t n = ::recv(fd, buffer.data(), buffer.size(), 0);
    if (n == 0) break;  // the client closed
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      break;  // reset by the client
    }
    bool broken = false;
    for (ssize_t sent = 0; sent < n;) {
      const ssize_t w =
          ::send(fd, buffer.data() + sent, static_cast<std::size_t>(n - sent), MSG_NOSIGNAL);
      if (w >= 0) {
        sent += w;
      } else if (errno == EAGAIN) {
        co_await coselect::writable(fd);
      } else if (errno != EINTR) {
        broken = true;
        break;
      }
    }
    if (broken) break;
  }
  ::close(fd);
  if (++srv.job.closed == srv.job.conns) srv.all_closed.set();
}

coselect::Task<void> cs_server(CsServer& srv) {
  coselect::Scheduler& s = *coselect::Scheduler::current();
  int open = 0;
  while (open < srv.job.conns) {
    co_await coselect::readable(srv.job.listener);
    while (open < srv.job.conns) {
      const int fd = ::accept4(srv.job.listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        check(errno == EAGAIN || errno == ECONNABORTED || errno == EINTR, "accept4");
        break;
      }
      set_nodelay(fd);
      ++open;
      s.spawn(cs_connection(srv, fd));
    }
  }
  ::close(srv.job.listener);
  srv.job.all_accepted();
  co_await srv.all_closed.wait();
}

template <coselect::Backend B>
void echo_coselect(benchmark::State& state) {
  echo(state, [](ServerJob& job) {
    coselect::Scheduler s(B);
    CsServer srv{job, {}};
    s.run(cs_server(srv));
  });
}
BENCHMARK(echo_coselect<coselect::Backend::select>)->Name("echo/coselect_select")->Apply(args);
BENCHMARK(echo_coselect<coselect::Backend::poll>)->Name("echo/coselect_poll")->Apply(args);
BENCHMARK(echo_coselect<coselect::Backend::epoll>)->Name("echo/coselect_epoll")->Apply(args);

// ---- Asio: completion handlers ---------------------------------------------------------------

using asio::ip::tcp;

class AsioSession : public std::enable_shared_from_this<AsioSession> {
 public:
  AsioSession(tcp::socket socket, ServerJob& job) : socket_(std::move(socket)), job_(job) {}
  ~AsioSession() { ++job_.closed; }

  void read() {
    socket_.async_read_some(asio::buffer(buffer_),
                            [self = shared_from_this()](asio::error_code ec, std::size_t n) {
                              if (!ec) self->write(n);
                            });
  }

 private:
  void write(std::size_t n) {
    asio::async_write(socket_, asio::buffer(buffer_, n),
                      [self = shared_from_this()](asio::error_code ec, std::size_t) {
                        if (!ec) self->read();
                      });
  }

  tcp::socket socket_;
  ServerJob& job_;
  std::array<char, kBuffer> buffer_;
};

struct AsioAcceptor {
  tcp::acceptor& acceptor;
  ServerJob& job;
  int open = 0;

  void accept() {
    acceptor.async_accept([this](asio::error_code ec, tcp::socket socket) {
      if (!ec) {
        socket.set_option(tcp::no_delay(true));
        std::make_shared<AsioSession>(std::move(socket), job)->read();
        ++open;
      }
      if (open < job.conns) {
        accept();
      } else {
        acceptor.close();
        job.all_accepted();
      }
    });
  }
};

void echo_asio(benchmark::State& state) {
  echo(state, [](ServerJob& job) {
    asio::io_context ctx(1);
    tcp::acceptor acceptor(ctx);
    acceptor.assign(tcp::v4(), job.listener);
    AsioAcceptor a{acceptor, job};
    a.accept();
    ctx.run();  // returns once the acceptor is closed and every session has ended
  });
}
BENCHMARK(echo_asio)->Name("echo/asio_handlers")->Apply(args);

// ---- Asio: C++20 coroutines --------------------------------------------------------------------

asio::awaitable<void> asio_co_session(tcp::socket socket, ServerJob& job) {
  std::array<char, kBuffer> buffer;
  asio::error_code ec;
  for (;;) {
    const std::size_t n = co_await socket.async_read_some(
        asio::buffer(buffer), asio::redirect_error(asio::use_awaitable, ec));
    if (ec) break;
    co_await asio::async_write(socket, asio::buffer(buffer, n),
                               asio::redirect_error(asio::use_awaitable, ec));
    if (ec) break;
  }
  ++job.closed;
}

asio::awaitable<void> asio_co_acceptor(tcp::acceptor& acceptor, ServerJob& job) {
  asio::error_code ec;
  for (int open = 0; open < job.conns;) {
    tcp::socket socket =
        co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (ec) continue;
    socket.set_option(tcp::no_delay(true));
    asio::co_spawn(acceptor.get_executor(), asio_co_session(std::move(socket), job),
                   asio::detached);
    ++open;
  }
  acceptor.close();
  job.all_accepted();
}

void echo_asio_awaitable(benchmark::State& state) {
  echo(state, [](ServerJob& job) {
    asio::io_context ctx(1);
    tcp::acceptor acceptor(ctx);
    acceptor.assign(tcp::v4(), job.listener);
    asio::co_spawn(ctx, asio_co_acceptor(acceptor, job), asio::detached);
    ctx.run();
  });
}
BENCHMARK(echo_asio_awaitable)->Name("echo/asio_awaitable")->Apply(args);

// ---- libuv -------------------------------------------------------------------------------------

struct UvServer {
  uv_loop_t loop{};
  uv_tcp_t listener{};
  ServerJob* job = nullptr;
  int open = 0;
};

struct UvConnection {
  uv_tcp_t tcp{};
  UvServer* server = nullptr;
  std::array<char, kBuffer> buffer{};
};

// What uv_try_write did not take: copied, written by uv_write, freed when done.
struct UvWrite {
  uv_write_t req{};
  std::vector<char> data;
};

void uv_connection_closed(uv_handle_t* h) {
  auto* c = static_cast<UvConnection*>(h->data);
  ++c->server->job->closed;
  delete c;
}

void uv_on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  if (nread < 0) {  // UV_EOF or a reset
    uv_close(reinterpret_cast<uv_handle_t*>(stream), uv_connection_closed);
    return;
  }
  if (nread == 0) return;
  uv_buf_t out = uv_buf_init(buf->base, static_cast<unsigned>(nread));
  const int written = uv_try_write(stream, &out, 1);
  if (written == nread) return;
  if (written < 0 && written != UV_EAGAIN) {
    uv_close(reinterpret_cast<uv_handle_t*>(stream), uv_connection_closed);
    return;
  }
  const std::size_t from = written > 0 ? static_cast<std::size_t>(written) : 0;
  auto* w = new UvWrite;
  w->data.assign(buf->base + from, buf->base + nread);
  uv_buf_t rest = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
  w->req.data = w;
  uv_write(&w->req, stream, &rest, 1,
           [](uv_write_t* req, int) { delete static_cast<UvWrite*>(req->data); });
}

void uv_on_connection(uv_stream_t* listener, int status) {
  auto* srv = static_cast<UvServer*>(listener->data);
  if (status < 0) return;
  auto* c = new UvConnection;
  c->server = srv;
  uv_tcp_init(&srv->loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(&c->tcp)) != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp),
             [](uv_handle_t* h) { delete static_cast<UvConnection*>(h->data); });
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&c->tcp),
      [](uv_handle_t* h, std::size_t, uv_buf_t* out) {
        auto* conn = static_cast<UvConnection*>(h->data);
        *out = uv_buf_init(conn->buffer.data(), static_cast<unsigned>(conn->buffer.size()));
      },
      uv_on_read);
  if (++srv->open == srv->job->conns) {
    uv_close(reinterpret_cast<uv_handle_t*>(listener), nullptr);
    srv->job->all_accepted();
  }
}

void echo_libuv(benchmark::State& state) {
  echo(state, [](ServerJob& job) {
    UvServer srv;
    srv.job = &job;
    check(uv_loop_init(&srv.loop) == 0, "uv_loop_init");
    uv_tcp_init(&srv.loop, &srv.listener);
    srv.listener.data = &srv;
    check(uv_tcp_open(&srv.listener, job.listener) == 0, "uv_tcp_open");
    check(uv_listen(reinterpret_cast<uv_stream_t*>(&srv.listener), 4096, uv_on_connection) == 0,
          "uv_listen");
    uv_run(&srv.loop, UV_RUN_DEFAULT);  // returns once every handle is closed
    uv_loop_close(&srv.loop);
  });
}
BENCHMARK(echo_libuv)->Name("echo/libuv")->Apply(args);

}  // namespace

COSELECT_BENCH_MAIN()
