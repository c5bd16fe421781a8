#!/usr/bin/env bash
# The main job (scripts/train-default.sh) over several seeds, then the mean, spread and range
# of every figure over them, for the JEM and for its softmax baseline (`jem compare --seeds`).
#
# Usage: scripts/seeds.sh [OUT_DIR (default: runs/seeds)] [SEEDS (default: 0,1,2)] [--quick]
# Each seed's runs go to OUT_DIR/seed-S/ (resumed when already there); the two summaries to
# OUT_DIR/jem.md and OUT_DIR/softmax.md (and .json). JEM=path/to/jem runs that binary throughout
# (scripts/train-default.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/seeds}
seeds=${2:-0,1,2}
quick=()
if [ "${3:-}" = "--quick" ]; then
  quick=(--quick)
fi
t0=$(date +%s)
jem_runs=()
soft_runs=()
for s in ${seeds//,/ }; do
  echo "==== seed $s"
  scripts/train-default.sh "${quick[@]}" "$out/seed-$s" --seed "$s"
  jem_runs+=("$out/seed-$s/fashion-jem")
  soft_runs+=("$out/seed-$s/fashion-softmax")
done
jem=${JEM:-target/release/jem}
for kind in jem softmax; do
  if [ "$kind" = jem ]; then runs=("${jem_runs[@]}"); else runs=("${soft_runs[@]}"); fi
  "$jem" compare --seeds --chosen "${runs[@]}" | tee "$out/$kind.md"
  "$jem" compare --seeds --chosen --json "${runs[@]}" > "$out/$kind.json"
done
echo "summaries: $out/jem.md $out/softmax.md; total time $(($(date +%s) - t0)) s"
