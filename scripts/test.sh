#!/usr/bin/env bash
# The test command (README, .ci/run): installs the test data when it can, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# Test data (Fashion-MNIST), headless Chromium (renders `jem report` in a test), Slurm, and
# Mesa's software Vulkan (lavapipe), on which the wgpu tests run the GPU code path.
need=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
[ -x /usr/bin/chromium ] || need+=(chromium)
# A single-node Slurm for the `jem sweep --launcher slurm` test (scripts/test-slurm.sh).
[ -x /usr/sbin/slurmctld ] || need+=(slurm-wlm)
[ -x /usr/sbin/munged ] || need+=(munge)
lvp=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json
[ -f "$lvp" ] || need+=(mesa-vulkan-drivers)
[ -e /usr/lib/x86_64-linux-gnu/libvulkan.so.1 ] || need+=(libvulkan1)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}"
  else
    echo "missing Debian packages: ${need[*]} (sudo apt-get install -y ${need[*]})" >&2
  fi
fi
cargo test --release --workspace "$@"
# The GPU code path (burn's wgpu backend, WGSL) on lavapipe, against the CPU engine.
if [ -f "$lvp" ]; then
  export VK_ICD_FILENAMES="$lvp"
  export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
  cargo test --release -p jem --features wgpu --test wgpu_device "$@"
else
  echo "skipped the wgpu tests: no lavapipe ($lvp; apt-get install mesa-vulkan-drivers libvulkan1)" >&2
fi
