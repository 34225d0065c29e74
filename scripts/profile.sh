#!/usr/bin/env bash
# Profile Postern during one bench case and render a flame graph (SVG).
#
#   scripts/profile.sh CASE OUT.svg [SECONDS] [POSTERN_BIN]
#
# Runs `scripts/bench.py --no-postfix --no-idle --only CASE` (Postern alone,
# the same set-up as the side-by-side bench), waits for its warm-up, records
# the Postern process with `perf record --call-graph dwarf` for SECONDS
# (default 15), then stops the bench and folds the stacks with inferno
# (`cargo install inferno`). Needs root (perf on a process running as
# nobody) and a release build (`debug = "line-tables-only"` gives the
# symbols; DWARF unwinding needs no frame pointers).
set -euo pipefail

case_name=${1:?usage: profile.sh CASE OUT.svg [SECONDS] [POSTERN_BIN]}
out=${2:?usage: profile.sh CASE OUT.svg [SECONDS] [POSTERN_BIN]}
seconds=${3:-15}
repo=$(cd "$(dirname "$0")/.." && pwd)
postern=${4:-$repo/target/release/postern}
bench=$repo/target/release/postern-bench
for tool in perf inferno-collapse-perf inferno-flamegraph; do
    command -v "$tool" >/dev/null || { echo "profile.sh: $tool not found (perf: linux-perf; inferno: cargo install inferno)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/postern-profile-XXXXXX)
log=$work/bench.log
# Enough rounds to outlast the recording; stopped with SIGINT below (job
# control on, so the background job does not ignore SIGINT and bench.py
# stops its MTAs and sink on the way out).
set -m
python3 "$repo/scripts/bench.py" --postern-bin "$postern" --bench-bin "$bench" \
    --no-postfix --no-idle --only "$case_name" --rounds 200 --out "$work" 2>"$log" >/dev/null &
bench_pid=$!
trap 'kill -INT $bench_pid 2>/dev/null || true' EXIT

for _ in $(seq 1 600); do
    grep -q 'warm-up done' "$log" && break
    kill -0 $bench_pid 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.2
done
pid=$(sed -n 's/.*started: postern pid \([0-9]*\).*/\1/p' "$log" | head -1)
[ -n "$pid" ] || { echo "profile.sh: no Postern pid in the bench log" >&2; cat "$log" >&2; exit 1; }
echo "profiling Postern pid $pid during $case_name for ${seconds}s (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2

perf record -F 499 --call-graph dwarf,32768 -p "$pid" -o "$work/perf.data" -- sleep "$seconds" 2>"$work/perf.log"
kill -INT $bench_pid 2>/dev/null || true
wait $bench_pid 2>/dev/null || true
trap - EXIT
grep 'round' "$log" | tail -3 >&2 || true

perf script -i "$work/perf.data" 2>/dev/null \
    | inferno-collapse-perf --all > "$work/folded.txt"
inferno-flamegraph --title "Postern: $case_name (perf, $(date -u +%Y-%m-%d))" --minwidth 0.25 \
    < "$work/folded.txt" > "$out"

echo "wrote $out ($(wc -l < "$work/folded.txt") stacks); work dir $work" >&2
