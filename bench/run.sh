#!/usr/bin/env bash
# Builds and runs every coselect benchmark side by side with its peers, then writes
# bench/results/*.json, the charts bench/results/*.svg and the tables in bench/RESULTS.md.
#
#   ./bench/run.sh                 # everything, 5 repetitions (about 15-20 minutes on 2 cores)
#   ./bench/run.sh --reps 3        # fewer repetitions
#   ./bench/run.sh --smoke         # a few seconds: tiny workloads, 1 repetition, results to a
#                                  # temporary directory (checks that everything runs)
#   ./bench/run.sh --filter REGEX  # only the Google Benchmark runs matching REGEX
#   ./bench/run.sh --wake-before REV  # also the wake-up latency with 2,000 fds open, built
#                                  # against REV's include/ and this tree's (wake_before_after.sh)
#
# Installs missing Debian packages first (set COSELECT_SKIP_DEPS=1 to skip), builds with the
# `bench` preset (g++ Release). Timings are never checked here: this is not a test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/ensure-deps.sh

reps=5
scale=1
filter=""
smoke=0
wake_before=""
while (($#)); do
  case $1 in
    --reps) reps=$2; shift 2 ;;
    --scale) scale=$2; shift 2 ;;
    --filter) filter=$2; shift 2 ;;
    --smoke) smoke=1; shift ;;
    --wake-before) wake_before=$2; shift 2 ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

# Building needs the peers; measuring also needs strace, /usr/bin/time, python3 and gnuplot.
deps=(cmake g++ ninja-build pkg-config libbenchmark-dev libasio-dev libuv1-dev)
((smoke)) || deps+=(python3 time strace gnuplot-nox)
ensure_deps "${deps[@]}"

# What is measured: the commit, and whether include/ had uncommitted changes when it was built.
revision=$(git describe --always --dirty 2>/dev/null || echo unknown)
include_changes=$(git status --porcelain -- include 2>/dev/null | wc -l)
cmake --preset bench
cmake --build --preset bench -j"$(build_jobs)"
bin=build/bench/bench

if ((smoke)); then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  for b in bench_wake bench_loop bench_timers bench_fd bench_echo; do
    "$bin/$b" --scale=0.001 --max_seconds=2 --benchmark_repetitions=1 ${filter:+--benchmark_filter="$filter"} \
      --benchmark_out="$out/$b.json" --benchmark_out_format=json
  done
  echo "smoke run OK (results discarded)"
  exit 0
fi

results=bench/results
mkdir -p "$results"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# The load average once a minute while the benchmarks run (bench/results/load.txt).
(while :; do echo "$(date -u +%H:%M) $(cut -d' ' -f1-3 /proc/loadavg)"; sleep 60; done) \
  >"$results/load.txt" &
load_sampler=$!
trap 'kill "$load_sampler" 2>/dev/null || true' EXIT

for b in bench_loop bench_timers bench_fd bench_echo bench_wake; do
  echo "==> $b"
  # Interleaved repetitions: a burst of load from the other users of this machine then hits
  # every peer of a comparison alike instead of all repetitions of one of them.
  "$bin/$b" --scale="$scale" --benchmark_repetitions="$reps" \
    --benchmark_enable_random_interleaving=true --benchmark_display_aggregates_only=true ${filter:+--benchmark_filter="$filter"} \
    --benchmark_out="$results/$b.json" --benchmark_out_format=json
done

if [[ -n $wake_before ]]; then
  echo "==> wake-up latency with 2,000 fds open: $wake_before against this tree"
  bench/wake_before_after.sh "$wake_before" --reps "$reps"
fi

if [[ -z $filter ]]; then
  echo "==> system calls per operation (strace)"
  python3 bench/syscall_probe.py --bin-dir "$bin" --out "$results/syscalls.json"
  echo "==> compile cost"
  python3 bench/compile_cost.py --reps "$reps" --headers --out "$results/compile.json"
fi

python3 - "$results/machine.json" "$load_before" "$reps" "$scale" "$revision" "$include_changes" \
  <<'PY'
import json, platform, re, subprocess, sys, datetime
out, load_before, reps, scale, revision, include_changes = sys.argv[1:]
def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"
lscpu = sh("lscpu")
field = lambda k: (re.search(rf"^{k}:\s*(.+)$", lscpu, re.M) or [None, "?"])[1]
asio = re.search(r"ASIO_VERSION (\d+)", open("/usr/include/asio/version.hpp").read()).group(1)
asio = f"{int(asio) // 100000}.{int(asio) // 100 % 1000}.{int(asio) % 100}"
json.dump({
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "cpu": field("Model name"), "cores": field("CPU\\(s\\)"),
    "threads_per_core": field("Thread\\(s\\) per core"), "kernel": platform.release(),
    "compiler": sh("g++", "--version").splitlines()[0],
    "asio": asio, "libuv": sh("pkg-config", "--modversion", "libuv"),
    "benchmark": sh("dpkg-query", "-W", "-f=${Version}", "libbenchmark-dev"),
    "load_before": load_before, "load_after": " ".join(open("/proc/loadavg").read().split()[:3]),
    "reps": int(reps), "scale": float(scale),
    "revision": revision, "include_changes": int(include_changes),
}, open(out, "w"), indent=2)
PY

python3 bench/report.py
