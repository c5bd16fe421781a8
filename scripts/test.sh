#!/usr/bin/env bash
# The test command (README, .ci/run): installs the test data when it can, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
fi
cargo test --release --workspace "$@"
