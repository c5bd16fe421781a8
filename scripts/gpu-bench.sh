#!/usr/bin/env bash
# Build jem for a GPU and print ms per SGLD step and per JEM iteration for batch 64 and 256,
# with the benchmark CNN (28x28x1) and a WRN-28-10 (32x32x3, CIFAR-10 shape).
# Usage: scripts/gpu-bench.sh ; environment: FEATURES (cuda; vulkan or wgpu also work),
# REPS (timed iterations, 5).
# burn's CUDA build downloads LLVM (cubecl), so `cuda` needs a machine with internet access
# at build time; `vulkan` builds offline.
set -euo pipefail
cd "$(dirname "$0")/.."
features=${FEATURES:-cuda}
reps=${REPS:-5}
cargo build --release -p jem-cli --no-default-features --features "$features"
jem=target/release/jem
export JEM_DEVICE=$features
echo "| model | batch | SGLD step ms | iteration ms | iteration GFLOP/s |"
echo "|---|---|---|---|---|"
for model in "cnn|--arch cnn --dataset fashion-mnist" "wrn-28-10|--arch wrn --wrn-depth 28 --wrn-widen 10 --dataset cifar10"; do
  for batch in 64 256; do
    # shellcheck disable=SC2086
    json=$("$jem" bench --json --batch "$batch" --sgld-reps 10 --iter-reps "$reps" ${model#*|})
    field() { sed -E "s/.*\"$1\":([0-9.eE+-]+).*/\1/" <<<"$json"; }
    printf '| %s | %s | %.2f | %.1f | %.0f |\n' "${model%%|*}" "$batch" \
      "$(field sgld_step_ms)" "$(field iteration_ms)" "$(field gflops)"
  done
done
