#!/usr/bin/env bash
# Cross-thread wake-up latency with many fds open, before and after a change to include/: builds
# bench/bench_wake.cpp twice with the same compiler and flags, once against the include/ of REV
# (checked out in a temporary git worktree, removed afterwards) and once against this tree's,
# then runs their wake/coselect*_fds cases alternately (old, new, old, new, ...) so that both see
# the same machine load. Writes bench/results/wake_fds.json (the runs, names prefixed with
# "before/" and "after/"); bench/report.py turns it into a table.
#
#   ./bench/wake_before_after.sh [REV] [--reps N] [--max-seconds S]   (REV: default 5fb97ad,
#                                  the last commit with the 10 ms nap for event pipes >= 1024)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rev=5fb97ad
reps=3
max_seconds=5
while (($#)); do
  case $1 in
    --reps) reps=$2; shift 2 ;;
    --max-seconds) max_seconds=$2; shift 2 ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
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

flags=(-std=c++20 -O3 -DNDEBUG -DASIO_STANDALONE -DASIO_NO_DEPRECATED -Wall -Wextra -Wpedantic
  -Werror -pthread)
build() {  # build OUT INCLUDE_DIR
  g++ "${flags[@]}" -I"$2" -Ibench bench/bench_wake.cpp bench/common.cpp -o "$1" \
    -lbenchmark -luv
}
echo "==> building bench_wake against $rev and against $(git describe --always --dirty)"
build "$tmp/wake_before" "$old_tree/include" &
build "$tmp/wake_after" include &
wait %1 && wait %2

filter='wake/coselect.*_fds'
for ((i = 0; i < reps; ++i)); do
  for side in before after; do
    echo "==> $side, repetition $((i + 1)) of $reps"
    "$tmp/wake_$side" --max_seconds="$max_seconds" --benchmark_filter="$filter" \
      --benchmark_out="$tmp/$side.$i.json" --benchmark_out_format=json
  done
done

python3 - "$tmp" "$reps" "$rev" "$(git describe --always --dirty)" \
  bench/results/wake_fds.json <<'PY'
import json, sys
tmp, reps, before, after, out = sys.argv[1:]
merged = {"context": {"before": before, "after": after}, "benchmarks": []}
for i in range(int(reps)):
    for side in ("before", "after"):
        data = json.load(open(f"{tmp}/{side}.{i}.json"))
        if i == 0 and side == "before":
            merged["context"].update(data["context"])
        for b in data["benchmarks"]:
            for key in ("name", "run_name"):
                b[key] = f"{side}/{b[key]}"
            merged["benchmarks"].append(b)
json.dump(merged, open(out, "w"), indent=1)
print(f"wrote {out}")
PY
