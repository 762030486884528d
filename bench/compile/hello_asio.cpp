// Compile-cost probe: hello world on standalone Asio (an io_context running one awaitable).
#include <asio.hpp>
#include <cstdio>

asio::awaitable<void> hello() {
  std::puts("hello, world");
  co_return;
}

int main() {
  asio::io_context ctx;
  asio::co_spawn(ctx, hello(), asio::detached);
  ctx.run();
  return 0;
}
