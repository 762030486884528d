// Compile-cost probe: the hello world on standalone Asio. A coroutine waits until another thread
// signals it (a timer that the thread cancels, the usual Asio idiom for an event).
#include <asio.hpp>
#include <cstdio>
#include <thread>

asio::awaitable<void> hello(asio::steady_timer& ready) {
  asio::error_code ec;
  co_await ready.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  std::puts("hello, world");
}

int main() {
  asio::io_context ctx;
  asio::steady_timer ready(ctx, asio::steady_timer::time_point::max());
  asio::co_spawn(ctx, hello(ready), asio::detached);
  std::thread setter([&] { asio::post(ctx, [&] { ready.cancel(); }); });
  ctx.run();
  setter.join();
  return 0;
}
