#!/usr/bin/env python3
"""Writes the hand-made seed corpus of event_model_fuzzer into fuzz/corpus/.

Each seed is a readable program: a clock ("real" or "virtual") and a list of ops with their
argument bytes, in the encoding event_model_fuzzer.cpp documents (enum Op; keep OPS in step).
Run it after changing the seeds: `python3 fuzz/make_corpus.py`. Files found by the fuzzer
(crash reproducers kept as regressions) live in the same directory under other names; this
script only (re)writes the seed-*.bin files.
"""
import os
import sys

OPS = [
    "set", "clear", "pulse", "export", "driver_wait",
    "helper_set", "helper_clear", "helper_pulse", "helper_wait",
    "co_wait", "loop_set", "loop_pulse", "sleep",
    "run", "stop", "helper_stop",
    "call_soon", "call_later", "call_throw", "suspend", "resume",
    "loop_suspend", "loop_resume", "helper_suspend", "helper_resume",
    "helper_call_soon", "helper_call_later",
    "handoff", "run_in_thread",
    "destroy_event", "create_event", "recreate_scheduler", "sync", "run_wake",
    "cancel",
]
CODE = {op: i for i, op in enumerate(OPS)}
ARGS = {  # argument bytes each op reads
    "set": 1, "clear": 1, "pulse": 1, "export": 1, "driver_wait": 2,
    "helper_set": 2, "helper_clear": 2, "helper_pulse": 2, "helper_wait": 3,
    "co_wait": 2, "loop_set": 1, "loop_pulse": 1, "sleep": 1,
    "run": 1, "stop": 0, "helper_stop": 1,
    "call_soon": 1, "call_later": 2, "call_throw": 0, "suspend": 1, "resume": 1,
    "loop_suspend": 1, "loop_resume": 1, "helper_suspend": 2, "helper_resume": 2,
    "helper_call_soon": 1, "helper_call_later": 2,
    "handoff": 1, "run_in_thread": 1,
    "destroy_event": 1, "create_event": 1, "recreate_scheduler": 0, "sync": 0, "run_wake": 3,
    "cancel": 1,
}
MAX_OPS = 128

# Argument conventions: slot 0-2, helper 0-1, handle 0-3; "code" picks a duration (0-3: the
# tables in the harness; co_wait code 4 = untimed; helper_wait code 3 = untimed; +0x80 turns
# a zero timeout into a negative one).
UNTIMED_CO = 4
UNTIMED_BLOCKING = 3

SEEDS = {
    # set/clear/pulse and the pipe at rest, with fileno() handed out.
    "seed-01-set-clear-export": ("real", [
        ("export", 0), ("set", 0), ("sync",), ("clear", 0), ("pulse", 0), ("set", 1),
        ("export", 1), ("clear", 1), ("set", 1), ("driver_wait", 1, 0), ("driver_wait", 2, 1)]),
    # Coroutine waiters released by a pulse between runs (the pulse rule).
    "seed-02-co-pulse": ("real", [
        ("co_wait", 0, UNTIMED_CO), ("co_wait", 0, 3), ("run", 0), ("pulse", 0), ("run", 1),
        ("co_wait", 1, UNTIMED_CO), ("run", 0), ("set", 1), ("clear", 1), ("run", 0)]),
    # A blocked helper thread released by a pulse from the fuzzing thread.
    "seed-03-blocking-pulse": ("real", [
        ("helper_wait", 0, 0, UNTIMED_BLOCKING), ("pulse", 0), ("sync",),
        ("helper_wait", 1, 2, UNTIMED_BLOCKING), ("helper_pulse", 0, 2), ("sync",)]),
    # Helpers pulse while the loop sleeps in select() with coroutine waiters.
    "seed-04-helper-pulse-while-selecting": ("real", [
        ("co_wait", 0, UNTIMED_CO), ("co_wait", 1, 2), ("run", 0), ("helper_pulse", 0, 0),
        ("helper_pulse", 1, 1), ("run", 3), ("sync",), ("run", 2), ("helper_set", 1, 0),
        ("run", 3)]),
    # Virtual-time timeouts racing sets.
    "seed-05-virtual-timeouts": ("virtual", [
        ("co_wait", 0, 1), ("co_wait", 0, 2), ("co_wait", 0, 3), ("sleep", 2), ("run", 1),
        ("set", 0), ("run", 0), ("co_wait", 1, 0x80), ("run", 2), ("run", 3)]),
    # call_soon/call_later with suspend/resume from the thread, the loop and helpers.
    "seed-06-tasks": ("virtual", [
        ("call_later", 0, 2), ("call_soon", 1), ("call_later", 2, 3), ("suspend", 0),
        ("loop_suspend", 2), ("run", 1), ("resume", 0), ("helper_resume", 1, 2), ("sync",),
        ("run", 3), ("resume", 1), ("run", 0)]),
    # Posts from helper threads, and a throwing callback.
    "seed-07-helper-posts-and-throw": ("real", [
        ("helper_call_soon", 0), ("helper_call_later", 1, 1), ("call_throw",), ("call_soon", 0),
        ("run", 1), ("helper_call_soon", 1), ("run", 2), ("sync",), ("run", 0)]),
    # stop() from the thread and from a helper.
    "seed-08-stop": ("real", [
        ("co_wait", 0, UNTIMED_CO), ("stop",), ("run", 2), ("set", 0), ("helper_stop", 1),
        ("run", 1), ("sync",), ("run", 0), ("run", 0)]),
    # Destroying an event with waiters, after a set(), and re-creating it.
    "seed-09-destroy-event": ("real", [
        ("co_wait", 0, UNTIMED_CO), ("co_wait", 0, 3), ("run", 0), ("destroy_event", 0),
        ("run", 0), ("create_event", 0), ("co_wait", 0, UNTIMED_CO), ("run", 0), ("set", 0),
        ("destroy_event", 0), ("run", 0), ("create_event", 0)]),
    # Destroying the scheduler with frames, tasks and hand-offs in flight.
    "seed-10-recreate-scheduler": ("virtual", [
        ("co_wait", 1, UNTIMED_CO), ("call_later", 0, 3), ("handoff", 0), ("run", 0),
        ("recreate_scheduler",), ("co_wait", 1, 2), ("call_soon", 1), ("run", 2)]),
    # run_in_thread jobs, one failing, and hand-offs to helpers.
    "seed-11-threads": ("virtual", [
        ("run_in_thread", 4), ("run_in_thread", 7), ("handoff", 1), ("handoff", 0), ("run", 1),
        ("sync",), ("run", 0)]),
    # set() from coroutines on the loop while others wait.
    "seed-12-loop-set": ("real", [
        ("co_wait", 2, UNTIMED_CO), ("co_wait", 2, 3), ("loop_pulse", 2), ("run", 0),
        ("co_wait", 2, UNTIMED_CO), ("run", 0), ("loop_set", 2), ("run", 0), ("loop_pulse", 1)]),
    # run() with no limit, woken only by a helper's set() (no deadline, no other work).
    "seed-13-run-wake": ("real", [
        ("run_wake", 0, 1, 0), ("co_wait", 1, UNTIMED_CO), ("run_wake", 1, 2, 1), ("set", 1),
        ("run_wake", 0, 0, 2), ("run_wake", 1, 1, 3)]),
    "seed-14-run-wake-virtual": ("virtual", [
        ("call_later", 0, 3), ("run_wake", 1, 0, 1), ("export", 2), ("run_wake", 0, 2, 2)]),
    # suspend()/resume() of tasks taken for the same batch, from a callback that runs first.
    "seed-15-suspend-in-batch": ("virtual", [
        ("loop_suspend", 0), ("loop_resume", 1), ("call_soon", 0), ("call_soon", 1),
        ("call_later", 2, 1), ("loop_suspend", 2), ("run", 0), ("resume", 0), ("suspend", 1),
        ("resume", 1), ("run", 2)]),
    # JoinHandle::cancel(): before a waiter starts, while it waits, racing a set(), after it
    # ended, and from a helper thread.
    "seed-16-cancel-virtual": ("virtual", [
        ("co_wait", 0, UNTIMED_CO), ("cancel", 0), ("co_wait", 1, 1), ("sleep", 3), ("run", 0),
        ("cancel", 2), ("cancel", 4), ("run", 0), ("set", 1), ("cancel", 2), ("run", 1),
        ("cancel", 3), ("sync",), ("run", 3)]),
    "seed-17-cancel-real": ("real", [
        ("co_wait", 2, UNTIMED_CO), ("sleep", 2), ("run", 0), ("cancel", 1), ("cancel", 3),
        ("helper_set", 0, 2), ("run", 1), ("co_wait", 0, 1), ("run", 0), ("cancel", 4),
        ("sync",), ("run", 2)]),
}


def encode(clock, ops):
    out = bytearray([1 if clock == "virtual" else 0])
    for op in ops:
        out.append(CODE[op[0]])
        out.extend(op[1:])
    return bytes(out)


def decode(data):
    """The readable form of an input (for crash reports): `make_corpus.py --decode FILE`."""
    if not data:
        return "(empty input: nothing runs)"
    lines = ["virtual" if data[0] & 1 else "real"]
    pos = 1
    while pos < len(data) and len(lines) <= MAX_OPS:
        op = OPS[data[pos] % len(OPS)]
        pos += 1
        args = [data[pos + i] if pos + i < len(data) else 0 for i in range(ARGS[op])]
        pos += ARGS[op]
        lines.append(f"  {op} {' '.join(str(a) for a in args)}".rstrip())
    return "\n".join(lines)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--decode":
        with open(sys.argv[2], "rb") as f:
            print(decode(f.read()))
        return
    here = os.path.dirname(os.path.abspath(__file__))
    corpus = os.path.join(here, "corpus")
    os.makedirs(corpus, exist_ok=True)
    for name, (clock, ops) in SEEDS.items():
        with open(os.path.join(corpus, name + ".bin"), "wb") as f:
            f.write(encode(clock, ops))
    print(f"wrote {len(SEEDS)} seeds to {corpus}")


if __name__ == "__main__":
    main()
