// Compile-cost probe: hello world on coselect (a Scheduler running one Task).
#include <coselect.hpp>
#include <cstdio>

coselect::Task<int> hello() {
  std::puts("hello, world");
  co_return 0;
}

int main() {
  coselect::Scheduler loop;
  return loop.run(hello());
}
