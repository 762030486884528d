// coselect::Dispatcher: the asyncore view of a file descriptor (BACpypes' file_dispatcher).
#pragma once

#include "detail/platform.hpp"

namespace coselect {

namespace detail {
class reactor;
}

// Dispatcher — a callback-style object a Scheduler watches (Scheduler::add_dispatcher).
//
// Each loop iteration asks readable()/writable() to build its fd sets and calls handle_read()
// / handle_write() when select() reports the fd ready; handle_close() when the fd turns out to
// be closed (the dispatcher is then removed). All calls happen on the loop thread. An exception
// from a handler follows the scheduler's failure policy. Any open fd will do (no fd cap; a socket
// on Windows).
class Dispatcher {
 public:
  virtual ~Dispatcher() = default;

  virtual native_handle fileno() const = 0;
  virtual bool readable() { return true; }
  virtual bool writable() { return false; }
  virtual void handle_read() {}
  virtual void handle_write() {}
  virtual void handle_close() {}

 private:
  friend class detail::reactor;
  bool registered_ = false;
};

}  // namespace coselect
