#!/usr/bin/env bash
# Conversion throughput of `regfs convert` (release) vs the reference Go `esgz-oracle build` on
# the same real tar, same gzip level (9) and chunk size (4 MiB); RUNS runs each, median wall time.
# Both get the whole 2-core machine (Go: GOMAXPROCS=2). Prints a markdown table for BENCHMARKS.md.
# usage: bench/convert.sh   (needs target/peers/bin/esgz-oracle or ESGZ_ORACLE; REGFS=path skips the build)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
W=$(mktemp -d /tmp/regfs-bench-convert.XXXXXX); trap 'rm -rf "$W"' EXIT
if [ -z "${REGFS:-}" ]; then cargo build --release -p regfs >&2; REGFS=${CARGO_TARGET_DIR:-target}/release/regfs; fi
ORACLE=${ESGZ_ORACLE:-${CARGO_TARGET_DIR:-target}/peers/bin/esgz-oracle}
[ -x "$ORACLE" ] || { echo "no esgz-oracle at $ORACLE: run cargo test -p regfs --test format_cli once, or set ESGZ_ORACLE" >&2; exit 1; }
# A real tree: Python's stdlib (text + .so), sbin and libexec binaries (~120 MB).
tar -cf "$W/in.tar" -C / usr/lib/python3.11 usr/sbin usr/libexec 2>/dev/null || [ $? -eq 1 ]
IN=$(stat -c %s "$W/in.tar")
echo "input: $IN bytes ($(tar -tf "$W/in.tar" | wc -l) entries), $(nproc) cores, $RUNS runs each" >&2
echo "| converter | gzip level | chunk | median wall s | MB/s (input) | blob bytes | blob/input |"
echo "|---|---|---|---|---|---|---|"
measure() { # label out cmd... ; run RUNS times, print one table row
  local label=$1 out=$2; shift 2; local ts=()
  for _ in $(seq "$RUNS"); do
    rm -f "$out"; local s; s=$(date +%s%N); "$@" >/dev/null; ts+=($(( $(date +%s%N) - s )))
  done
  local med; med=$(printf '%s\n' "${ts[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")
  local sz; sz=$(stat -c %s "$out")
  awk -v l="$label" -v m="$med" -v i="$IN" -v s="$sz" 'BEGIN {
    printf "| %s | %.2f | %.1f | %d | %.3f |\n", l, m / 1e9, i / 1e6 / (m / 1e9), s, s / i }'
  echo "$label: runs (ns) ${ts[*]}" >&2
}
measure "regfs convert | 9 | 4 MiB" "$W/r9.esgz" "$REGFS" convert "$W/in.tar" "$W/r9.esgz" --level 9 --chunk-size 4194304
measure "esgz-oracle build (GOMAXPROCS=2) | 9 | 4 MiB" "$W/go.esgz" \
  env GOMAXPROCS=2 "$ORACLE" build "$W/in.tar" "$W/go.esgz" --level 9 --chunk-size 4194304
measure "regfs convert (default level) | default | 4 MiB" "$W/rd.esgz" "$REGFS" convert "$W/in.tar" "$W/rd.esgz"
"$ORACLE" verify "$W/r9.esgz" >/dev/null && echo "esgz-oracle verify of the regfs blob: ok" >&2
