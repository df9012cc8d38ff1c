"""iis.torch.extract_features, ImageDataset, models: features equal a manual forward pass."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

if os.environ.get("CI") or os.environ.get("IIS_REQUIRE_TORCH"):
    import torch  # CI installs the torch extra: these tests must run, never skip
else:  # pragma: no cover - local runs without torch
    torch = pytest.importorskip("torch")

import timm  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

import iis.torch as it  # noqa: E402
from iis.datasets import load_digits_images  # noqa: E402

ATOL = 1e-5


def _images(n=6, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def _close(a, b, atol=ATOL, rtol=1e-5):
    a = np.asarray(a, dtype=np.float64)
    b = b.detach().double().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


# ---------------------------------------------------------------------------- torchvision
def test_torchvision_resnet_default_is_pooled_input_of_fc(resnet):
    x = _images()
    feats = it.extract_features(resnet, x, batch_size=4, progress=False)
    assert feats.dtype == np.float32 and feats.shape == (6, 512)
    with torch.no_grad():
        h = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        h = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(h))))
        manual = h.mean(dim=(2, 3))
        logits = resnet(x)
    _close(feats, manual)
    _close(resnet.fc(torch.from_numpy(feats)).detach().numpy(), logits, atol=1e-4)


def test_named_layer_hook_pools_map_and_skips_rest(resnet):
    x = _images(5)
    calls = []
    h = resnet.fc.register_forward_hook(lambda *a: calls.append(1))
    try:
        f3 = it.extract_features(resnet, x, layer="layer3", progress=False)
    finally:
        h.remove()
    assert calls == [], "the forward pass must stop after the hooked layer"
    with torch.no_grad():
        h3 = resnet.layer3(resnet.layer2(resnet.layer1(resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x)))))))
    _close(f3, h3.mean(dim=(2, 3)))
    fmax = it.extract_features(resnet, x, layer="layer3", pool="max", progress=False)
    _close(fmax, h3.amax(dim=(2, 3)))
    fflat = it.extract_features(resnet, x, layer="layer3", pool="flatten", progress=False)
    _close(fflat, h3.reshape(5, -1))
    # The published extractor: the *input* of fc; identical to the default.
    f_in = it.extract_features(resnet, x, layer="fc", layer_io="input", progress=False)
    _close(f_in, it.extract_features(resnet, x, progress=False))


def test_torchvision_classifier_sequential_models():
    torch.manual_seed(1)
    x = _images(3, 64)
    for model in (torchvision.models.mobilenet_v3_small(weights=None, num_classes=5),
                  torchvision.models.efficientnet_b0(weights=None, num_classes=5)):
        model.eval()
        feats = it.extract_features(model, x, progress=False)
        clf = it.find_classifier(model)
        assert clf is model.classifier[-1]
        with torch.no_grad():
            _close(clf(torch.from_numpy(feats)).numpy(), model(x), atol=1e-4)


def test_torchvision_vit_class_token():
    torch.manual_seed(2)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=32, mlp_dim=64, num_classes=4).eval()
    x = _images(4, 32)
    feats = it.extract_features(vit, x, progress=False)
    with torch.no_grad():
        t = vit._process_input(x)
        t = torch.cat([vit.class_token.expand(x.shape[0], -1, -1), t], dim=1)
        manual = vit.encoder(t)[:, 0]
        logits = vit(x)
    _close(feats, manual)
    _close(vit.heads.head(torch.from_numpy(feats)).detach().numpy(), logits, atol=1e-4)
    # A named transformer block gives (N, T, D): auto-pooling takes the class token.
    fb = it.extract_features(vit, x, layer="encoder.layers.encoder_layer_0", progress=False)
    with torch.no_grad():
        t0 = vit.encoder.layers[0](vit.encoder.dropout(t + vit.encoder.pos_embedding))
    _close(fb, t0[:, 0])
    _close(it.extract_features(vit, x, layer="encoder.layers.encoder_layer_0", pool="avg", progress=False),
           t0.mean(dim=1))


# ---------------------------------------------------------------------------------- timm
TIMM_MODELS = [
    ("resnet18", {}, 64),
    ("tf_efficientnet_lite0", {}, 64),
    ("mobilenetv3_small_050", {}, 64),
    ("convnext_atto", {}, 64),
    ("vit_tiny_patch16_224", {"img_size": 64}, 64),
    ("regnetx_002", {}, 64),
]


@pytest.mark.parametrize("name,kwargs,size", TIMM_MODELS, ids=[m[0] for m in TIMM_MODELS])
def test_timm_models_by_name(name, kwargs, size):
    torch.manual_seed(3)
    model = it.load_model(name, pretrained=False, num_classes=7, **kwargs)
    x = _images(3, size)
    feats = it.extract_features(model, x, progress=False)
    with torch.no_grad():
        logits = model(x)
        ref = model.forward_head(model.forward_features(x), pre_logits=True)
    _close(feats, ref)
    # The features are exactly what the classifier sees.
    with torch.no_grad():
        _close(model.get_classifier()(torch.from_numpy(feats)).numpy(), logits, atol=1e-4)


def test_timm_resnet_and_vit_manual_forward():
    torch.manual_seed(4)
    x = _images(3, 64)
    r = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    with torch.no_grad():
        h = r.maxpool(r.act1(r.bn1(r.conv1(x))))
        h = r.layer4(r.layer3(r.layer2(r.layer1(h))))
    _close(it.extract_features(r, x, progress=False), h.mean(dim=(2, 3)))
    v = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=64).eval()
    with torch.no_grad():
        t = v.norm_pre(v._pos_embed(v.patch_embed(x)))
        t = v.norm(v.blocks(t))
    _close(it.extract_features(v, x, progress=False), t[:, 0])
    # A named block of a timm ViT: class token of that block's output.
    with torch.no_grad():
        b1 = v.blocks[1](v.blocks[0](v.norm_pre(v._pos_embed(v.patch_embed(x)))))
    _close(it.extract_features(v, x, layer="blocks.1", progress=False), b1[:, 0])


def test_timm_nhwc_layer_is_pooled_over_space():
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(5)
    swin = SwinTransformer(img_size=32, patch_size=4, window_size=2, embed_dim=24, depths=(1, 1),
                           num_heads=(2, 2), num_classes=5).eval()
    x = _images(3, 32)
    default = it.extract_features(swin, x, progress=False)
    via_norm = it.extract_features(swin, x, layer="norm", progress=False)  # (N, H, W, C) output
    _close(via_norm, default)
    # A conv inside the same model is NCHW: layout= overrides the model's format.
    with torch.no_grad():
        conv = swin.patch_embed.proj(x)
    _close(it.extract_features(swin, x, layer="patch_embed.proj", layout="NCHW", progress=False),
           conv.mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="layout"):
        it.extract_features(swin, x, layout="CHW", progress=False)


# ---------------------------------------------------------------------------------- data
def test_dataset_dataloader_tensor_array_agree(resnet):
    x = _images(7)
    y = torch.arange(7) % 3
    ref = it.extract_features(resnet, x, batch_size=3, progress=False)
    ds = torch.utils.data.TensorDataset(x, y)
    f_ds, lab = it.extract_features(resnet, ds, batch_size=2, progress=False, return_labels=True)
    _close(f_ds, ref)
    assert lab.tolist() == y.tolist()
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)
    _close(it.extract_features(resnet, loader, progress=False), ref)
    _close(it.extract_features(resnet, x.numpy(), batch_size=5, progress=False), ref)

    class DictDS(torch.utils.data.Dataset):
        def __len__(self):
            return 7

        def __getitem__(self, i):
            return {"image": x[i], "label": int(y[i])}

    f_dict, lab2 = it.extract_features(resnet, DictDS(), progress=False, return_labels=True)
    _close(f_dict, ref)
    assert lab2.tolist() == y.tolist()
    with pytest.warns(UserWarning, match="shuffles"):
        it.extract_features(resnet, torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True), progress=False)


def test_out_memmap(tmp_path, resnet):
    x = _images(11)
    ref = it.extract_features(resnet, x, batch_size=4, progress=False)
    path = tmp_path / "feats.npy"
    mm = it.extract_features(resnet, torch.utils.data.TensorDataset(x), batch_size=4, out=path, progress=True)
    assert isinstance(mm, np.memmap) and mm.dtype == np.float32 and mm.shape == (11, 512)
    _close(np.load(path), ref)
    _close(mm, ref)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(x)

    with pytest.raises(ValueError, match="number of samples"):
        it.extract_features(resnet, Stream(), out=tmp_path / "no.npy", progress=False)

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 11

        def __getitem__(self, i):
            if i == 9:
                raise OSError("unreadable image 9")
            return x[i]

    with pytest.raises(OSError, match="unreadable"):
        it.extract_features(resnet, Broken(), batch_size=4, out=tmp_path / "broken.npy", progress=False)
    assert not (tmp_path / "broken.npy").exists(), "a failed run must not leave a half-written file"


def test_eval_mode_no_grad_and_state_restored():
    torch.manual_seed(6)
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    model.train()
    model.layer1.eval()  # a mixed state that must survive the call
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _images(4)
    f1 = it.extract_features(model, x, progress=False)
    assert model.training and not model.layer1.training and model.layer2.training
    for k, v in model.state_dict().items():  # BatchNorm statistics untouched: eval mode was used
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    _close(f1, it.extract_features(model, x, progress=False))


def test_device_argument_moves_back():
    model = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    x = _images(2)
    f = it.extract_features(model, x, device="cpu", progress=False)
    assert f.shape == (2, 512)
    assert next(model.parameters()).device.type == "cpu"
    if torch.cuda.is_available():  # exercised on GPU machines
        fg = it.extract_features(model, x, device="cuda", progress=False)
        np.testing.assert_allclose(fg, f, atol=1e-3, rtol=1e-3)
        assert next(model.parameters()).device.type == "cpu"


def test_bad_input_gives_clear_errors(resnet):
    x = _images(2)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        it.extract_features("resnet", x)
    with pytest.raises(TypeError, match="ImageDataset"):
        it.extract_features(resnet, (x * 100).to(torch.uint8), progress=False)
    with pytest.raises(TypeError, match="ImageDataset"):
        it.extract_features(resnet, np.zeros((2, 3, 8, 8), np.uint8), progress=False)
    with pytest.raises(ValueError, match="did you mean 'layer4'"):
        it.extract_features(resnet, x, layer="layer_4", progress=False)
    with pytest.raises(ValueError, match="pool"):
        it.extract_features(resnet, x, pool="median", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        it.extract_features(resnet, x, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="no labels"):
        it.extract_features(resnet, x, return_labels=True, progress=False)
    with pytest.raises(TypeError, match="DataLoader"):
        it.extract_features(resnet, [x], progress=False)
    with pytest.raises(ValueError, match="final classifier"):
        it.extract_features(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), x, progress=False)
    with pytest.raises(ValueError, match="no samples"):
        it.extract_features(resnet, x[:0], progress=False)


# ---------------------------------------------------------------------------- ImageDataset
def test_image_dataset_normalises_real_images():
    imgs, labels = load_digits_images(size=16, n_per_class=2)
    ds = it.ImageDataset(imgs, labels, size=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    x, y = ds[3]
    manual = (imgs[3].astype(np.float32) / 255.0 - np.array([0.5, 0.4, 0.3], np.float32)) / np.array(
        [0.2, 0.25, 0.5], np.float32)
    np.testing.assert_allclose(x.numpy(), manual.transpose(2, 0, 1), atol=1e-6)
    assert y == int(labels[3])
    grey, _ = load_digits_images(size=16, rgb=False, n_per_class=1)
    g = it.ImageDataset(grey, size=32)[0]
    assert g.shape == (3, 32, 32)
    unnorm = g * torch.tensor(it.IMAGENET_STD).view(3, 1, 1) + torch.tensor(it.IMAGENET_MEAN).view(3, 1, 1)
    assert torch.allclose(unnorm[0], unnorm[1], atol=1e-6) and torch.allclose(unnorm[0], unnorm[2], atol=1e-6)
    with pytest.raises(ValueError, match="channels-last"):
        it.ImageDataset(np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="3 values"):
        it.ImageDataset(imgs, mean=(0.5,))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        it.ImageDataset(imgs.astype(np.float32))[0]
    assert it.data_config(it.load_model("tf_efficientnet_lite0"))["mean"] == (0.5, 0.5, 0.5)
    assert it.data_config(None)["size"] == 224


def test_image_dataset_reads_image_files(tmp_path):
    from PIL import Image

    imgs, labels = load_digits_images(size=16, n_per_class=1)
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for im, path in zip(imgs, paths):
        Image.fromarray(im).save(path)  # lossless
    from_arrays = it.ImageDataset(imgs[:3], labels[:3], size=24)
    from_files = it.ImageDataset([str(paths[0]), *paths[1:]], labels[:3], size=24)
    for i in range(3):
        torch.testing.assert_close(from_files[i][0], from_arrays[i][0])
        assert from_files[i][1] == from_arrays[i][1]


# ------------------------------------------------------------------------------- models
def test_packaged_efficientnet_lite0_is_pretrained_offline():
    from skimage import data

    model = it.efficientnet_lite0()  # strict=True load of the packaged ImageNet weights
    cfg = it.data_config(model)
    ds = it.ImageDataset([data.chelsea(), data.coffee()], size=cfg["size"], mean=cfg["mean"], std=cfg["std"])
    x = torch.stack([ds[0], ds[1]])
    feats = it.extract_features(model, x, progress=False)
    with torch.no_grad():
        probs = model.classifier(torch.from_numpy(feats)).softmax(-1)
    top = probs.argmax(-1).tolist()
    assert 281 <= top[0] <= 285, top  # ImageNet cat classes (tabby .. Egyptian cat)
    assert top[1] == 967, top  # espresso
    assert float(probs[0, 281:286].sum()) > 0.5
    # A re-headed model keeps the backbone.
    m10 = it.efficientnet_lite0(num_classes=10)
    _close(it.extract_features(m10, x, progress=False), feats)
    assert m10.get_classifier().out_features == 10


def test_load_model_pretrained_path_and_errors(monkeypatch, tmp_path):
    import iis.torch._models as models

    seen = {}
    real = timm.create_model

    def fake_create(name, pretrained=False, **kw):
        seen.update(name=name, pretrained=pretrained, **kw)
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", fake_create)
    m = it.load_model("resnet18", pretrained=True, num_classes=4)
    assert seen == {"name": "resnet18", "pretrained": True, "num_classes": 4}
    assert not m.training

    def offline(name, pretrained=False, **kw):
        raise OSError("Name or service not known")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="network"):
        it.load_model("resnet18", pretrained=True)
    monkeypatch.setattr(timm, "create_model", real)
    with pytest.raises(ValueError, match="no model named"):
        it.load_model("resnet_does_not_exist")
    # weights= a local file: strict load.
    src = timm.create_model("resnet18", pretrained=False, num_classes=3)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    dst = it.load_model("resnet18", weights=tmp_path / "w.pth", num_classes=3)
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), k
    # ... and a new classifier when num_classes differs from the file's (the backbone loaded)
    dst5 = it.load_model("resnet18", weights=tmp_path / "w.pth", num_classes=5)
    assert dst5.fc.out_features == 5
    for (k, a), (_, b) in zip(src.state_dict().items(), dst5.state_dict().items()):
        assert k.startswith("fc.") or torch.equal(a, b), k
    with pytest.raises(ValueError, match="either"):
        it.load_model("resnet18", pretrained=True, weights=tmp_path / "w.pth")
    assert models._lite0_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert models._lite0_key("_blocks.0._bn2.bias") == "blocks.0.0.bn2.bias"


def test_import_iis_does_not_import_torch():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    code = ("import sys, iis, iis.elements, iis.datasets; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('iis.torch')]; "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
    # Without torch: the core, elements and datasets still import; iis.torch says what to install.
    code = ("import sys; sys.modules['torch'] = None; import iis, iis.elements, iis.datasets\n"
            "try:\n    import iis.torch\nexcept ImportError as e:\n    print('ImportError:', e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert 'ImportError: iis.torch needs PyTorch: pip install "iis[torch]"' in out.stdout


# ------------------------------------------------------------------------------- spatial
def test_spatial_maps_match_manual_forward(tmp_path, resnet):
    torch.manual_seed(6)
    x = _images(5, 64)
    r = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    with torch.no_grad():
        h = r.maxpool(r.act1(r.bn1(r.conv1(x))))
        h = r.layer4(r.layer3(r.layer2(r.layer1(h))))  # (N, 512, 2, 2)
    ref = h.permute(0, 2, 3, 1).reshape(5, 4, 512)
    sp = it.extract_features(r, x, spatial=True, batch_size=2, progress=False)
    assert sp.shape == (5, 4, 512) and sp.dtype == np.float32
    _close(sp, ref)
    # pooling the map gives the pooled features
    _close(sp.mean(axis=1), torch.from_numpy(it.extract_features(r, x, progress=False)))
    # ViT: patch tokens after the final norm, class token dropped
    v = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=64).eval()
    with torch.no_grad():
        t = v.norm(v.blocks(v.norm_pre(v._pos_embed(v.patch_embed(x)))))
    sv = it.extract_features(v, x, spatial=True, progress=False)
    assert sv.shape == (5, 16, 192)
    _close(sv, t[:, 1:])
    # torchvision: the input of avgpool
    with torch.no_grad():
        g = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(
            resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))))))
    _close(it.extract_features(resnet, x, spatial=True, progress=False), g.flatten(2).transpose(1, 2))
    # float16 into a .npy memmap
    path = tmp_path / "maps.npy"
    mm = it.extract_features(r, torch.utils.data.TensorDataset(x), spatial=True, dtype=np.float16,
                             batch_size=2, out=path, progress=False)
    assert isinstance(mm, np.memmap) and mm.dtype == np.float16 and mm.shape == (5, 4, 512)
    np.testing.assert_allclose(np.load(path).astype(np.float32), ref.numpy(), rtol=2e-3, atol=2e-3)
    # a named layer's map
    with torch.no_grad():
        l3 = r.layer3(r.layer2(r.layer1(r.maxpool(r.act1(r.bn1(r.conv1(x)))))))
    _close(it.extract_features(r, x, layer="layer3", spatial=True, progress=False), l3.flatten(2).transpose(1, 2))


def test_spatial_bad_input():
    r = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    x = _images(2, 32)
    with pytest.raises(ValueError, match="pool"):
        it.extract_features(r, x, spatial=True, pool="max", progress=False)
    with pytest.raises(ValueError, match="dtype"):
        it.extract_features(r, x, spatial=True, dtype=np.int8, progress=False)
    with pytest.raises(ValueError, match="spatial=True needs"):
        it.extract_features(r, x, layer="fc", spatial=True, progress=False)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))
    with pytest.raises(ValueError, match="layer="):
        it.extract_features(mlp, x, spatial=True, progress=False)
