#!/usr/bin/env python
"""Learned concept libraries on a real ImageNet model: End2End and InfoDisent beside Prototype and Cluster.

What it does
------------
1. Loads the packaged ImageNet EfficientNet-Lite0 (``iis.torch.efficientnet_lite0()``,
   offline) and takes scikit-learn's real handwritten digits at 224 px (``--per-class``
   per digit), split 70/30 (stratified, seeded).
2. Extracts the final spatial feature map of both splits, ``(N, 7*7, 1280)``
   (``extract_features(spatial=True)``); the pooled features (the input of the
   classifier) are its mean over the 49 positions (checked against
   ``extract_features`` on a few images).
3. Cuts 2 x 2 patches from ``--element-images`` train images per class and embeds them
   with the same model and layer.
4. Builds four libraries of M = ``--n-concepts`` concepts: Prototype, Cluster, End2End
   (trained on the train split, early stopping on a hold-out of it) and the InfoDisent
   basis: InfoDisent is trained on the train maps and its M channels with the largest
   total head weight are the library (the columns of U are unit vectors in the space of
   the pooled features).
5. Scores all four with ``iis.score`` on the pooled features; prints one table with the
   IIS, the probe's accuracy and InfoDisent's own accuracy on the eval split; writes
   ``results.json`` and ``explanations.png`` (InfoDisent's explanations of three eval
   images: the three channels that weigh most, heat maps over the image) to ``--out``.
   The time and peak memory (RSS) of each stage are recorded.

Usage::

    pip install "iis[torch]"
    python examples/learned_libraries.py --out learned_run
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=60, help="digits per class (default 60)")
    p.add_argument("--size", type=int, default=224, help="image side fed to the model (default 224)")
    p.add_argument("--element-images", type=int, default=10, help="train images per class cut into patches")
    p.add_argument("--n-concepts", type=int, default=200, help="library size M (default 200)")
    p.add_argument("--infodisent-steps", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="learned_libraries")
    return p.parse_args(argv)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    import iis
    import iis.torch as it
    from iis.datasets import load_digits_images, train_eval_split
    from iis.elements import patches

    os.makedirs(args.out, exist_ok=True)
    stages: dict = {}

    def done(name, t0):
        stages[name] = {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(peak_mib())}
        print(f"[{name}] {stages[name]['seconds']} s, peak RSS so far {stages[name]['peak_rss_mib']} MiB", flush=True)

    t0 = time.perf_counter()
    model = it.efficientnet_lite0()
    cfg = it.data_config(model)
    norm = dict(mean=cfg["mean"], std=cfg["std"])
    images, labels = load_digits_images(size=32, n_per_class=args.per_class, seed=args.seed)
    tr, ev = train_eval_split(labels, 0.3, seed=args.seed)
    ytr, yev = labels[tr], labels[ev]
    maps_tr = it.extract_features(model, it.ImageDataset(images[tr], size=args.size, **norm), spatial=True, progress=False)
    maps_ev = it.extract_features(model, it.ImageDataset(images[ev], size=args.size, **norm), spatial=True, progress=False)
    f_tr, f_ev = maps_tr.mean(axis=1), maps_ev.mean(axis=1)
    pooled = it.extract_features(model, it.ImageDataset(images[tr[:8]], size=args.size, **norm), progress=False)
    np.testing.assert_allclose(f_tr[:8], pooled, rtol=1e-4, atol=1e-4)
    done("spatial features", t0)
    print(f"  maps: train {maps_tr.shape}, eval {maps_ev.shape} ({maps_tr.nbytes / 2**20:.0f} MiB train)")

    t0 = time.perf_counter()
    el = patches(images[tr], ytr, grid=2, size=args.size, per_class=args.element_images, seed=args.seed)
    emb = it.embed_elements(el, model, size=args.size, progress=False)
    done("elements", t0)
    m = args.n_concepts

    libs = {}
    t0 = time.perf_counter()
    libs["Prototype"] = iis.ConceptLibrary.prototype(emb, el.labels, n_concepts=m, seed=args.seed)
    done("prototype", t0)
    t0 = time.perf_counter()
    libs["Cluster"] = iis.ConceptLibrary.cluster(emb, n_concepts=m, seed=args.seed, element_labels=el.labels)
    done("cluster", t0)
    t0 = time.perf_counter()
    libs["End2End"] = iis.ConceptLibrary.end2end(emb, f_tr, ytr, n_concepts=m, seed=args.seed)
    done("end2end", t0)
    t0 = time.perf_counter()
    classes = np.unique(ytr)
    info = iis.InfoDisent(len(classes), steps=args.infodisent_steps, seed=args.seed)
    info.fit(maps_tr, np.searchsorted(classes, ytr))
    info_acc = info.score(maps_ev, np.searchsorted(classes, yev))
    basis = iis.ConceptLibrary.from_infodisent(info)
    libs["InfoDisent basis"] = basis.subset(np.sort(np.argsort(-info.coef_.sum(axis=0), kind="stable")[:m]))
    done("infodisent", t0)

    results = {}
    t0 = time.perf_counter()
    for name, lib in libs.items():
        results[name] = iis.score(f_tr, ytr, f_ev, yev, lib)
    done("scores", t0)
    probe = results["Prototype"].probe_accuracy
    print(f"\n| library | M | IIS | IP accuracy at s=0 | IP accuracy at s=0.9 |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        s = list(r.sparsities)
        print(f"| {name} | {len(libs[name])} | {r.iis:.4f} | {r.ip_accuracy[0]:.4f} | "
              f"{r.ip_accuracy[s.index(0.9)]:.4f} |")
    print(f"\nlinear probe on the pooled features: {probe:.4f}; InfoDisent ({info.parametrization}, "
          f"{info.steps} steps): {info_acc:.4f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(7.5, 8))
    shown = ev[:3]
    for row, ex in enumerate(info.explain(maps_ev[:3], top=3)):
        ex.plot(image=images[shown[row]], ax=axes[row])
        axes[row, 0].set_ylabel(f"digit {yev[row]} -> {classes[ex.predicted]}", fontsize=9)
    fig.suptitle("InfoDisent on EfficientNet-Lite0: the 3 channels that weigh most", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "explanations.png"), dpi=100)
    plt.close(fig)

    summary = {
        "model": "tf_efficientnet_lite0 (ImageNet-1k, packaged weights)",
        "data": {"images": f"sklearn digits at {args.size} px", "n_train": int(len(tr)), "n_eval": int(len(ev)),
                 "n_elements": int(len(el)), "map_shape": list(maps_tr.shape[1:])},
        "iis": {k: r.iis for k, r in results.items()},
        "ip_accuracy": {k: list(map(float, r.ip_accuracy)) for k, r in results.items()},
        "n_concepts": {k: len(v) for k, v in libs.items()},
        "probe_accuracy": float(probe),
        "infodisent_accuracy": float(info_acc),
        "end2end": {"n_steps": libs["End2End"].meta["n_steps"], "best_step": libs["End2End"].meta["best_step"]},
        "stages": stages,
        "torch_threads": torch.get_num_threads(),
    }
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    print(f"wrote {args.out}/results.json and {args.out}/explanations.png")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
