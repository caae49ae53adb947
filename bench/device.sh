#!/usr/bin/env bash
# Accelerator benchmarks on one device, in about 8 minutes: DDPM++ CIFAR-10 training images/s and MFU (bf16 and
# float32), EDM Heun sampling images/s, pixel k-NN 50k x 50k against the GEMM rate, LPIPS VGG features/s.
# One file per section: <out>/gpu_{train,sample,knn,lpips}.txt (see bench/bench_device.py for the fields).
#
#   bash bench/device.sh                           # on a GPU: writes bench/results/gpu_*.txt
#   bash bench/device.sh --peak_tflops_bf16=989    # a device kind the peak table lacks (also _tf32, _fp32)
#   bash bench/device.sh --small --out=/tmp/dev    # tiny sizes on a CPU (seconds per section): a check, CI
#
# Each section runs in its own process under a time limit (the four add up to 8 minutes); a section that
# fails or runs out of time still leaves its file, saying so. Exit status 1 if any section did not finish.
set -uo pipefail
cd "$(dirname "$0")/.."
small=0; out=""; pass=()
for arg in "$@"; do
  case "$arg" in
    --small) small=1; pass+=("$arg") ;;
    --out=*) out="${arg#--out=}" ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) pass+=("$arg") ;;
  esac
done
if [ -z "$out" ]; then
  if [ "$small" = 1 ]; then out="${TMPDIR:-/tmp}/diffmem_device_small"; else out="bench/results"; fi
fi
mkdir -p "$out"
declare -A limit=([train]=240 [sample]=120 [knn]=50 [lpips]=50)
if [ "$small" = 1 ]; then  # a check on a (possibly loaded) CPU, not a benchmark: only a generous limit
  limit=([train]=600 [sample]=600 [knn]=600 [lpips]=600)
fi
failed=0
for section in train sample knn lpips; do
  echo "== $section (limit ${limit[$section]} s) -> $out/gpu_$section.txt"
  timeout --kill-after=10 "${limit[$section]}" python3 bench/bench_device.py --section="$section" --out="$out" "${pass[@]}"
  rc=$?
  if [ "$rc" != 0 ]; then
    failed=1
    why="exit status $rc"; [ "$rc" = 124 ] && why="timed out after ${limit[$section]} s"
    file="$out/gpu_$section.txt"
    if grep -q '^status: partial' "$file" 2>/dev/null; then  # keep the figures it saved before it stopped
      sed -i "s/^status: partial.*/status: failed ($why); the figures above are those it finished/" "$file"
    else
      { echo "# bench/device.sh section $section did not finish: $why"
        echo "# command: python3 bench/bench_device.py --section=$section --out=$out ${pass[*]}"
        echo "status: failed ($why)"; } > "$file"
    fi
    echo "section $section: $why" >&2
  fi
done
exit "$failed"
