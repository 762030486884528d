// coselect — C++20 coroutines that meet threads and file descriptors.
//
// The one header users include. Layers, lowest first (no header includes a higher one):
//   detail/syscall, detail/wait_node, detail/cancel_point, detail/frame_header  ->  waitable_event
//   ->  task, join_handle  ->  clock, detail/timer_heap, backend, dispatcher, detail/reactor
//   (+ reactor_select, _poll, _epoll)  ->  task_manager  ->  scheduler  ->  time, io, thread,
//   when_all, cancel, when_any, task_group, signal, testing (not included here: it needs
//   GoogleTest)  ->  coselect.hpp
#pragma once

#include "coselect/backend.hpp"
#include "coselect/bacpypes.hpp"
#include "coselect/cancel.hpp"
#include "coselect/clock.hpp"
#include "coselect/dispatcher.hpp"
#include "coselect/io.hpp"
#include "coselect/join_handle.hpp"
#include "coselect/scheduler.hpp"
#include "coselect/signal.hpp"
#include "coselect/task.hpp"
#include "coselect/task_group.hpp"
#include "coselect/task_manager.hpp"
#include "coselect/thread.hpp"
#include "coselect/time.hpp"
#include "coselect/waitable_event.hpp"
#include "coselect/when_all.hpp"
#include "coselect/when_any.hpp"
