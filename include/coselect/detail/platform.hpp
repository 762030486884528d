// The one place that picks the platform room: everything coselect asks of the operating system
// (the event's pipe, blocking waits on a word, readiness waits, fd checks) is declared with the
// same names in platform_posix.hpp and platform_win32.hpp, and only this header chooses one.
//
// Both rooms provide, in namespace coselect:
//   native_handle                    what fileno(), readable(), writable() and cancel_io() take
// and in coselect::detail:
//   invalid_handle, errno_category(), throw_errno(), pipe_fds, make_pipe_or_throw(),
//   close_fd(), write_byte(), drain(), fd_is_open(), check_fd(), futex_wait(),
//   futex_wake_all(), pollfd, poll_for(), poll_round(), select_round()
#pragma once

#if defined(_WIN32)
#include "platform_win32.hpp"
#else
#include "platform_posix.hpp"
#endif
