#!/usr/bin/env python
"""Time and peak memory of the learned-library stages on a realistic run (docs/learned.md).

The packaged ImageNet EfficientNet-Lite0 on scikit-learn's real digits at 224 px:
  spatial  extract_features(spatial=True, dtype=float16, out=...) of N images: (N, 49, 1280)
  end2end  ConceptLibrary.end2end(M=200) on the pooled features of the 70% train split
           with the patches (grid 2) of --element-images train images as elements
Each stage runs in its own subprocess so that its peak RSS (ru_maxrss) is its own.

    python benchmarks/learned_cost.py                 # both stages
    python benchmarks/learned_cost.py --stage end2end
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def _digits(n_images=None):
    from iis.datasets import load_digits_images, train_eval_split

    imgs, labels = load_digits_images(size=32)
    if n_images:
        imgs, labels = imgs[:n_images], labels[:n_images]
    return imgs, labels, train_eval_split(labels, 0.3, seed=0)


def stage_spatial(args, tmp):
    import iis.torch as it

    model = it.efficientnet_lite0()
    imgs, labels, _ = _digits(args.spatial_images)
    ds = it.ImageDataset(imgs, size=224, **{k: v for k, v in it.data_config(model).items() if k != "size"})
    t0 = time.perf_counter()
    maps = it.extract_features(model, ds, spatial=True, dtype=np.float16, out=os.path.join(tmp, "maps.npy"),
                               progress=False)
    return {"n_images": len(imgs), "shape": list(maps.shape), "dtype": str(maps.dtype),
            "seconds": time.perf_counter() - t0}


def stage_end2end(args, tmp):
    import iis
    import iis.torch as it
    from iis.elements import patches

    model = it.efficientnet_lite0()
    cfg = {k: v for k, v in it.data_config(model).items() if k != "size"}
    imgs, labels, (tr, ev) = _digits()
    feats = it.extract_features(model, it.ImageDataset(imgs, size=224, **cfg), progress=False)
    el = patches(imgs[tr][: args.element_images], labels=labels[tr][: args.element_images], grid=2, size=224)
    elements = el.embed(model, progress=False)
    t0 = time.perf_counter()
    lib = iis.ConceptLibrary.end2end(elements, feats[tr], labels[tr], n_concepts=200, seed=0)
    fit = time.perf_counter() - t0
    res = iis.score(feats[tr], labels[tr], feats[ev], labels[ev], lib)
    return {"n_train": int(len(tr)), "n_elements": int(len(elements)), "d": int(feats.shape[1]),
            "n_concepts": len(lib), "n_steps": lib.meta["n_steps"], "best_step": lib.meta["best_step"],
            "seconds": fit, "iis": res.iis, "probe_accuracy": res.probe_accuracy}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=["spatial", "end2end", "all"], default="all")
    p.add_argument("--spatial-images", type=int, default=1797)
    p.add_argument("--element-images", type=int, default=500)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        with tempfile.TemporaryDirectory() as tmp:
            out = {"spatial": stage_spatial, "end2end": stage_end2end}[args.stage](args, tmp)
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return
    stages = ["spatial", "end2end"] if args.stage == "all" else [args.stage]
    for st in stages:
        cmd = [sys.executable, __file__, "--child", "--stage", st, "--spatial-images", str(args.spatial_images),
               "--element-images", str(args.element_images)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        print(st, r.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
