// Test support: whether this build runs under a sanitizer that makes everything slower (tests
// scale their workloads and the hang guard its deadline), and whether it is ThreadSanitizer
// (which cannot run a few signal tests).
#pragma once

namespace coselect_test {

#if defined(__SANITIZE_THREAD__)
inline constexpr bool kThreadSanitized = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr bool kThreadSanitized = true;
#else
inline constexpr bool kThreadSanitized = false;
#endif
#else
inline constexpr bool kThreadSanitized = false;
#endif

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAddressSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kAddressSanitized = true;
#else
inline constexpr bool kAddressSanitized = false;
#endif
#else
inline constexpr bool kAddressSanitized = false;
#endif

inline constexpr bool kSanitized = kThreadSanitized || kAddressSanitized;

}  // namespace coselect_test
