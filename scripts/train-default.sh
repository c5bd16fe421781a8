#!/usr/bin/env bash
# The main job on a fresh machine: train a JEM on Fashion-MNIST for one epoch with the paper's
# recipe (benchmark CNN, Adam 1e-4, SGLD 20 steps, 10,000-chain buffer), then evaluate it and
# draw samples. Usage: scripts/train-default.sh [RUN_DIR] [extra `jem train` flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/fashion-jem}
shift || true
data=/usr/share/datasets/fashion-mnist
if [ ! -f "$data/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Fashion-MNIST is missing: installing the Debian package dataset-fashion-mnist" >&2
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
  else
    echo "Fashion-MNIST is missing from $data. Install it with:" >&2
    echo "  sudo apt-get install -y dataset-fashion-mnist" >&2
    echo "or pass --data-dir DIR holding {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz" >&2
    exit 1
  fi
fi
cargo build --release -p jem-cli
jem=target/release/jem
if [ -f "$run/state.json" ]; then
  "$jem" train --resume "$run" "$@"
else
  "$jem" train --dataset fashion-mnist --epochs 1 --out "$run" "$@"
fi
"$jem" eval accuracy --run "$run"
"$jem" sample --run "$run" --out "$run/samples.png"
"$jem" sample --run "$run" --per-class --n 8 --out "$run/samples-per-class.png"
