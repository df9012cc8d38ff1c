"""``iis demo``: the whole pipeline on a real dataset that ships with scikit-learn.

Data: scikit-learn's digits (1,797 real 8x8 handwritten digits, 10 classes),
split 2:1 stratified with a seed. Representations of different
classifiability: the raw pixels and the hidden layer of a small ReLU network
(NumPy, seeded SGD) at several training stages, from random initialisation to
convergence. Visual elements are the image quadrants (2x2 patches, the rest of
the image filled with the background value 0), embedded by the same
representation; the Prototype library takes 200 of them stratified across
classes. For each representation we report the probe accuracy and the IIS,
then the Spearman rank correlation between them (the paper's headline finding
is that it is positive).
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from ._api import score
from ._library import ConceptLibrary


def load_digits_split(seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits images (N, 8, 8) scaled to [0, 1] and a stratified 2:1 train/eval split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover
        raise ImportError("iis demo needs scikit-learn for its dataset: pip install 'iis[demo]'") from None
    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    tr, ev = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cut = int(round(len(idx) * 2 / 3))
        tr.extend(idx[:cut])
        ev.extend(idx[cut:])
    tr, ev = np.sort(tr), np.sort(ev)
    return images[tr], y[tr], images[ev], y[ev]


def quadrant_elements(images: np.ndarray) -> np.ndarray:
    """Visual elements: each image's 2x2 grid patches on a background of 0, (4N, H, W)."""
    n, h, w = images.shape
    out = np.zeros((n, 4, h, w), dtype=images.dtype)
    for q, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        rs, cs = slice(r * h // 2, (r + 1) * h // 2), slice(c * w // 2, (c + 1) * w // 2)
        out[:, q, rs, cs] = images[:, rs, cs]
    return out.reshape(n * 4, h, w)


class TinyMLP:
    """Two-layer ReLU network trained with seeded minibatch SGD (momentum 0.9)."""

    def __init__(self, d_in: int, hidden: int, n_classes: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w1 = (rng.standard_normal((d_in, hidden)) * np.sqrt(2.0 / d_in)).astype(np.float32)
        self.b1 = np.zeros(hidden, np.float32)
        self.w2 = (rng.standard_normal((hidden, n_classes)) * np.sqrt(1.0 / hidden)).astype(np.float32)
        self.b2 = np.zeros(n_classes, np.float32)
        self.rng = rng
        self.vel = [np.zeros_like(p) for p in (self.w1, self.b1, self.w2, self.b2)]

    def hidden(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x @ self.w1 + self.b1, 0.0).astype(np.float32)

    def epoch(self, x: np.ndarray, y: np.ndarray, lr: float = 0.05, batch: int = 32) -> None:
        order = self.rng.permutation(len(x))
        for s in range(0, len(x), batch):
            b = order[s:s + batch]
            h = self.hidden(x[b])
            z = h @ self.w2 + self.b2
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(b)), y[b]] -= 1.0
            p /= len(b)
            gw2, gb2 = h.T @ p, p.sum(0)
            gh = (p @ self.w2.T) * (h > 0)
            gw1, gb1 = x[b].T @ gh, gh.sum(0)
            for v, g, prm in zip(self.vel, (gw1, gb1, gw2, gb2), (self.w1, self.b1, self.w2, self.b2)):
                v *= 0.9
                v -= lr * g
                prm += v


def run(out_dir: Optional[str] = "iis_demo_out", stages: Tuple[int, ...] = (0, 1, 3, 10, 40), hidden: int = 32,
        n_concepts: int = 200, seed: int = 0, n_threads: Optional[int] = None,
        verbose: bool = True) -> Dict[str, object]:
    """Run the demo; returns a dict with one row per representation and the correlation."""
    from scipy.stats import spearmanr

    t_start = time.perf_counter()
    xtr_img, ytr, xev_img, yev = load_digits_split(seed)
    el_img = quadrant_elements(xtr_img)
    el_lab = np.repeat(ytr, 4)
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32)  # noqa: E731
    reps: List[Tuple[str, callable]] = [("raw pixels (64-d)", lambda a: flat(a))]
    net = TinyMLP(64, hidden, 10, seed=seed)
    xtr = flat(xtr_img)
    trained = 0
    snapshots = []
    for ep in sorted(stages):
        while trained < ep:
            net.epoch(xtr, ytr)
            trained += 1
        w1, b1 = net.w1.copy(), net.b1.copy()
        snapshots.append((f"MLP hidden, epoch {ep}", w1, b1))
    for name, w1, b1 in snapshots:
        reps.append((name, lambda a, w1=w1, b1=b1: np.maximum(flat(a) @ w1 + b1, 0).astype(np.float32)))

    rows = []
    results = {}
    if verbose:
        print(f"iis demo: scikit-learn digits, {len(ytr)} train / {len(yev)} eval images, 10 classes;"
              f" Prototype library of {n_concepts} quadrant elements (of {len(el_lab)})")
        print(f"{'representation':<24} {'d':>4} {'probe acc':>9} {'IIS':>7} {'IIS_norm':>8} {'ARR(0.9)':>8} {'time':>6}")
    for name, embed in reps:
        t0 = time.perf_counter()
        ftr, fev, fel = embed(xtr_img), embed(xev_img), embed(el_img)
        keep = np.linalg.norm(fel, axis=1) > 0  # an element the representation maps to 0 has no direction
        lib = ConceptLibrary.prototype(fel[keep], el_lab[keep], n_concepts=n_concepts, seed=seed)
        res = score(ftr, ytr, fev, yev, lib, n_threads=n_threads)
        dt = time.perf_counter() - t0
        arr09 = float(res.arr[list(res.sparsities).index(0.9)]) if 0.9 in res.sparsities else float("nan")
        rows.append({"representation": name, "d": int(ftr.shape[1]), "probe_accuracy": res.probe_accuracy,
                     "iis": res.iis, "iis_normalized": res.iis_normalized, "arr": res.arr.tolist(),
                     "ip_accuracy": res.ip_accuracy.tolist(), "seconds": dt})
        results[name] = res
        if verbose:
            print(f"{name:<24} {ftr.shape[1]:>4} {res.probe_accuracy:>9.4f} {res.iis:>7.4f} "
                  f"{res.iis_normalized:>8.4f} {arr09:>8.4f} {dt:>5.1f}s")
    acc = [r["probe_accuracy"] for r in rows]
    val = [r["iis"] for r in rows]
    rho = float(spearmanr(acc, val).correlation)
    summary = {"dataset": "sklearn digits", "n_train": int(len(ytr)), "n_eval": int(len(yev)),
               "n_concepts": n_concepts, "rows": rows, "spearman_accuracy_iis": rho,
               "sparsities": list(map(float, results[reps[0][0]].sparsities)),
               "seconds": time.perf_counter() - t_start}
    if verbose:
        print(f"Spearman rank correlation between probe accuracy and IIS: {rho:+.3f} "
              f"({'positive, as the paper reports' if rho > 0 else 'not positive here'})")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "demo.json"), "w") as fh:
            json.dump(summary, fh, indent=2)
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(6, 4))
            for name, res in results.items():
                res.plot(ax=ax, label=f"{name}: IIS={res.iis:.3f}, acc={res.probe_accuracy:.3f}", fill=False)
            low = min(float(np.nanmin(r.arr)) for r in results.values())
            ax.set_ylim(max(0.0, low - 0.05), None)
            ax.set_title("ARR curves on digits (Prototype library)")
            fig.tight_layout()
            path = os.path.join(out_dir, "arr.png")
            fig.savefig(path, dpi=120)
            plt.close(fig)
            summary["plot"] = path
        except ImportError:
            summary["plot"] = None
        if verbose:
            print(f"wrote {os.path.join(out_dir, 'demo.json')}"
                  + (f" and {summary['plot']}" if summary.get("plot") else " (no matplotlib: no plot)"))
    return summary
