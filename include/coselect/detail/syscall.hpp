// Platform-neutral helpers over the system calls coselect makes: the conversions between
// std::chrono and the kernel's time formats, saturating instead of overflowing. The calls
// themselves live in the platform rooms (platform.hpp picks one). Lowest layer: includes nothing
// of coselect but its platform room.
//
// Error policy: functions named *_or_throw report failure as std::system_error; the others
// return the raw result and are async-signal-safe (they touch only errno).
#pragma once

#include <time.h>

#include <chrono>
#include <cstdint>
#include <limits>

#include "platform.hpp"

namespace coselect::detail {

// ---- time ------------------------------------------------------------------------------------

// Converts any duration to nanoseconds, saturating instead of overflowing (a "huge" timeout of
// hours::max() must mean "practically forever", not a negative number).
template <class Rep, class Period>
constexpr std::chrono::nanoseconds saturating_ns(std::chrono::duration<Rep, Period> d) noexcept {
  using std::chrono::nanoseconds;
  using wide = std::chrono::duration<long double, std::nano>;
  // Half the range: room to add the result to a clock reading without overflowing.
  constexpr nanoseconds::rep ceiling = std::numeric_limits<nanoseconds::rep>::max() / 2;
  const long double ns = std::chrono::duration_cast<wide>(d).count();
  if (!(ns == ns)) return nanoseconds::zero();  // NaN: treat as a poll
  if (ns >= static_cast<long double>(ceiling)) return nanoseconds(ceiling);
  if (ns <= static_cast<long double>(-ceiling)) return nanoseconds(-ceiling);
  // Round up so that a timeout never fires early.
  auto whole = std::chrono::duration_cast<nanoseconds>(d);
  if (std::chrono::duration_cast<wide>(whole).count() < ns) ++whole;
  return whole;
}

// `now + d` without overflow: the result saturates at the time_point's min() and max().
template <class Clock, class Rep, class Period>
typename Clock::time_point saturating_add(typename Clock::time_point now,
                                          std::chrono::duration<Rep, Period> d) noexcept {
  using tp = typename Clock::time_point;
  using rep = std::chrono::nanoseconds::rep;
  const auto base = std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch());
  const auto step = saturating_ns(d);
  // Saturate at the ends of the clock's range (a virtual clock may start centuries ahead).
  if (step.count() > 0 && base.count() > std::numeric_limits<rep>::max() - step.count()) {
    return tp::max();
  }
  if (step.count() < 0 && base.count() < std::numeric_limits<rep>::min() - step.count()) {
    return tp::min();
  }
  return now + std::chrono::duration_cast<typename tp::duration>(step);
}

}  // namespace coselect::detail
