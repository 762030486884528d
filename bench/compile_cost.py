#!/usr/bin/env python3
"""Compile cost: wall time and peak memory of `g++ -std=c++20 -O2` building a hello world that
includes <coselect.hpp>, <asio.hpp>, or only the standard and POSIX headers coselect uses.

Each probe is compiled and linked --reps times under /usr/bin/time -v, round-robin so that a
burst of load hits every probe alike. Writes Google-Benchmark-like JSON (one entry per run).
"""
import argparse
import json
import os
import re
import subprocess
import tempfile

PROBES = ["std", "coselect", "asio"]


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
    args = ap.parse_args()

    here = os.path.dirname(os.path.abspath(__file__))
    include = os.path.join(os.path.dirname(here), "include")
    version = subprocess.run([args.cxx, "--version"], capture_output=True,
                             text=True).stdout.splitlines()[0]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for probe in PROBES:
                src = os.path.join(here, "compile", f"hello_{probe}.cpp")
                wall, cpu, rss = measure(args.cxx, src, include, os.path.join(tmp, probe))
                print(f"compile/{probe}: {wall:.2f} s wall, {cpu:.2f} s cpu, {rss / 1024:.0f} MiB")
                runs.append({
                    "name": f"compile/{probe}",
                    "run_name": f"compile/{probe}",
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
