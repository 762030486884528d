// Every backend's reactor, and the one place that picks one (Scheduler construction).
#pragma once

#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>

#include "../backend.hpp"
#include "reactor.hpp"
#include "reactor_poll.hpp"
#include "reactor_select.hpp"
#if defined(__linux__)
#include "reactor_epoll.hpp"
#endif

namespace coselect::detail {

// The backend of Scheduler() and Scheduler(TimeMachine&): select, as DESIGN §7 fixes. Only the
// test suite changes it (from COSELECT_TEST_BACKEND, through use_default_backend), to run every
// test once per backend.
inline std::atomic<Backend> default_backend{Backend::select};

inline std::unique_ptr<reactor> make_reactor(Backend b) {
  switch (b) {
    case Backend::select:
      return std::make_unique<select_reactor>();
    case Backend::poll:
      return std::make_unique<poll_reactor>();
    case Backend::epoll:
#if defined(__linux__)
      return std::make_unique<epoll_reactor>();
#else
      break;
#endif
  }
  throw std::invalid_argument(std::string("coselect::Scheduler: backend ") +
                              std::string(to_string(b)) + " is not available on this platform");
}

// Set by use_default_backend: until then the default is select, built directly, so that a
// program which never names another backend compiles select's reactor alone into each TU that
// constructs a Scheduler (the other reactors' code is about a tenth of a hello world's compile
// time).
inline std::atomic<std::unique_ptr<reactor> (*)(Backend)> default_reactor_factory{nullptr};

inline std::unique_ptr<reactor> make_default_reactor() {
  if (auto* factory = default_reactor_factory.load()) return factory(default_backend.load());
  return std::make_unique<select_reactor>();
}

// Makes `b` the backend of Scheduler() and Scheduler(TimeMachine&) (the test suite's switch).
inline void use_default_backend(Backend b) {
  default_backend.store(b);
  default_reactor_factory.store(&make_reactor);
}

}  // namespace coselect::detail
