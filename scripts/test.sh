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
# The GPU code path (burn's wgpu backend, WGSL) is tested on lavapipe against the CPU engine
# (crates/jem/tests/wgpu_device.rs). It is built into the same test build as everything else,
# not into a second one: the wgpu feature changes the features of burn and of half the
# dependency tree, and a second release build of it more than doubled the time of CI. The other tests
# name no device, and `auto` would pick the wgpu adapter once it is compiled in, so they run
# with JEM_DEVICE=cpu (the engine a build without GPU features uses) unless it is set.
features=()
if [ -f "$lvp" ]; then
  features=(--features jem/wgpu)
  export VK_ICD_FILENAMES="$lvp"
  export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
else
  echo "the wgpu tests are left out: no lavapipe ($lvp; apt-get install mesa-vulkan-drivers libvulkan1)" >&2
fi
# The `ci` profile (root Cargo.toml) is the release profile with the wgpu-only crates at
# opt-level 1 and no debug information in dependencies: it builds in target/ci.
JEM_DEVICE=${JEM_DEVICE:-cpu} cargo test --profile ci --workspace "${features[@]}" "$@"
