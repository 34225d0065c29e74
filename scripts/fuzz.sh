#!/usr/bin/env bash
# Run every fuzz target (or the ones named) for a bounded time each, one
# after another, with cargo-fuzz (libFuzzer, AddressSanitizer).
#
#   scripts/fuzz.sh [seconds-per-target] [target...]     default: 60 s, all
#
# Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
#
# The checked-in seeds in fuzz/corpus/<target>/ are read, never written: what
# the fuzzer finds goes to fuzz/corpus-local/<target>/ (kept between runs,
# not checked in). A crash stops the run of its target and leaves the input
# in fuzz/artifacts/<target>/; minimise it with
#   cargo +nightly fuzz tmin <target> fuzz/artifacts/<target>/crash-...
# and copy the result into fuzz/corpus/<target>/ as regression-<what>, so
# `cargo test -p postern-fuzz` replays it on stable from then on.
#
# At the end it prints, per target, the seconds run, the executions and
# whether it crashed; the exit status is non-zero if any target crashed.
# The CI does not run this (it is slow and needs nightly); it runs the
# corpus replay in `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-60}
shift || true
case "$seconds" in
  ''|*[!0-9]*) echo "usage: $0 [seconds-per-target] [target...]" >&2; exit 2 ;;
esac
all_targets=(command data_receiver bdat_receiver reply_parse settings node_config pem_import session dns_derived spool_file mta_sts)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "needs nightly and cargo-fuzz: rustup toolchain install nightly && cargo install cargo-fuzz" >&2
  exit 2
fi

# One build for all targets; at most two compiler jobs (shared machines).
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} cargo +nightly fuzz build -O

mkdir -p logs
failed=0
summary=()
for target in "${targets[@]}"; do
  mkdir -p "corpus-local/$target" "corpus/$target" "artifacts/$target"
  log="logs/$target.log"
  echo "== $target: ${seconds}s"
  start=$(date +%s)
  status=0
  # -timeout: one input taking longer than 10 s is a hang (reported as a crash).
  # -rss_limit_mb: an input making the process grow past 2 GiB is a bug too.
  # timeout(1): a hard stop in case libFuzzer itself does not end.
  timeout --signal=INT --kill-after=30 $((seconds + 120)) \
    cargo +nightly fuzz run -O "$target" "corpus-local/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1 || status=$?
  elapsed=$(( $(date +%s) - start ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
  if [ "$status" -ne 0 ]; then
    failed=1
    summary+=("$target: CRASH after ${elapsed}s (see fuzz/$log and fuzz/artifacts/$target/)")
    grep -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)|^Test unit written' "$log" | head -5 || true
  else
    summary+=("$target: ${elapsed}s, ${execs:-?} executions, no crash")
  fi
done

echo
echo "== summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
