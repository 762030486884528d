#!/usr/bin/env python3
"""Counts the system calls one operation of a benchmark makes, with strace -f -c: the
benchmark runs at two workload scales and the difference of the counts is divided by the
difference of the operation counts, so start-up and set-up calls cancel out."""
import argparse
import json
import os
import re
import subprocess
import tempfile

# (binary, benchmark name prefix)
PROBES = [
    ("bench_loop", "handoff/coselect_event"),
    ("bench_loop", "await_set/coselect_event"),
    ("bench_loop", "post_local/coselect_call_soon"),
    ("bench_loop", "broadcast/coselect_event"),
    ("bench_loop", "spawn/coselect"),
    ("bench_loop", "handoff/asio_channel"),
    ("bench_loop", "handoff/asio_timer_cancel"),
    ("bench_loop", "post_local/asio_post"),
]


def run(binary, name, scale, tmp):
    out = os.path.join(tmp, "out.json")
    trace = os.path.join(tmp, "strace.txt")
    cmd = ["strace", "-f", "-c", "-o", trace, binary, f"--benchmark_filter=^{re.escape(name)}/",
           f"--scale={scale}", "--benchmark_repetitions=1", f"--benchmark_out={out}",
           "--benchmark_out_format=json"]
    subprocess.run(cmd, check=True, capture_output=True)
    calls = {}
    with open(trace) as f:
        for line in f:
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
            if m and m.group(2) != "total":
                calls[m.group(2)] = int(m.group(1))
    with open(out) as f:
        ops = next(b["ops"] for b in json.load(f)["benchmarks"] if b.get("run_type") == "iteration")
    return calls, ops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for binary, name in PROBES:
            path = os.path.join(args.bin_dir, binary)
            small, small_ops = run(path, name, 0.01, tmp)
            large, large_ops = run(path, name, 0.1, tmp)
            per_op = {}
            for sc in sorted(set(small) | set(large)):
                d = (large.get(sc, 0) - small.get(sc, 0)) / (large_ops - small_ops)
                if abs(d) >= 0.001:
                    per_op[sc] = round(d, 3)
            total = round(sum(per_op.values()), 3)
            print(f"{name}: {total} system calls per op {per_op}")
            results.append({"name": name, "syscalls_per_op": total, "by_call": per_op})
    with open(args.out, "w") as f:
        json.dump({"benchmarks": results}, f, indent=2)


if __name__ == "__main__":
    main()
