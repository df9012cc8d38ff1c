"""Plain-NumPy reference versions of every C kernel (for tests, not for speed).

Each function states the math it computes; the tests compare the kernels
against these over generated edge cases.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np


def unit(p: np.ndarray) -> np.ndarray:
    """unit(P): rows scaled to unit L2 norm."""
    p = np.asarray(p, dtype=np.float64)
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def project(f: np.ndarray, p: np.ndarray, normalize: str = "layernorm",
            stats: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """a = F unit(P)^T, then layernorm (per row), standardize (per column) or none."""
    a = np.asarray(f, dtype=np.float64) @ unit(p).T
    if normalize == "layernorm":
        mu = a.mean(axis=1, keepdims=True)
        var = a.var(axis=1, keepdims=True)
        return (a - mu) / np.sqrt(var + 1e-5)
    if normalize == "standardize":
        mean, std = stats if stats is not None else colstats(a)
        return (a - mean) / std
    return a


def colstats(a: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population std (a constant column: its value and std 1)."""
    a = np.asarray(a, dtype=np.float64)
    const = np.all(a == a[:1], axis=0)  # exactly constant: mean is that value, std 1 (as the kernel)
    std = a.std(axis=0)
    mean = np.where(const, a[0], a.mean(axis=0))
    return mean, np.where(const | (std == 0), 1.0, std)


def keep_count(m: int, s: float, published: bool = False) -> int:
    """k(s) = M - floor(M s) (published: one fewer, never below 0)."""
    return int(min(m, max(0, m - math.floor(m * s + 1e-9) - (1 if published else 0))))


def topk_index(a: np.ndarray, k: int) -> np.ndarray:
    """Per row, the k columns of largest |a|, ties to the lower index, ascending."""
    a = np.asarray(a, dtype=np.float64)
    n, m = a.shape
    # lexsort: primary key -|a| (descending magnitude), secondary the column index
    cols = np.broadcast_to(np.arange(m), (n, m))
    order = np.array([np.lexsort((cols[i], -np.abs(a[i]))) for i in range(n)]).reshape(n, m)
    return np.sort(order[:, :k], axis=1)


def mask(a: np.ndarray, k: int, soft: bool = False) -> np.ndarray:
    """Dense masked activations: hard keeps the top-k values; soft applies
    sign(a) max(|a| - tau, 0) with tau the (k+1)-th largest |a| (0 when k = M)."""
    a = np.asarray(a, dtype=np.float64)
    n, m = a.shape
    out = np.zeros_like(a)
    if k == 0:
        return out
    idx = topk_index(a, k)
    rows = np.arange(n)[:, None]
    if not soft:
        out[rows, idx] = a[rows, idx]
        return out
    mags = -np.sort(-np.abs(a), axis=1)
    tau = mags[:, k] if k < m else np.zeros(n)
    vals = a[rows, idx]
    out[rows, idx] = np.sign(vals) * np.maximum(np.abs(vals) - tau[:, None], 0.0)
    return out


def central_difference(fun, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """The gradient of the scalar ``fun`` at ``x`` by central differences, entry by entry
    (the check of every analytic gradient in the core)."""
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        out[i] = (fun(x + e) - fun(x - e)) / (2 * h)
    return out


def logreg_objective(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, l2: float) -> float:
    """mean_i [logsumexp(z_i) - z_i,y_i] + l2/2 ||W||^2 with z = x W + b."""
    z = np.asarray(x, np.float64) @ w + b
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y]) + 0.5 * l2 * np.sum(w * w))


def logreg_gradient(w, b, x, y, l2):
    """(dW, db) of :func:`logreg_objective`."""
    x = np.asarray(x, np.float64)
    z = x @ w + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return x.T @ p / len(y) + l2 * w, p.mean(axis=0)


def logreg_optimality(w, b, x, y, l2):
    """What the stopping rule promises about a fit (w, b), measured in float64.

    Returns ``(f, grad_max, gap, dist)``: the objective of :func:`logreg_objective`,
    max |grad|, and the two bounds that follow from l2 > 0: the objective is l2-strongly
    convex in W (the bias's curvature comes from the data and is not smaller on a
    non-degenerate design), so with g the gradient, f - f* <= ||g||^2 / (2 l2) = gap and
    ||theta - theta*|| <= ||g|| / l2 = dist. Two fits of one problem then satisfy
    |f_a - f_b| <= max(gap_a, gap_b) and ||theta_a - theta_b|| <= dist_a + dist_b.
    """
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    gw, gb = logreg_gradient(w, b, x, y, l2)
    g = np.concatenate([gw.ravel(), gb])
    norm = float(np.linalg.norm(g))
    return (logreg_objective(w, b, x, y, l2), float(np.abs(g).max()), norm * norm / (2 * l2),
            norm / l2)


def assert_same_optimum(fits, x, y, l2):
    """Fits (w, b) of one l2-regularised problem agree as :func:`logreg_optimality`
    bounds them: objectives within the larger gap, parameters within the summed dist."""
    opt = [logreg_optimality(w, b, x, y, l2) for w, b in fits]
    for i in range(len(fits)):
        for j in range(i):
            (fa, _, ga, da), (fb, _, gb, db) = opt[i], opt[j]
            assert abs(fa - fb) <= max(ga, gb) + 1e-15 * abs(fa), (i, j, fa, fb, ga, gb)
            ta = np.concatenate([np.ravel(fits[i][0]), np.ravel(fits[i][1])]).astype(np.float64)
            tb = np.concatenate([np.ravel(fits[j][0]), np.ravel(fits[j][1])]).astype(np.float64)
            assert np.linalg.norm(ta - tb) <= da + db, (i, j, np.linalg.norm(ta - tb), da + db)
    return opt


def grad_rounding(x, dtype) -> float:
    """Rounding of a gradient entry computed in ``dtype``: eps times the largest column
    mean of |x| (each entry is a mean of x_ij (p_ic - y_ic) with |p - y| <= 1), times 8
    for the chunked sums."""
    return 8 * float(np.finfo(dtype).eps) * max(1.0, float(np.abs(np.asarray(x, np.float64)).mean(0).max()))


def logreg_fit(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float,
               tol: float = 1e-8) -> Tuple[np.ndarray, np.ndarray]:
    """Minimise :func:`logreg_objective` with SciPy's L-BFGS-B in float64."""
    from scipy.optimize import minimize

    x = np.asarray(x, np.float64)
    d, K = x.shape[1], n_classes

    def fun(theta):
        w, b = theta[:d * K].reshape(d, K), theta[d * K:]
        gw, gb = logreg_gradient(w, b, x, y, l2)
        return logreg_objective(w, b, x, y, l2), np.concatenate([gw.ravel(), gb])

    r = minimize(fun, np.zeros(d * K + K), jac=True, method="L-BFGS-B",
                 options={"maxiter": 5000, "gtol": tol, "ftol": 1e-15})
    return r.x[:d * K].reshape(d, K), r.x[d * K:]


def predict(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmax of x W + b (ties: lower class)."""
    return np.argmax(np.asarray(x, np.float64) @ w + b, axis=1)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(y)))


def trapezoid(s: np.ndarray, arr: np.ndarray) -> float:
    """sum_i (arr_i + arr_{i+1}) / 2 (s_{i+1} - s_i)."""
    s, arr = np.asarray(s, np.float64), np.asarray(arr, np.float64)
    return float(np.sum((arr[1:] + arr[:-1]) * 0.5 * np.diff(s)))


def kmeans_assign(x: np.ndarray, centers: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Nearest centre per row (ties: lower index) and the squared distance."""
    x = np.asarray(x, np.float64)
    c = np.asarray(centers, np.float64)
    d2 = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    lab = np.argmin(d2, axis=1)
    return lab, d2[np.arange(len(x)), lab]


def score(ftr, ytr, fev, yev, p, sparsities, normalize="layernorm", soft=False, published=False,
          l2=1e-4):
    """The whole docs/method.md pipeline in NumPy/SciPy (labels already 0..K-1)."""
    K = int(max(ytr.max(), yev.max())) + 1
    s = np.sort(np.asarray(sparsities, np.float64))
    if normalize == "standardize":
        raw = project(ftr, p, "none")
        stats = colstats(raw)
        atr, aev = project(ftr, p, "standardize", stats), project(fev, p, "standardize", stats)
    else:
        atr, aev = project(ftr, p, normalize), project(fev, p, normalize)
    m = atr.shape[1]
    acc = []
    for si in s:
        k = keep_count(m, si, published)
        w, b = logreg_fit(mask(atr, k, soft), ytr, K, l2)
        acc.append(accuracy(predict(mask(aev, k, soft), w, b), yev))
    mu, sd = colstats(ftr)
    w, b = logreg_fit((ftr - mu) / sd, ytr, K, l2)
    probe = accuracy(predict((fev - mu) / sd, w, b), yev)
    arr = np.asarray(acc) / probe
    return {"iis": trapezoid(s, arr), "arr": arr, "ip_accuracy": np.asarray(acc), "probe_accuracy": probe}


def cubed_columns(v: np.ndarray) -> np.ndarray:
    """cub(v) per column: (v - mean)^3 / ||(v - mean)^3|| (zero for a constant column)."""
    x = np.asarray(v, np.float64)
    u = (x - x.mean(axis=0)) ** 3
    nu = np.linalg.norm(u, axis=0)
    return np.divide(u, nu, out=np.zeros_like(u), where=nu > 0)


def text_objective(f: np.ndarray, t: np.ndarray, w: np.ndarray) -> Tuple[np.ndarray, float, np.ndarray]:
    """LF-CBM cos^3 similarity of P = F W^T with the targets T, column by column:
    sim_c = <cub(P_c), cub(T_c)>, J = mean_c sim_c; returns (sim, J, dJ/dW)."""
    f = np.asarray(f, np.float64)
    w = np.asarray(w, np.float64)
    x = f @ w.T
    x = x - x.mean(axis=0)
    u = x ** 3
    nu = np.linalg.norm(u, axis=0)
    tc = cubed_columns(t)
    safe = np.where(nu > 0, nu, 1.0)
    sim = np.where(nu > 0, (u * tc).sum(axis=0) / safe, 0.0)
    c = w.shape[0]
    g = np.where(nu > 0, 3.0 * x ** 2 * (tc - u * sim / safe) / (safe * c), 0.0)
    g = g - g.mean(axis=0)
    return sim, float(sim.mean()), g.T @ f


def text_top5(img: np.ndarray, txt: np.ndarray, top: int = 5) -> np.ndarray:
    """Per concept, the mean of its `top` largest entries of T = unit(img) unit(txt)^T."""
    t = unit(img) @ unit(txt).T
    top = min(top, t.shape[0])
    return -np.sort(-t, axis=0)[:top].mean(axis=0)
