#!/usr/bin/env bash
# The test command (README, .ci/run): installs the test data when it can, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# Test data (Fashion-MNIST), headless Chromium (renders `jem report` in a test) and Slurm.
need=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
[ -x /usr/bin/chromium ] || need+=(chromium)
# A single-node Slurm for the `jem sweep --launcher slurm` test (scripts/test-slurm.sh).
[ -x /usr/sbin/slurmctld ] || need+=(slurm-wlm)
[ -x /usr/sbin/munged ] || need+=(munge)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}"
  else
    echo "missing Debian packages: ${need[*]} (sudo apt-get install -y ${need[*]})" >&2
  fi
fi
cargo test --release --workspace "$@"
