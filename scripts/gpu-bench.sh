#!/usr/bin/env bash
# Build jem for a GPU and print ms per SGLD step and per JEM iteration for batch 64 and 256,
# with the benchmark CNN (28x28x1) and a WRN-28-10 (32x32x3, CIFAR-10 shape).
# Usage: scripts/gpu-bench.sh ; environment: FEATURES (cuda; vulkan or wgpu also work),
# DEVICE (the `--device` to time on; default: the backend named by FEATURES), REPS (timed
# iterations, 5), DEVICES (a device list for the data-parallel check below), JEM (a jem binary
# built with FEATURES, instead of building one). `DEVICE=wgpu:cpu FEATURES=wgpu` runs it on a
# software adapter (Mesa's lavapipe, `VK_ICD_FILENAMES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json`):
# a smoke test of the GPU code path whose numbers are CPU numbers, labelled so in the output;
# `DEVICES=wgpu:cpu,wgpu:cpu` then runs the data-parallel check over two runtimes on it.
# burn's CUDA build downloads LLVM (cubecl), so `cuda` needs a machine with internet access
# at build time; `vulkan` builds offline.
set -euo pipefail
cd "$(dirname "$0")/.."
features=${FEATURES:-cuda}
reps=${REPS:-5}
if [ -n "${JEM:-}" ]; then
  jem=$JEM
else
  cargo build --release -p jem-cli --features "$features"
  jem=target/release/jem
fi
device=${DEVICE:-$features}
models=("cnn|--arch cnn --dataset fashion-mnist" "wrn-28-10|--arch wrn --wrn-depth 28 --wrn-widen 10 --dataset cifar10")
batches=(64 256)
if [[ "$device" == *:cpu ]]; then
  echo "SMOKE TEST on a software adapter ($device): these are not GPU numbers"
  models=("${models[0]}")
  batches=(64)
fi
echo "device: $device (features: $features)"
echo "| model | batch | SGLD step ms | iteration ms | iteration GFLOP/s |"
echo "|---|---|---|---|---|"
for model in "${models[@]}"; do
  for batch in "${batches[@]}"; do
    # shellcheck disable=SC2086
    json=$("$jem" --device "$device" bench --json --batch "$batch" --sgld-reps 10 --iter-reps "$reps" ${model#*|})
    field() { sed -E "s/.*\"$1\":([0-9.eE+-]+).*/\1/" <<<"$json"; }
    printf '| %s | %s | %.2f | %.1f | %.0f |\n' "${model%%|*}" "$batch" \
      "$(field sgld_step_ms)" "$(field iteration_ms)" "$(field gflops)"
  done
done
# Data parallel (DEVICES=wgpu:0,wgpu:1 or cuda:0,cuda:1; wgpu:cpu,wgpu:cpu on lavapipe): 20 JEM steps on the first device
# alone and over all of them; the two loss curves must agree to rounding (tests/parallel.rs).
if [ -n "${DEVICES:-}" ]; then
  tmp=$(mktemp -d)
  one=${DEVICES%%,*}
  t0=$(date +%s.%N)
  "$jem" --device "$one" train --out "$tmp/one" --max-steps 20 --log-every 1 --quiet
  t1=$(date +%s.%N)
  "$jem" train --devices "$DEVICES" --out "$tmp/many" --max-steps 20 --log-every 1 --quiet
  t2=$(date +%s.%N)
  losses() { sed -nE 's/^\{"step":[0-9]+,"epoch":[0-9]+,"loss":([-0-9.eE+]+).*/\1/p' "$1/metrics.jsonl"; }
  paste <(losses "$tmp/one") <(losses "$tmp/many") | awk -v a="$one" -v b="$DEVICES" \
    -v ta="$(echo "$t1 - $t0" | bc)" -v tb="$(echo "$t2 - $t1" | bc)" '
    { d = $1 - $2; if (d < 0) d = -d; s = ($1 < 0 ? -$1 : $1); if (s < 1) s = 1; if (d / s > m) m = d / s }
    END { printf "data parallel: 20 steps on %s in %.1f s, on %s in %.1f s; loss curves differ by %.2e (relative)\n", a, ta, b, tb, m }'
fi
