// Heap accounting for the benchmark binaries that report bytes per timer / per suspended
// coroutine. It counts at the malloc layer, beneath the global operator new/delete: Asio
// allocates its coroutine frames and handlers with aligned_alloc() directly, and libuv uses
// malloc(), so counting only operator new would miss them. malloc, calloc, realloc, free and
// the aligned allocators are interposed here and forwarded to glibc's own entry points.
//
// Counting is on only inside a MemoryProbe's window (begin() .. at_peak()), so the timed parts
// of the benchmarks pay one predictable branch per call and nothing else. Inside the window each
// thread keeps its own total of net bytes (malloc_usable_size of what it allocated minus what it
// freed): a thread-local add, no atomic operation; the memory workloads allocate and measure on
// one thread, and only differences between readings in one window mean anything.
#include <errno.h>
#include <malloc.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "common.hpp"

extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);
}

namespace {

__attribute__((tls_model("initial-exec"))) thread_local std::int64_t t_net_bytes = 0;
std::atomic<bool> g_counting{false};

inline bool counting() noexcept {
  return g_counting.load(std::memory_order_relaxed);
}

inline void* counted(void* p) noexcept {
  if (counting() && p != nullptr) t_net_bytes += static_cast<std::int64_t>(malloc_usable_size(p));
  return p;
}

inline void uncount(void* p) noexcept {
  if (counting() && p != nullptr) t_net_bytes -= static_cast<std::int64_t>(malloc_usable_size(p));
}

}  // namespace

namespace bench {
bool heap_counting() {
  return true;
}
void set_heap_counting(bool on) {
  g_counting.store(on, std::memory_order_relaxed);
}
std::int64_t live_heap_bytes() {
  return t_net_bytes;
}
}  // namespace bench

extern "C" {

void* malloc(std::size_t n) {
  return counted(__libc_malloc(n));
}

void* calloc(std::size_t count, std::size_t n) {
  return counted(__libc_calloc(count, n));
}

void* realloc(void* p, std::size_t n) {
  uncount(p);
  void* q = __libc_realloc(p, n);
  if (q == nullptr && n != 0) {
    counted(p);  // failed: the old block is still there
    return nullptr;
  }
  return counted(q);
}

void free(void* p) {
  uncount(p);
  __libc_free(p);
}

void* memalign(std::size_t alignment, std::size_t n) {
  return counted(__libc_memalign(alignment, n));
}

void* aligned_alloc(std::size_t alignment, std::size_t n) {
  return counted(__libc_memalign(alignment, n));
}

int posix_memalign(void** out, std::size_t alignment, std::size_t n) {
  if (alignment < sizeof(void*) || (alignment & (alignment - 1)) != 0) return EINVAL;
  void* p = counted(__libc_memalign(alignment, n));
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}

}  // extern "C"
