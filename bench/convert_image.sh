#!/usr/bin/env bash
# Image conversion: `regfs convert-image` (release) vs `ctr-remote image convert --estargz --oci`
# on the testbed's python image (3 layers), RUNS runs each, medians. regfs goes registry →
# registry in one command (fetch + convert + push); ctr-remote needs the image in containerd's
# content store, so it is timed as cold pull + convert + push (its own namespace, isolated content
# sharing: every pull is cold), and its convert step is also given alone. Both at gzip level 9
# (ctr-remote's default) and 4 MiB chunks; each run pushes to a fresh repository.
# Then what `regfs inspect --toc` spends on each converted image (regfs's has the toc-offset hint).
# usage: bench/convert_image.sh   (needs /work/shared/testbed up: registry :5000 with python, containerd)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}; REG=${REG:-127.0.0.1:5000}; IMG=${IMG:-python:latest}; NAME=${IMG%%:*}
CR=(ctr-remote --address "${CTRD_SOCK:-/tmp/testbed/containerd/containerd.sock}" --namespace regfs-bench-convert)
cargo build --release -p regfs >&2
REGFS=${CARGO_TARGET_DIR:-target}/release/regfs
ms() { date +%s%3N; }
med() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
clean() {
  for i in $("${CR[@]}" images ls -q); do "${CR[@]}" images rm --sync "$i" >/dev/null; done
  "${CR[@]}" content ls -q | while read -r d; do "${CR[@]}" content rm "$d" >/dev/null 2>&1 || true; done
}
TAG=$(date +%s); r=(); p=(); c=(); u=(); t=()
for n in $(seq "$RUNS"); do
  s=$(ms); "$REGFS" convert-image --level 9 "$REG/$IMG" "$REG/bench-regfs-$TAG-$n/$NAME:esgz" >/dev/null
  r+=($(( $(ms) - s ))); clean
  s=$(ms); "${CR[@]}" images pull --plain-http "$REG/$IMG" >/dev/null; p+=($(( $(ms) - s )))
  s=$(ms); "${CR[@]}" images convert --estargz --oci "$REG/$IMG" "$REG/bench-ctr-$TAG-$n/$NAME:esgz" >/dev/null
  c+=($(( $(ms) - s )))
  s=$(ms); "${CR[@]}" images push --plain-http "$REG/bench-ctr-$TAG-$n/$NAME:esgz" >/dev/null; u+=($(( $(ms) - s )))
  t+=($(( p[-1] + c[-1] + u[-1] )))
  echo "run $n: regfs ${r[-1]} ms; ctr-remote pull ${p[-1]} + convert ${c[-1]} + push ${u[-1]} = ${t[-1]} ms" >&2
done
clean
echo "| $IMG, $(nproc) cores, $RUNS runs | median ms |"
echo "|---|---|"
echo "| regfs convert-image (fetch + convert + push) | $(med "${r[@]}") |"
echo "| ctr-remote pull + convert + push | $(med "${t[@]}") |"
echo "| ctr-remote convert alone | $(med "${c[@]}") |"
awk -v a="$(med "${r[@]}")" -v b="$(med "${t[@]}")" -v c="$(med "${c[@]}")" \
  'BEGIN { printf "\nratio regfs / ctr-remote end to end: %.2f; regfs end to end / ctr-remote convert alone: %.2f\n\n", a / b, a / c }'
echo "| inspect --toc of | layers | requests | bytes received |"
echo "|---|---|---|---|"
for img in "bench-regfs-$TAG-1/$NAME:esgz" "bench-ctr-$TAG-1/$NAME:esgz"; do
  "$REGFS" inspect --toc --json "$REG/$img" |
    jq -r --arg i "$img" '"| \($i) | \(.layers | length) | \(.requests) | \(.bytesReceived) |"'
done
