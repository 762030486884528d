// What a JoinHandle refers to: a small header allocated in front of every Task frame that the
// Task promise's operator new allocates, which outlives the frame for as long as handles to it
// exist. Only spawned frames use it (a frame whose allocation the compiler elided has none;
// a spawned frame's handle escapes, so its allocation never is). A spawned task whose handle
// was dropped at once (the common case) costs nothing more than the header's 16 bytes: no
// allocation, no stop source. The rest (stop source, joiners) is allocated when first needed.
#pragma once

#include <atomic>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>
#include <stop_token>

#include "wait_node.hpp"

namespace coselect::detail {

// A coroutine in JoinHandle::join(), linked into the task's join_control.
struct join_waiter {
  std::coroutine_handle<> handle{};
  loop_hooks* loop = nullptr;
  join_waiter* next = nullptr;
  join_waiter* prev = nullptr;
  bool linked = false;
  wait_outcome outcome = wait_outcome::pending;
};

// A spawned task's own stop source and the coroutines joining it. Guarded by `mutex`.
struct join_control {
  std::stop_source source;
  std::stop_token token = source.get_token();
  std::mutex mutex;
  join_waiter* head = nullptr;
  join_waiter* tail = nullptr;

  void push_back(join_waiter& w) noexcept {
    w.linked = true;
    w.next = nullptr;
    w.prev = tail;
    (tail != nullptr ? tail->next : head) = &w;
    tail = &w;
  }
  void unlink(join_waiter& w) noexcept {
    (w.prev != nullptr ? w.prev->next : head) = w.next;
    (w.next != nullptr ? w.next->prev : tail) = w.prev;
    w.next = w.prev = nullptr;
    w.linked = false;
  }
};

// A per-thread cache of freed frame blocks by size class (16-byte steps), so that the steady
// state of spawning, awaiting and finishing coroutines takes nothing from malloc. A block goes
// back to the cache of the thread that frees it (a frame may end, or its last JoinHandle go,
// on another thread than the one that made it); a thread keeps at most kMaxBytes per class (so
// that a burst of one size cannot crowd out the steady state of another), the rest goes back
// to the heap. The lists are plain thread-local data (no construction guard on the hot
// path); a thread-local janitor, registered on the first put, hands them back at thread exit.
class frame_cache {
#if defined(__SANITIZE_ADDRESS__)
  static constexpr bool kBypass = true;  // AddressSanitizer must see every frame freed
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  static constexpr bool kBypass = true;
#else
  static constexpr bool kBypass = false;
#endif
#else
  static constexpr bool kBypass = false;
#endif

 public:
  static constexpr std::size_t kStep = 16;
  static constexpr std::size_t kHeaderGuess = 8;
  static constexpr std::uint32_t kClasses = 64;  // blocks up to 1000 bytes; larger ones bypass
  static constexpr std::size_t kMaxBytes = std::size_t{256} << 10;

  // Blocks of class c hold c * kStep - 8 bytes: with malloc's usual 8-byte chunk header, that
  // fills a chunk exactly, where rounding the request up to c * kStep would waste 16 bytes.
  static constexpr std::size_t block_size(std::uint32_t c) noexcept {
    return std::size_t{c} * kStep - kHeaderGuess;
  }

  // The class of the smallest block that holds `bytes`, or 0 if blocks that size are not cached.
  static constexpr std::uint32_t size_class(std::size_t bytes) noexcept {
    if (kBypass) return 0;
    const std::size_t c = (bytes + kHeaderGuess + kStep - 1) / kStep;
    return c < kClasses ? static_cast<std::uint32_t>(c) : 0;
  }

  static void* take(std::uint32_t c) {
    lists& l = this_thread();
    if (block* b = l.heads[c]) {
      l.heads[c] = b->next;
      l.bytes[c] -= static_cast<std::uint32_t>(block_size(c));
      return b;
    }
    return ::operator new(block_size(c));
  }

  static void give(void* p, std::uint32_t c) noexcept {
    lists& l = this_thread();
    if (l.phase != mode::open || l.bytes[c] + block_size(c) > kMaxBytes) {
      if (l.phase == mode::fresh) {
        open(l);
      } else {
        ::operator delete(p);
        return;
      }
    }
    auto* b = static_cast<block*>(p);
    b->next = l.heads[c];
    l.heads[c] = b;
    l.bytes[c] += static_cast<std::uint32_t>(block_size(c));
  }

 private:
  struct block {
    block* next;
  };
  enum class mode : std::uint8_t { fresh, open, closed };
  struct lists {
    block* heads[kClasses];
    std::uint32_t bytes[kClasses];
    mode phase;
  };
  struct janitor {
    ~janitor() {
      lists& l = this_thread();
      l.phase = mode::closed;  // frames freed later by this thread go straight to the heap
      for (block*& head : l.heads) {
        while (block* b = head) {
          head = b->next;
          ::operator delete(static_cast<void*>(b));
        }
      }
      for (std::uint32_t& b : l.bytes)
        b = 0;
    }
  };

  // Not inlined: a coroutine that moved to another thread must not reuse a thread-local address
  // computed before the move (see current_loop in wait_node.hpp).
  [[gnu::noinline]] static lists& this_thread() noexcept {
    static thread_local lists l{};
    return l;
  }
  [[gnu::noinline]] static void open(lists& l) noexcept {
    static thread_local janitor j;
    (void)j;
    l.phase = mode::open;
  }
};

class alignas(__STDCPP_DEFAULT_NEW_ALIGNMENT__) frame_header {
 public:
  static constexpr std::uint16_t kDone = 1;             // the frame is gone (finished)
  static constexpr std::uint16_t kCancelRequested = 2;  // JoinHandle::cancel() was called

  // The header of a frame allocated by allocate() (every Task frame that reached the heap).
  static frame_header& of(void* frame_address) noexcept {
    return *reinterpret_cast<frame_header*>(static_cast<char*>(frame_address) -
                                            sizeof(frame_header));
  }

  static void* allocate(std::size_t frame_size) {
    const std::size_t bytes = frame_size + sizeof(frame_header);
    const std::uint32_t c = frame_cache::size_class(bytes);
    void* raw = c != 0 ? frame_cache::take(c) : ::operator new(bytes);
    return reinterpret_cast<char*>(new (raw) frame_header(c)) + sizeof(frame_header);
  }
  // The frame's own reference goes (its destructors have run).
  static void deallocate(void* frame_address) noexcept { of(frame_address).release(); }

  void retain() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  // The first handle of a frame nobody else sees yet (spawn): no atomic read-modify-write.
  void retain_unshared() noexcept { refs_.store(2, std::memory_order_relaxed); }
  void release() noexcept {
    // One reference left: nobody else holds the header, and nobody can take one any more.
    if (refs_.load(std::memory_order_acquire) == 1 ||
        refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      delete control_.load(std::memory_order_acquire);
      const std::uint32_t c = size_class_;
      this->~frame_header();
      if (c != 0) {
        frame_cache::give(this, c);
      } else {
        ::operator delete(static_cast<void*>(this));
      }
    }
  }
  // A JoinHandle lets go. `on_owner_loop`: the caller runs the loop that owns the frame, so
  // the frame cannot end, nor let go of its reference, concurrently (it does both only on that
  // thread). While the frame lives, two references are the frame's and this handle's: then no
  // other thread can touch the count, and no atomic read-modify-write is needed.
  void release_handle(bool on_owner_loop) noexcept {
    if (on_owner_loop && (flags_.load(std::memory_order_relaxed) & kDone) == 0 &&
        refs_.load(std::memory_order_relaxed) == 2) {
      refs_.store(1, std::memory_order_relaxed);
      return;
    }
    release();
  }
  bool has_other_references() const noexcept { return refs_.load(std::memory_order_acquire) > 1; }

  bool done() const noexcept { return (flags_.load(std::memory_order_seq_cst) & kDone) != 0; }
  bool cancel_requested() const noexcept {
    return (flags_.load(std::memory_order_acquire) & kCancelRequested) != 0;
  }

  join_control* control() const noexcept { return control_.load(std::memory_order_seq_cst); }
  join_control& control_or_create() {
    join_control* c = control();
    if (c != nullptr) return *c;
    auto* fresh = new join_control;
    if (control_.compare_exchange_strong(c, fresh, std::memory_order_seq_cst)) return *fresh;
    delete fresh;
    return *c;
  }

  // Any thread (JoinHandle::cancel): stop the task, unless it has already finished.
  void cancel() {
    const std::uint16_t before = flags_.fetch_or(kCancelRequested, std::memory_order_acq_rel);
    if ((before & kDone) == 0) control_or_create().source.request_stop();
  }

  // The frame is being destroyed (its task finished, or its scheduler went away): done() turns
  // true and every joiner resumes on its own loop.
  void finish() noexcept {
    if (refs_.load(std::memory_order_acquire) == 1) return;  // no handle: nobody can look
    flags_.fetch_or(kDone, std::memory_order_seq_cst);
    join_control* c = control();
    if (c == nullptr) return;
    std::lock_guard lock(c->mutex);
    while (join_waiter* w = c->head) {
      c->unlink(*w);
      w->outcome = wait_outcome::released;
      w->loop->resume_soon(w->handle);
    }
  }

 private:
  explicit frame_header(std::uint32_t size_class) noexcept : size_class_(size_class) {}

  std::atomic<std::uint32_t> refs_{1};  // the frame, plus one per JoinHandle
  std::atomic<std::uint16_t> flags_{0};
  std::uint16_t size_class_;  // frame_cache's class of the whole block, 0 if not cached
  std::atomic<join_control*> control_{nullptr};
};
static_assert(sizeof(frame_header) % __STDCPP_DEFAULT_NEW_ALIGNMENT__ == 0);

// The stop token a coroutine runs under, kept in coselect's promises (Task); other coroutine
// types have none (their awaits are never cancelled). One word: a token pointer (null: nothing
// can ever stop it), or, for a spawned task until its first cancellable await (or Task await,
// or get_stop_token), its frame_header with the low bit set: its own token is made then, and
// only if a JoinHandle that could stop it still exists. So a spawned task whose handle was
// dropped costs nothing, not even a stored awaiter. Only the coroutine's own execution reads
// or writes it.
class stop_token_holder {
 public:
  const std::stop_token* token() {
    if (is_own()) resolve_own();
    return static_cast<const std::stop_token*>(word_);
  }
  void set_token(const std::stop_token* t) noexcept { word_ = t; }
  void set_own_token(frame_header& header) noexcept {
    word_ = reinterpret_cast<const char*>(&header) + 1;  // odd: no token is at an odd address
  }

 private:
  static_assert(alignof(frame_header) > 1 && alignof(std::stop_token) > 1);

  bool is_own() const noexcept { return (reinterpret_cast<std::uintptr_t>(word_) & 1) != 0; }

  void resolve_own() {
    auto& header = const_cast<frame_header&>(
        *reinterpret_cast<const frame_header*>(static_cast<const char*>(word_) - 1));
    if (join_control* c = header.control()) {
      set_token(&c->token);
    } else if (header.has_other_references()) {
      set_token(&header.control_or_create().token);
    } else {
      set_token(nullptr);  // no handle left: none can appear any more
    }
  }

  const void* word_ = nullptr;
};

}  // namespace coselect::detail
