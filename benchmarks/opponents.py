"""What users would otherwise run to get an IIS, written down honestly.

Each opponent computes the same quantities as ``iis.score`` (docs/method.md): concept
activations ``a = F @ unit(P).T``, a normalisation, the per-sample hard top-k mask with
``k(s) = M - floor(M*s)``, an interpretable predictor (IP) per sparsity ratio, a linear
probe on the raw features, ``ARR(s) = acc_IP(s) / acc_probe`` and the trapezoid IIS.
They differ in how the predictors are trained:

(a) ``published_recipe``  -- PyTorch on the CPU exactly as the published IIS code
    (IP_training/IP_Prototype_training.py + model.py): LayerNorm *with* affine, Adam,
    30 epochs, batch 1024, lr swept over {1e-3, 1e-2, 1e-1}, ExponentialLR(0.99), and
    the best epoch on the evaluation split, for the probe and every ratio.
(b) ``sklearn_lbfgs``     -- scikit-learn ``LogisticRegression(solver="lbfgs")`` per
    ratio on the masked activations of a NumPy reference, with ``C = 1/(l2*N_train)``
    so that it minimises exactly iis's objective (mean cross-entropy + l2/2 ||W||^2,
    bias unpenalised): same optimum as iis, so ARRs/IIS must agree.
(c) ``glm_saga_recipe``   -- the PyPI ``glm-saga`` solver called as the published Text
    path calls it (IP_training/IP_Text_training.py), with the penalty at zero.
(d) ``numpy_projection`` / ``sgemm_peak`` -- NumPy's ``X @ P.T`` on the same arrays, and
    the GFLOP/s of a large square float32 matmul (the machine's sgemm peak).

Every function returns a plain dict (JSON-able) with the accuracies, ARRs, IIS and a
timing breakdown; all wall times are ``time.perf_counter`` seconds.
Thread counts are set by the caller (``run.py``) for all of them at once.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings

import numpy as np

DEFAULT_GRID = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98)
PUBLISHED_LRS = (1e-3, 1e-2, 1e-1)


# --------------------------------------------------------------------------------------
# Shared NumPy reference of docs/method.md sections 2, 3, 5
# --------------------------------------------------------------------------------------


def keep_count(m: int, s: float) -> int:
    """k(s) = M - floor(M*s) (docs/method.md section 3, the Decision; not the published -1).

    A 1e-9 guards against ``M*s`` landing a hair below an integer in binary
    floating point (0.29*100 = 28.999999999999996)."""
    return int(m - math.floor(m * s + 1e-9))


def unit_rows(P: np.ndarray, dtype) -> np.ndarray:
    """unit(P): rows scaled to unit L2 norm, in ``dtype``."""
    P = np.asarray(P, dtype=np.float64)
    return (P / np.linalg.norm(P, axis=1, keepdims=True)).astype(dtype)


def np_activations(F: np.ndarray, P: np.ndarray, normalize: str = "layernorm", eps: float = 1e-5):
    """a = norm(F @ unit(P).T) in F's dtype (float32 in, float32 out).

    ``layernorm``: per sample across the M concepts, ``(a - mean) / sqrt(var + eps)``,
    no affine. ``none``: raw projections. (``standardize`` needs train statistics and is
    not used by the benchmark workloads.)"""
    A = F @ unit_rows(P, F.dtype).T
    if normalize == "layernorm":
        A -= A.mean(axis=1, keepdims=True)
        A /= np.sqrt(A.var(axis=1, keepdims=True) + eps)
    elif normalize != "none":
        raise ValueError(f"normalize={normalize!r} not supported by the benchmark reference")
    return A


def np_hard_mask(A: np.ndarray, k: int) -> np.ndarray:
    """Per row keep the k activations of largest |a| (values unchanged), zero the rest.

    Ties at the threshold go to the lower concept index (docs/method.md section 3). O(N*M)
    with ``np.partition``; returns a new array."""
    n, m = A.shape
    if k >= m:
        return A.copy()
    out = np.zeros_like(A)
    if k <= 0:
        return out
    absA = np.abs(A)
    thr = np.partition(absA, m - k, axis=1)[:, m - k : m - k + 1]  # k-th largest |a|
    keep = absA > thr
    need = k - keep.sum(axis=1, keepdims=True)
    eq = absA == thr
    keep |= eq & (np.cumsum(eq, axis=1) <= need)
    np.copyto(out, A, where=keep)
    return out


def trapezoid_iis(sparsities, arr) -> float:
    """IIS = sum_i (ARR_i + ARR_{i+1})/2 * (s_{i+1} - s_i) over the sorted grid."""
    s = np.asarray(sparsities, float)
    a = np.asarray(arr, float)
    o = np.argsort(s)
    s, a = s[o], a[o]
    return float(np.sum((a[1:] + a[:-1]) / 2 * np.diff(s)))


def _curve(sparsities, kept, ip_acc, probe_acc):
    """The fields every opponent reports for its curve: the grid, ARR and IIS."""
    arr = [float(x) / probe_acc for x in ip_acc]
    iis = trapezoid_iis(sparsities, arr)
    span = max(sparsities) - min(sparsities)
    return dict(sparsities=sparsities, kept=kept, ip_accuracy=ip_acc, probe_accuracy=probe_acc,
                arr=arr, iis=iis, iis_normalized=iis / span if span > 0 else float("nan"))


# --------------------------------------------------------------------------------------
# (b) scikit-learn LogisticRegression(solver="lbfgs")
# --------------------------------------------------------------------------------------


def _masked_splits(Atr, Aev, grid, tm):
    """Yield (s, k, masked train, masked eval) along the grid; mask time goes to tm["mask"]."""
    m = Atr.shape[1]
    for s in grid:
        k = keep_count(m, s)
        t = time.perf_counter()
        Mtr, Mev = np_hard_mask(Atr, k), np_hard_mask(Aev, k)
        tm["mask"] += time.perf_counter() - t
        yield s, k, Mtr, Mev


def _standardized(train_F, eval_F):
    """Both splits standardised with the train mean/std (zero std -> 1)."""
    mu = train_F.mean(axis=0)
    sd = train_F.std(axis=0)
    sd[sd == 0] = 1
    return (train_F - mu) / sd, (eval_F - mu) / sd


def _sk_fit(X, y, C, tol, max_iter, warm_from=None):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, solver="lbfgs", tol=tol, max_iter=max_iter, warm_start=warm_from is not None)
    if warm_from is not None:
        clf.coef_ = warm_from.coef_.copy()
        clf.intercept_ = warm_from.intercept_.copy()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        clf.fit(X, y)
    converged = not any("converge" in str(x.message).lower() for x in w)
    return clf, converged


def sklearn_lbfgs(
    train_F,
    train_y,
    eval_F,
    eval_y,
    concepts,
    sparsities=DEFAULT_GRID,
    l2: float = 1e-4,
    tol: float = 1e-4,
    max_iter: int = 1000,
    normalize: str = "layernorm",
    warm_start: bool = False,
):
    """Opponent (b): scikit-learn ``LogisticRegression(solver="lbfgs")`` per ratio.

    Pipeline (all timed): NumPy reference activations of both splits
    (``np_activations``, float32 when the features are float32), then for every ratio
    the NumPy hard mask (``np_hard_mask``) of both splits, a fresh
    ``LogisticRegression(C=1/(l2*N_train), solver="lbfgs", tol=tol, max_iter=max_iter)``
    fit on the masked train activations and top-1 accuracy on the masked eval
    activations; the probe is the same fit on the raw features standardised with train
    mean/std (zero std -> 1). ``C = 1/(l2*N)`` makes sklearn's objective
    ``C*sum(CE) + ||W||^2/2`` proportional to iis's ``mean(CE) + l2/2*||W||^2`` (bias
    unpenalised in both), i.e. the same optimum.

    ``warm_start=True`` starts each ratio from the previous ratio's solution (as iis
    does); the default is the plain per-ratio loop a user would write.
    """
    t_all = time.perf_counter()
    n = train_F.shape[0]
    C = 1.0 / (l2 * n)
    tm = {}
    t = time.perf_counter()
    Atr = np_activations(train_F, concepts, normalize)
    Aev = np_activations(eval_F, concepts, normalize)
    tm["project"] = time.perf_counter() - t
    grid = sorted(float(s) for s in sparsities)
    ip_acc, kept, n_iter, conv = [], [], [], []
    tm["mask"] = tm["fit_ip"] = tm["predict"] = 0.0
    prev = None
    for s, k, Mtr, Mev in _masked_splits(Atr, Aev, grid, tm):
        t = time.perf_counter()
        clf, ok = _sk_fit(Mtr, train_y, C, tol, max_iter, prev if warm_start else None)
        tm["fit_ip"] += time.perf_counter() - t
        t = time.perf_counter()
        ip_acc.append(float(np.mean(clf.predict(Mev) == eval_y)))
        tm["predict"] += time.perf_counter() - t
        kept.append(k)
        n_iter.append(int(np.max(clf.n_iter_)))
        conv.append(ok)
        prev = clf
        del Mtr, Mev
    t = time.perf_counter()
    Ztr, Zev = _standardized(train_F, eval_F)
    probe, pok = _sk_fit(Ztr, train_y, C, tol, max_iter)
    probe_acc = float(np.mean(probe.predict(Zev) == eval_y))
    tm["probe"] = time.perf_counter() - t
    return dict(
        opponent="(b) sklearn LogisticRegression(lbfgs)",
        total_s=time.perf_counter() - t_all,
        timings=tm,
        **_curve(grid, kept, ip_acc, probe_acc),
        n_iter=n_iter,
        probe_n_iter=int(np.max(probe.n_iter_)),
        converged=conv + [pok],
        C=C,
        warm_start=warm_start,
    )


# --------------------------------------------------------------------------------------
# (a) the published recipe in PyTorch
# --------------------------------------------------------------------------------------


def _published_modules():
    import torch
    from torch import nn

    def init_linear(lin):
        nn.init.trunc_normal_(lin.weight, std=0.02)  # timm trunc_normal_, as model.py
        nn.init.constant_(lin.bias, 0)

    class LinearCLS(nn.Module):
        """The published probe (model.Linear_CLS): one Linear on the raw features."""

        def __init__(self, d, K):
            super().__init__()
            self.fc_cls = nn.Linear(d, K)
            init_linear(self.fc_cls)

        def forward(self, x):
            return self.fc_cls(x)

    class PrototypeIP(nn.Module):
        """The published IP (model.Prototype_IP): unit(P), LayerNorm(M) with affine, a
        hard top-k on |a| computed on detached values, Linear(M, K). The mask keeps
        k = M - floor(M*s) values (docs/method.md; the published code keeps one fewer)."""

        def __init__(self, P, K, k):
            super().__init__()
            P = torch.as_tensor(np.asarray(P, np.float32))
            self.register_buffer("prototypes", torch.nn.functional.normalize(P, dim=-1))
            self.k = int(k)
            m = P.shape[0]
            self.feat_norm = nn.LayerNorm(m)
            self.fc_cls = nn.Linear(m, K)
            init_linear(self.fc_cls)

        def forward(self, x):
            a = self.feat_norm(x @ self.prototypes.T)
            m = a.shape[1]
            if self.k < m:
                idx = torch.topk(a.detach().abs(), self.k, dim=1, sorted=False).indices
                mask = torch.zeros_like(a).scatter_(1, idx, 1.0)
                a = a * mask
            return self.fc_cls(a)

    return LinearCLS, PrototypeIP


def _train_published(model, Xtr, ytr, Xev, yev, lr, epochs, batch_size, gen):
    """One published fit: Adam(lr), ExponentialLR(0.99) stepped per epoch, CE loss,
    shuffled mini-batches; after every epoch the top-1 accuracy on the eval split;
    returns the best (the published model selection on the evaluation split)."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.99)
    lossf = torch.nn.CrossEntropyLoss()
    n = Xtr.shape[0]
    best = 0.0
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            b = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(Xtr[b]), ytr[b])
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            correct = 0
            for i in range(0, Xev.shape[0], batch_size):
                correct += int((model(Xev[i : i + batch_size]).argmax(1) == yev[i : i + batch_size]).sum())
        best = max(best, correct / Xev.shape[0])
    return best


def published_recipe(
    train_F,
    train_y,
    eval_F,
    eval_y,
    concepts,
    sparsities=DEFAULT_GRID,
    lrs=PUBLISHED_LRS,
    epochs: int = 30,
    measure_epochs: int | None = None,
    batch_size: int = 1024,
    seed: int = 0,
):
    """Opponent (a): the published recipe (ssfgunner/IIS, IP_training/) in PyTorch, CPU.

    For every lr in ``lrs``: the probe (``Linear_CLS``: one Linear on the *raw*
    features, as published) and, for every ratio, ``Prototype_IP`` (unit prototypes,
    ``LayerNorm(M)`` with learnable affine, hard top-k of |a| on detached values with
    k = M - floor(M*s), Linear(M, K)); weights trunc-normal(0.02), bias 0; Adam (no
    weight decay), ``ExponentialLR(gamma=0.99)`` stepped per epoch, batch 1024 shuffled,
    ``epochs`` epochs, top-1 eval accuracy after every epoch, the best epoch kept, and
    the best lr kept: i.e. 3 x (1 + len(grid)) fits, model selection on the eval split
    as the published code does (docs/method.md section 4 records why iis does not).

    Honest-opponent choices (each makes (a) *faster* than the published script): data
    already in memory as float32 tensors and batched by index slicing (the published
    script uses a per-sample DataLoader with 4 workers); eval computes top-1 with argmax
    (the published script computes softmax and a NumPy argsort for top-5 too).

    ``measure_epochs`` < ``epochs`` runs only that many epochs per fit and extrapolates
    the time linearly to ``epochs`` (per-epoch cost is constant); the result is then
    marked ``extrapolated=True`` and its accuracies come from the truncated runs.
    """
    import torch

    LinearCLS, PrototypeIP = _published_modules()
    run_epochs = epochs if not measure_epochs else min(int(measure_epochs), epochs)
    t_all = time.perf_counter()
    Xtr = torch.from_numpy(np.ascontiguousarray(train_F, dtype=np.float32))
    Xev = torch.from_numpy(np.ascontiguousarray(eval_F, dtype=np.float32))
    ytr = torch.from_numpy(np.asarray(train_y, dtype=np.int64))
    yev = torch.from_numpy(np.asarray(eval_y, dtype=np.int64))
    K = int(max(int(ytr.max()), int(yev.max())) + 1)
    m = concepts.shape[0]
    grid = sorted(float(s) for s in sparsities)
    best_probe, best_ip = 0.0, [0.0] * len(grid)
    fit_times = []
    for lr in lrs:
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        t = time.perf_counter()
        best_probe = max(best_probe, _train_published(LinearCLS(Xtr.shape[1], K), Xtr, ytr, Xev, yev, lr, run_epochs, batch_size, gen))
        fit_times.append(("probe", lr, time.perf_counter() - t))
        for j, s in enumerate(grid):
            torch.manual_seed(seed)
            t = time.perf_counter()
            model = PrototypeIP(concepts, K, keep_count(m, s))
            best_ip[j] = max(best_ip[j], _train_published(model, Xtr, ytr, Xev, yev, lr, run_epochs, batch_size, gen))
            fit_times.append((s, lr, time.perf_counter() - t))
    measured = time.perf_counter() - t_all
    scale = epochs / run_epochs
    return dict(
        opponent="(a) published recipe (PyTorch CPU, Adam)",
        total_s=measured * scale,
        measured_s=measured,
        extrapolated=scale != 1.0,
        epochs=epochs,
        measured_epochs=run_epochs,
        n_fits=len(fit_times),
        timings={"fits": sum(f[2] for f in fit_times) * scale, "setup": (measured - sum(f[2] for f in fit_times)) * scale},
        **_curve(grid, [keep_count(m, s) for s in grid], best_ip, best_probe),
        lrs=list(lrs),
        torch_threads=torch.get_num_threads(),
    )


# --------------------------------------------------------------------------------------
# (c) glm-saga, as the published Text path runs it
# --------------------------------------------------------------------------------------


def _saga_fit(X, y, Xev, yev, K, n_iters, batch_size, step_size, lam, seed):
    """One glm_saga call with the published Text path's arguments; returns
    (eval accuracy, converged, seconds)."""
    import torch
    from glm_saga.elasticnet import IndexedTensorDataset, glm_saga
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    Xe = torch.from_numpy(np.ascontiguousarray(Xev, dtype=np.float32))
    ye = torch.from_numpy(np.asarray(yev, dtype=np.int64))
    loader = DataLoader(IndexedTensorDataset(Xt, yt), batch_size=batch_size, shuffle=True)
    val_loader = DataLoader(TensorDataset(Xe, ye), batch_size=batch_size, shuffle=False)
    linear = torch.nn.Linear(Xt.shape[1], K)
    linear.weight.data.zero_()
    linear.bias.data.zero_()
    metadata = {"max_reg": {"nongrouped": lam}}
    buf = io.StringIO()
    t = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
        warnings.simplefilter("ignore")  # F.softmax without dim, once per batch
        out = glm_saga(
            linear, loader, step_size, n_iters, 0.99, epsilon=1, k=1, val_loader=val_loader,
            do_zero=False, metadata=metadata, n_ex=Xt.shape[0], n_classes=K,
        )
    secs = time.perf_counter() - t
    W, b = out["path"][0]["weight"], out["path"][0]["bias"]
    with torch.no_grad():
        acc = float(((Xe @ W.T + b).argmax(1) == ye).float().mean())
    return acc, "did not converge" not in buf.getvalue(), secs


def glm_saga_recipe(
    train_F,
    train_y,
    eval_F,
    eval_y,
    concepts,
    sparsities=DEFAULT_GRID,
    n_iters: int = 1000,
    batch_size: int = 256,
    step_size: float = 0.1,
    normalize: str = "layernorm",
    seed: int = 0,
):
    """Opponent (c): the PyPI ``glm-saga`` solver as the published Text path runs it.

    For every ratio: the NumPy reference masked activations (as (b)) and
    ``glm_saga(linear, DataLoader(IndexedTensorDataset, batch 256, shuffled), 0.1,
    n_iters=1000, alpha=0.99, epsilon=1, k=1, val_loader=..., do_zero=False,
    metadata={'max_reg': {'nongrouped': lam}})`` from a zero-initialised
    ``nn.Linear`` -- the exact call of IP_training/IP_Text_training.py -- with the
    penalty at zero (lam = 1e-30: glm_saga takes log10 of it, so 0 itself raises).
    The probe: the same call on the raw features standardised with train mean/std
    (glm-saga requires standardised input). SAGA stops when one step moves the
    weights by <= 1e-4 or after ``n_iters`` epochs (``converged`` says which).

    ``n_iters`` < 1000 caps the epochs: a fit that hits the cap without converging then
    gives a lower bound of the published cost (``capped=True``).
    """
    t_all = time.perf_counter()
    lam = 1e-30
    K = int(max(int(np.max(train_y)), int(np.max(eval_y))) + 1)
    tm = {}
    t = time.perf_counter()
    Atr = np_activations(train_F, concepts, normalize)
    Aev = np_activations(eval_F, concepts, normalize)
    tm["project"] = time.perf_counter() - t
    m = Atr.shape[1]
    grid = sorted(float(s) for s in sparsities)
    ip_acc, conv = [], []
    tm["mask"] = tm["fit_ip"] = 0.0
    for s, k, Mtr, Mev in _masked_splits(Atr, Aev, grid, tm):
        acc, ok, secs = _saga_fit(Mtr, train_y, Mev, eval_y, K, n_iters, batch_size, step_size, lam, seed)
        tm["fit_ip"] += secs
        ip_acc.append(acc)
        conv.append(ok)
    t = time.perf_counter()
    Ztr, Zev = _standardized(train_F, eval_F)
    probe_acc, pok, _ = _saga_fit(Ztr, train_y, Zev, eval_y, K, n_iters, batch_size, step_size, lam, seed)
    tm["probe"] = time.perf_counter() - t
    conv.append(pok)
    capped = n_iters < 1000 and not all(conv)
    return dict(
        opponent="(c) glm-saga (published Text path, lam=0)",
        total_s=time.perf_counter() - t_all,
        timings=tm,
        **_curve(grid, [keep_count(m, s) for s in grid], ip_acc, probe_acc),
        converged=conv,
        n_iters=n_iters,
        capped=capped,
    )


# --------------------------------------------------------------------------------------
# (d) projection throughput
# --------------------------------------------------------------------------------------


def _best_time(fn, repeat):
    best = float("inf")
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def numpy_projection(F: np.ndarray, P: np.ndarray, repeat: int = 3):
    """Opponent (d1): NumPy ``F @ unit(P).T`` on the same arrays (unit(P) precomputed
    in F's dtype, not timed). Best of ``repeat``; GFLOP/s = 2*N*d*M / seconds."""
    Pu = unit_rows(P, F.dtype)
    PT = Pu.T
    secs = _best_time(lambda: F @ PT, repeat)
    n, d = F.shape
    return dict(seconds=secs, gflops=2.0 * n * d * Pu.shape[0] / secs / 1e9, shape=[n, d, int(Pu.shape[0])], dtype=str(F.dtype))


def sgemm_peak(n: int = 4096, repeat: int = 3, seed: int = 0):
    """Opponent (d2): the machine's sgemm peak, GFLOP/s of a square float32 ``A @ B``
    (n x n, NumPy's BLAS), best of ``repeat`` after one warm-up."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    A @ B
    secs = _best_time(lambda: A @ B, repeat)
    return dict(seconds=secs, gflops=2.0 * n**3 / secs / 1e9, n=n)
