#!/usr/bin/env bash
# Issue 13's table, before and after a change to include/, from one run: builds the benchmarks
# that measure it (bench_loop, bench_timers, bench_wake, bench_fd) twice with the same compiler
# and flags, once against the include/ of REV (checked out in a temporary git worktree, removed
# afterwards) and once against this tree's, runs them alternately (before, after, before, ...)
# so that both sides see the same machine load, and measures the compile cost of both trees the
# same way. Writes bench/results/before_after.json (names prefixed "before/" and "after/") and
# prints the table (bench/report.py --before-after renders it again from the JSON).
#
#   ./bench/before_after.sh [REV] [--reps N] [--max-seconds S] [--compile-reps N]
#                           [--binaries "bench_loop bench_fd"]
#                                  (REV: default da37d82, main before the performance round)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/ensure-deps.sh
ensure_deps g++ libbenchmark-dev libasio-dev libuv1-dev python3 time

rev=da37d82
reps=3
max_seconds=3
compile_reps=3
while (($#)); do
  case $1 in
    --reps) reps=$2; shift 2 ;;
    --max-seconds) max_seconds=$2; shift 2 ;;
    --compile-reps) compile_reps=$2; shift 2 ;;
    --binaries) read -r -a chosen <<<"$2"; shift 2 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) rev=$1; shift ;;
  esac
done

tmp=$(mktemp -d)
old_tree="$tmp/old"
cleanup() {
  git worktree remove --force "$old_tree" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
git worktree add --detach --quiet "$old_tree" "$rev"
after_rev=$(git describe --always --dirty)

flags=(-std=c++20 -O3 -DNDEBUG -DASIO_STANDALONE -DASIO_NO_DEPRECATED -pthread)
# (binary, extra sources, benchmark filter): the rows of issue 13's table and their peers.
declare -A extra=([bench_loop]=bench/alloc_counter.cpp [bench_timers]=bench/alloc_counter.cpp
  [bench_wake]="" [bench_fd]="")
declare -A filter=(
  [bench_loop]='^(handoff|broadcast|spawn|post_local|post_remote)/'
  [bench_timers]='^timers/(coselect_call_later|coselect_sleep_for|asio_steady_timer|asio_awaitable_timer|floor_priority_queue)'
  [bench_wake]='^wake/(coselect|floor_pipe_select|asio_post)/pinned'
  [bench_fd]='^fd/(coselect_epoll|coselect_select|floor_epoll|floor_select)/idle:(10|1000)(/|$)')
binaries=(bench_loop bench_timers bench_wake bench_fd)
if [[ -v chosen ]]; then binaries=("${chosen[@]}"); fi

build() {  # build SIDE INCLUDE_DIR BINARY
  # shellcheck disable=SC2086
  g++ "${flags[@]}" -I"$2" -Ibench "bench/$3.cpp" bench/common.cpp ${extra[$3]} \
    -o "$tmp/$1.$3" -lbenchmark -luv
}
echo "==> building the benchmarks against $rev and against $after_rev"
for b in "${binaries[@]}"; do
  build before "$old_tree/include" "$b" &
  build after include "$b" &
  wait %1 && wait %2
done

for ((i = 0; i < reps; ++i)); do
  for b in "${binaries[@]}"; do
    for side in before after; do
      echo "==> $side, $b, repetition $((i + 1)) of $reps"
      "$tmp/$side.$b" --max_seconds="$max_seconds" --benchmark_filter="${filter[$b]}" \
        --benchmark_out="$tmp/$side.$b.$i.json" --benchmark_out_format=json >/dev/null
    done
  done
done

echo "==> compile cost"
if ((compile_reps > 0)); then
  python3 bench/compile_cost.py --reps "$compile_reps" --include "$old_tree/include" \
    --prefix before/ --out "$tmp/before.compile.json"
  python3 bench/compile_cost.py --reps "$compile_reps" --prefix after/ \
    --out "$tmp/after.compile.json"
fi

python3 - "$tmp" "$reps" "$rev" "$after_rev" bench/results/before_after.json \
  "${binaries[@]}" <<'PY'
import json, os, sys
tmp, reps, before, after, out, *binaries = sys.argv[1:]
merged = {"context": {"before": before, "after": after,
                      "load_average": os.getloadavg()}, "benchmarks": []}
for i in range(int(reps)):
    for b in binaries:
        for side in ("before", "after"):
            data = json.load(open(f"{tmp}/{side}.{b}.{i}.json"))
            if "host_name" not in merged["context"]:
                merged["context"].update(data["context"])
            for r in data["benchmarks"]:
                for key in ("name", "run_name"):
                    r[key] = f"{side}/{r[key]}"
                merged["benchmarks"].append(r)
for side in ("before", "after"):
    if os.path.exists(f"{tmp}/{side}.compile.json"):
        merged["benchmarks"] += json.load(open(f"{tmp}/{side}.compile.json"))["benchmarks"]
json.dump(merged, open(out, "w"), indent=1)
print(f"wrote {out}")
PY
python3 bench/report.py --before-after bench/results/before_after.json
