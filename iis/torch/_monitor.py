"""IIS during training: :class:`IISMonitor`, called from a plain PyTorch loop."""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ._data import ImageDataset, data_config
from ._features import extract_features
from .._validation import json_text
from ..elements import Elements

__all__ = ["IISMonitor"]


class IISMonitor:
    """Record IIS, ARR and probe accuracy of a model every ``every`` epochs.

    The monitor holds fixed sets of images: a train split and an evaluation split (whose
    features are re-extracted with the current model at each call) and the visual
    elements the concept library is built from (re-embedded with the current model, since
    the representation space moves during training). For a Prototype library, the
    ``n_concepts`` elements are chosen once (stratified, seeded, exactly as
    :meth:`iis.ConceptLibrary.prototype` chooses them) and only those are embedded.

    Parameters
    ----------
    train_data, eval_data : tensor, Dataset or DataLoader
        Images prepared for the model (anything :func:`extract_features` takes). Keep them
        small: every call runs the model over all of them (see the cost note below).
    train_labels, eval_labels : array-like
        Labels of the two splits, in data order.
    concepts : Elements, tensor/Dataset of element images, ConceptLibrary or callable
        Where the concept library comes from at each call:

        * an :class:`iis.elements.Elements` (raw element images; converted with
          ``size``/``mean``/``std``, by default :func:`data_config` of the model),
        * a tensor or Dataset of element images prepared for the model (then
          ``element_labels`` gives the class of each element),
        * a fixed :class:`iis.ConceptLibrary` (only meaningful if the layer is frozen),
        * a callable ``f(model) -> ConceptLibrary``.
    library : {"prototype", "cluster"}, default "prototype"
        How element embeddings become a library.
    n_concepts : int, default 200
        Library size M (capped by the number of elements).
    every : int, default 1
        Compute only when ``epoch % every == 0`` (and always when ``force=True``).
    layer : str, optional
        Feature layer, as in :func:`extract_features` (default: input of the classifier).
    element_labels : array-like, optional
        Class of each element when ``concepts`` is a tensor/Dataset.
    size, mean, std : optional
        Conversion of :class:`Elements` images (defaults from :func:`data_config`).
    seed : int, default 0
        Seed of the prototype choice and of k-means.
    batch_size : int, default 128
    device : str or torch.device, optional
        Where features are computed (default: the model's device).
    score_kwargs : dict, optional
        Extra arguments for :func:`iis.score` (``sparsities``, ``l2``, ``n_threads`` ...).

    Notes
    -----
    Cost of one call: one forward pass (eval mode, no grad) over
    ``N_train + N_eval + M`` images (``+ all elements`` for a Cluster library), then
    :func:`iis.score` (8 sparsity ratios, a warm-started multinomial logistic regression
    on ``N_train x M`` activations each, plus the probe on ``N_train x d``). Measured on a
    shared 2-core CPU (load average 4-6) with 1000 train + 500 eval real digits, M = 200
    prototypes, 10 classes: ImageNet EfficientNet-Lite0 at 96 px (d = 1280) took 8.6-16 s
    per call, of which 7-15 s were forward passes and 0.6-0.7 s :func:`iis.score`; a
    randomly initialised ResNet-18 at 64 px (d = 512) took 40 s (28 s forward passes,
    8.6 s scoring: random features make the sparse fits slower to converge). Monitor
    every few epochs, subsample the held sets, or pass
    ``score_kwargs={"sparsities": (0, 0.5, 0.9, 0.98)}`` to make calls cheaper.

    Examples
    --------
    >>> monitor = IISMonitor(x_tr, y_tr, x_ev, y_ev, elements, every=2)   # doctest: +SKIP
    >>> for epoch in range(10):                                           # doctest: +SKIP
    ...     train_one_epoch(model)
    ...     monitor(model, epoch, val_accuracy=evaluate(model))
    >>> monitor.plot()                                                    # doctest: +SKIP
    """

    def __init__(
        self,
        train_data: Any,
        train_labels: Any,
        eval_data: Any,
        eval_labels: Any,
        concepts: Any,
        *,
        library: str = "prototype",
        n_concepts: int = 200,
        every: int = 1,
        layer: str | None = None,
        element_labels: Any = None,
        size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
        batch_size: int = 128,
        device: str | torch.device | None = None,
        score_kwargs: dict[str, Any] | None = None,
    ) -> None:
        import iis

        if library not in ("prototype", "cluster"):
            raise ValueError(f"library must be 'prototype' or 'cluster', got {library!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if isinstance(n_concepts, bool) or not isinstance(n_concepts, int) or n_concepts < 1:
            raise ValueError(f"n_concepts must be a positive int, got {n_concepts!r}")
        self.train_data, self.eval_data = train_data, eval_data
        self.train_labels = self._labels(train_labels, train_data, "train")
        self.eval_labels = self._labels(eval_labels, eval_data, "eval")
        self.library = library
        self.n_concepts = int(n_concepts)
        self.every = every
        self.layer = layer
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.device = device
        self.score_kwargs = dict(score_kwargs or {})
        self.score_kwargs.setdefault("progress", False)
        for bad in ("train_features", "eval_features", "library"):
            if bad in self.score_kwargs:
                raise ValueError(f"score_kwargs must not contain {bad!r}")
        self._convert = dict(size=size, mean=mean, std=std)
        self._fixed_library = None
        self._library_fn: Callable[[nn.Module], Any] | None = None
        self._elements: Any = None
        self._element_labels: np.ndarray | None = None
        self._element_names: list[str] | None = None

        if isinstance(concepts, iis.ConceptLibrary):
            self._fixed_library = concepts
        elif isinstance(concepts, Elements):
            if len(concepts) == 0:
                raise ValueError("concepts holds no elements")
            lab = concepts.labels
            self._setup_elements(concepts.images, None if lab is None else np.asarray(lab), raw=True,
                                 descr=[f"{concepts.kind}[src={s},n={n}]" for s, n in zip(concepts.source, concepts.setting)])
        elif isinstance(concepts, (torch.Tensor, np.ndarray, torch.utils.data.Dataset)):
            lab = None if element_labels is None else np.asarray(element_labels)
            if lab is not None and lab.shape != (len(concepts),):
                raise ValueError(f"element_labels must have shape ({len(concepts)},), got {lab.shape}")
            self._setup_elements(concepts, lab, raw=False, descr=None)
        elif callable(concepts):
            self._library_fn = concepts
        else:
            raise TypeError(
                "concepts must be an iis.elements.Elements, a tensor/Dataset of element images, an "
                f"iis.ConceptLibrary or a callable model -> ConceptLibrary; got {type(concepts).__name__}"
            )
        self.history: list[dict[str, Any]] = []
        self.results: list[Any] = []
        self._calls = 0

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _labels(labels: Any, data: Any, which: str) -> np.ndarray:
        if isinstance(data, torch.utils.data.DataLoader) and isinstance(data.sampler, torch.utils.data.RandomSampler):
            raise ValueError(f"{which}_data is a shuffling DataLoader: its order would not match {which}_labels; "
                             "use shuffle=False (or pass the Dataset)")
        if labels is None:
            raise ValueError(f"{which}_labels is required (the labels of {which}_data, in order)")
        lab = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
        if lab.ndim != 1:
            raise ValueError(f"{which}_labels must be 1-D, got shape {lab.shape}")
        try:
            n = len(data.dataset) if isinstance(data, torch.utils.data.DataLoader) else len(data)
        except TypeError:
            n = None
        if n is not None and n != lab.shape[0]:
            raise ValueError(f"{which}_labels has {lab.shape[0]} entries but {which}_data holds {n} images")
        return lab

    def _setup_elements(self, items: Any, labels: np.ndarray | None, *, raw: bool, descr: list[str] | None) -> None:
        from iis._validation import stratified_choice

        n = len(items)
        if self.library == "prototype" and self.n_concepts < n:
            if labels is not None:
                pick = stratified_choice(labels, self.n_concepts, self.seed)
            else:
                pick = np.sort(np.random.default_rng(self.seed).permutation(n)[: self.n_concepts])
        else:
            pick = np.arange(n)
        self._pick = pick
        self._raw_elements = raw
        if isinstance(items, torch.utils.data.Dataset) and not isinstance(items, torch.Tensor):
            self._elements = torch.utils.data.Subset(items, pick.tolist()) if pick.size < n else items
        elif isinstance(items, torch.Tensor):
            self._elements = items[torch.as_tensor(pick, dtype=torch.long)]
        else:
            self._elements = items[pick]
        self._element_labels = None if labels is None else labels[pick]
        if self.library == "prototype":
            lab = self._element_labels
            self._element_names = [
                f"prototype_{i}" + ("" if lab is None else f"[{lab[i]}]") + ("" if descr is None else f" {descr[j]}")
                for i, j in enumerate(pick)
            ]

    # ------------------------------------------------------------------ work
    def _build_library(self, model: nn.Module):
        import iis

        if self._fixed_library is not None:
            return self._fixed_library
        if self._library_fn is not None:
            lib = self._library_fn(model)
            if not isinstance(lib, iis.ConceptLibrary):
                raise TypeError(f"the concepts callable returned {type(lib).__name__}, not an iis.ConceptLibrary")
            return lib
        data = self._elements
        if self._raw_elements:
            cfg = data_config(model)
            conv = {k: (cfg[k] if v is None else v) for k, v in self._convert.items()}
            data = ImageDataset(data, size=conv["size"], mean=conv["mean"], std=conv["std"])
        emb = extract_features(model, data, self.layer, batch_size=self.batch_size, device=self.device, progress=False)
        if self.library == "cluster":
            k = min(self.n_concepts, emb.shape[0])
            return iis.ConceptLibrary.cluster(emb, n_concepts=k, seed=self.seed,
                                              element_labels=self._element_labels,
                                              n_threads=self.score_kwargs.get("n_threads"))
        names = list(self._element_names or [])
        keep = np.linalg.norm(emb, axis=1) > 0
        if not keep.all():
            warnings.warn(f"{int((~keep).sum())} element embeddings are zero and are left out of the library",
                          RuntimeWarning, stacklevel=3)
            emb = emb[keep]
            names = [nm for nm, k in zip(names, keep) if k]
        return iis.ConceptLibrary(emb, names, kind="prototype", meta={"seed": self.seed})

    def due(self, epoch: int) -> bool:
        """Whether a call at ``epoch`` computes (``epoch % every == 0``)."""
        return epoch % self.every == 0

    def __call__(self, model: nn.Module, epoch: int | None = None, *, force: bool = False, **metrics: float):
        """Compute and record IIS of ``model`` now, if ``epoch`` is due.

        Parameters
        ----------
        model : torch.nn.Module
            The model being trained; its train/eval flags and device are left as they were.
        epoch : int, optional
            Epoch number (default: the number of previous calls).
        force : bool, default False
            Compute even when ``epoch`` is not a multiple of ``every``.
        **metrics : float
            Anything else to record with this epoch (e.g. ``val_accuracy=0.91``, ``loss=0.3``).

        Returns
        -------
        iis.IISResult or None
            None when the epoch is skipped.
        """
        import iis

        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if epoch is None:
            epoch = self._calls
        self._calls += 1
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
            raise TypeError(f"epoch must be an int, got {epoch!r}")
        if not (force or self.due(int(epoch))):
            return None
        for k, v in metrics.items():
            if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool):
                raise TypeError(f"metric {k!r} must be a number, got {v!r}")
        t0 = time.perf_counter()
        ftr = extract_features(model, self.train_data, self.layer, batch_size=self.batch_size,
                               device=self.device, progress=False)
        fev = extract_features(model, self.eval_data, self.layer, batch_size=self.batch_size,
                               device=self.device, progress=False)
        t1 = time.perf_counter()
        lib = self._build_library(model)
        t2 = time.perf_counter()
        res = iis.score(ftr, self.train_labels, fev, self.eval_labels, lib, **self.score_kwargs)
        t3 = time.perf_counter()
        rec: dict[str, Any] = {
            "epoch": int(epoch),
            **res.summary(),
            "n_concepts": int(res.n_concepts),
            "seconds_features": t1 - t0,
            "seconds_library": t2 - t1,
            "seconds_score": t3 - t2,
            "seconds_total": t3 - t0,
        }
        for k, v in metrics.items():
            if k in rec:
                raise ValueError(f"metric name {k!r} clashes with a recorded field")
            rec[k] = float(v)
        self.history.append(rec)
        self.results.append(res)
        return res

    # ------------------------------------------------------------------ output
    @property
    def epochs(self) -> list[int]:
        """Epochs at which IIS was computed."""
        return [r["epoch"] for r in self.history]

    def series(self, key: str) -> np.ndarray:
        """One recorded quantity over the computed epochs (NaN where it was not recorded)."""
        return np.asarray([r.get(key, math.nan) for r in self.history], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """The history as plain Python (JSON-serialisable)."""
        return {"every": self.every, "library": self.library, "n_concepts": self.n_concepts,
                "layer": self.layer, "history": [dict(r) for r in self.history]}

    def to_json(self, path: str | None = None, indent: int = 2) -> str:
        """JSON text of :meth:`to_dict`; also written to ``path`` when given."""
        return json_text(self.to_dict(), path, indent)

    def __repr__(self) -> str:
        if not self.history:
            return f"IISMonitor(every={self.every}, library={self.library!r}, no records yet)"
        last = self.history[-1]
        return (f"IISMonitor(every={self.every}, library={self.library!r}, records={len(self.history)}, "
                f"last: epoch={last['epoch']} IIS={last['iis']:.4f} probe_acc={last['probe_accuracy']:.4f})")

    def plot(self, ax: Any = None, metrics: Sequence[str] | None = None):
        """IIS (left axis) and accuracies (right axis) over epochs.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
        metrics : sequence of str, optional
            Extra recorded metrics for the right axis (default: every recorded key with
            "acc" in its name, e.g. ``val_accuracy``).

        Returns
        -------
        (matplotlib.axes.Axes, matplotlib.axes.Axes)
            The IIS axis and the accuracy axis.
        """
        import matplotlib.pyplot as plt

        if not self.history:
            raise ValueError("nothing recorded yet: call the monitor first")
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.8))
        ep = self.epochs
        ax.plot(ep, self.series("iis"), marker="o", color="C0", label="IIS")
        ax.set_xlabel("epoch")
        ax.set_ylabel("IIS", color="C0")
        ax.grid(alpha=0.3)
        ax2 = ax.twinx()
        ax2.plot(ep, self.series("probe_accuracy"), marker="s", color="C1", label="probe accuracy")
        if metrics is None:
            fixed = {"probe_accuracy"}
            metrics = sorted({k for r in self.history for k in r if "acc" in k and k not in fixed
                              and not isinstance(r[k], list)})
        for i, key in enumerate(metrics):
            ax2.plot(ep, self.series(key), marker="^", linestyle="--", color=f"C{i + 2}", label=key)
        ax2.set_ylabel("accuracy")
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], loc="lower right", fontsize=8)
        ax.set_title("IIS and accuracy during training")
        return ax, ax2

    def plot_arr(self, ax: Any = None):
        """One ARR curve per recorded epoch (colour from early to late)."""
        import matplotlib.pyplot as plt

        if not self.history:
            raise ValueError("nothing recorded yet: call the monitor first")
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        cmap = plt.get_cmap("viridis")
        n = len(self.history)
        for i, r in enumerate(self.history):
            ax.plot(r["sparsities"], r["arr"], marker=".", color=cmap(i / max(n - 1, 1)),
                    label=f"epoch {r['epoch']}: IIS={r['iis']:.3f}")
        ax.set_xlabel("sparsity ratio s")
        ax.set_ylabel("ARR(s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        return ax
