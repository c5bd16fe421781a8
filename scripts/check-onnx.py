#!/usr/bin/env python3
"""Check a `jem export` ONNX file with onnxruntime (PyPI) against `jem predict`.

Usage:
  pip install onnxruntime numpy
  jem export --run RUN --out model.onnx --with-energy
  scripts/check-onnx.py --run RUN --onnx model.onnx IMAGES.idx-or.npy [--jem target/release/jem]

It runs the exported graph in onnxruntime on the images (values in [0, 1], as `jem predict`
reads them), runs `jem predict --json` on the same file, and prints the largest absolute
difference of the logits, of p(y|x) and of the energy (-logsumexp, when the graph has that output). It exits
with status 1 when a difference exceeds --tol (default 1e-4).
"""
import argparse
import gzip
import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort


def read_images(path):
    """[n, c, h, w] float32 in [0, 1] from an IDX image file (raw or gzip) or a .npy array."""
    if path.endswith(".npy"):
        a = np.load(path)
        a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
        return a[:, None] if a.ndim == 3 else a
    raw = open(path, "rb").read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim)]
    a = np.frombuffer(raw[4 + 4 * ndim:], dtype=np.uint8).reshape(dims)
    return (a.astype(np.float32) / 255.0)[:, None]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--run", required=True)
    p.add_argument("--onnx", required=True)
    p.add_argument("--jem", default="target/release/jem")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("images")
    a = p.parse_args()
    x = read_images(a.images)
    sess = ort.InferenceSession(a.onnx, providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"images": x})
    logits = outs[0].astype(np.float64)
    m = logits.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
    probs = np.exp(logits - lse[:, None])
    lines = subprocess.run([a.jem, "predict", "--run", a.run, "--json", a.images],
                           check=True, capture_output=True, text=True).stdout.splitlines()
    want = [json.loads(line) for line in lines]
    assert len(want) == len(x), f"{len(want)} predictions for {len(x)} images"
    dp = max(abs(probs[i] - np.array(w["probs"])).max() for i, w in enumerate(want))
    de = max(abs(-lse[i] - w["energy"]) for i, w in enumerate(want))
    # jem's logits from its answer: f(x)[y] = log p(y|x) - E(x) (where p(y|x) is not 0).
    dl = 0.0
    for i, w in enumerate(want):
        q = np.array(w["probs"], dtype=np.float64)
        ok = q > 1e-30
        dl = max(dl, abs(logits[i][ok] - (np.log(q[ok]) - w["energy"])).max())
    print(f"{len(x)} images: max |logit onnxruntime - jem| = {dl:.3g}, "
          f"max |p(y|x)| diff = {dp:.3g}, max |energy| diff = {de:.3g}")
    de = max(de, dl)
    if len(outs) > 1:
        dg = abs(outs[1].astype(np.float64) - lse).max()
        print(f"graph output logsumexp against its logits: max diff {dg:.3g}")
        de = max(de, dg)
    sys.exit(0 if max(dp, de) <= a.tol else 1)


if __name__ == "__main__":
    main()
