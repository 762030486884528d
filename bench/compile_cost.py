#!/usr/bin/env python3
"""Compile cost: wall time, CPU time and peak memory of `g++ -std=c++20 -O2` building the hello
world (a coroutine awaits an event that another thread sets) on coselect, on standalone Asio, and
by hand on bare POSIX (the floor); also a program that only includes the standard and POSIX
headers coselect uses ("std"), and, with --headers, one row per public header
(`#include <coselect/X.hpp>` and an empty main: what including that header alone costs).

Each probe is compiled and linked --reps times under /usr/bin/time -v, round-robin so that a
burst of load hits every probe alike. Writes Google-Benchmark-like JSON (one entry per run).
--include and --prefix measure another include/ tree (bench/before_after.sh uses them).
"""
import argparse
import json
import os
import re
import subprocess
import tempfile

PROBES = ["posix", "std", "coselect", "asio"]


def measure(cxx, source, include, out):
    cmd = ["/usr/bin/time", "-v", cxx, "-std=c++20", "-O2", "-pthread", "-I", include, source,
           "-o", out]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"compile failed: {' '.join(cmd)}\n{res.stderr}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", res.stderr).group(1)
    seconds = 0.0
    for part in wall.split(":"):
        seconds = seconds * 60 + float(part)
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    user = float(re.search(r"User time \(seconds\): (\S+)", res.stderr).group(1))
    sys_ = float(re.search(r"System time \(seconds\): (\S+)", res.stderr).group(1))
    return seconds, user + sys_, rss_kib


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cxx", default="g++")
    ap.add_argument("--include", help="the include/ tree to measure (default: this tree's)")
    ap.add_argument("--prefix", default="", help="prefix for the result names, e.g. 'before/'")
    ap.add_argument("--headers", action="store_true", help="also one row per public header")
    args = ap.parse_args()

    here = os.path.dirname(os.path.abspath(__file__))
    include = args.include or os.path.join(os.path.dirname(here), "include")
    version = subprocess.run([args.cxx, "--version"], capture_output=True,
                             text=True).stdout.splitlines()[0]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = {f"compile/{p}": os.path.join(here, "compile", f"hello_{p}.cpp") for p in PROBES}
        if args.headers:
            for header in sorted(os.listdir(os.path.join(include, "coselect"))):
                if not header.endswith(".hpp") or header == "testing.hpp":  # needs GoogleTest
                    continue
                src = os.path.join(tmp, f"header_{header}.cpp")
                with open(src, "w") as f:
                    f.write(f"#include <coselect/{header}>\nint main() {{ return 0; }}\n")
                sources[f"compile/header/{header}"] = src
        for rep in range(args.reps):
            for probe, src in sources.items():
                wall, cpu, rss = measure(args.cxx, src, include, os.path.join(tmp, "a.out"))
                name = args.prefix + probe
                print(f"{name}: {wall:.2f} s wall, {cpu:.2f} s cpu, {rss / 1024:.0f} MiB")
                runs.append({
                    "name": name,
                    "run_name": name,
                    "run_type": "iteration",
                    "repetition_index": rep,
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "peak_rss_MiB": rss / 1024.0,
                })
    with open(args.out, "w") as f:
        json.dump({"context": {"compiler": version,
                               "command": f"{args.cxx} -std=c++20 -O2 -pthread hello_*.cpp"},
                   "benchmarks": runs}, f, indent=2)


if __name__ == "__main__":
    main()
