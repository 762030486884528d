// Compile-cost probe: the hello world on coselect. A coroutine awaits an event that another
// thread sets; the loop runs until the coroutine returns.
#include <coselect.hpp>
#include <cstdio>
#include <thread>

coselect::Task<int> hello(coselect::WaitableEvent& ready) {
  co_await ready.wait();
  std::puts("hello, world");
  co_return 0;
}

int main() {
  coselect::Scheduler loop;
  coselect::WaitableEvent ready;
  std::thread setter([&] { ready.set(); });
  const int rc = loop.run(hello(ready));
  setter.join();
  return rc;
}
