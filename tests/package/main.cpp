#include <coselect.hpp>

int main() {
  coselect::WaitableEvent ev;
  ev.set();
  return ev.is_set() ? 0 : 1;
}
