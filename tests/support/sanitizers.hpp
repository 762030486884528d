// Test support: whether this build runs under a sanitizer that makes everything slower (tests
// scale their workloads and the hang guard its deadline), and whether it is ThreadSanitizer
// (which cannot run a few signal tests). GCC says so with __SANITIZE_*__, clang with
// __has_feature (which GCC 12 lacks).
#pragma once

#if defined(__has_feature)
#define COSELECT_TEST_HAS_FEATURE(feature) __has_feature(feature)
#else
#define COSELECT_TEST_HAS_FEATURE(feature) 0
#endif

namespace coselect_test {

#if defined(__SANITIZE_THREAD__) || COSELECT_TEST_HAS_FEATURE(thread_sanitizer)
inline constexpr bool kThreadSanitized = true;
#else
inline constexpr bool kThreadSanitized = false;
#endif

#if defined(__SANITIZE_ADDRESS__) || COSELECT_TEST_HAS_FEATURE(address_sanitizer)
inline constexpr bool kAddressSanitized = true;
#else
inline constexpr bool kAddressSanitized = false;
#endif

inline constexpr bool kSanitized = kThreadSanitized || kAddressSanitized;

}  // namespace coselect_test
