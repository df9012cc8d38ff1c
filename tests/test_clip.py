"""iis.torch.clip_embeddings with a random-init open_clip model (no network, no weights)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

import iis  # noqa: E402
from iis.torch import clip_embeddings  # noqa: E402


@pytest.fixture(scope="module")
def tiny_clip():
    """A real open_clip CLIP (ViT image tower + text transformer), tiny and randomly initialised."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(embed_dim=16,
                 vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    preprocess = open_clip.image_transform(32, is_train=False)
    return model, preprocess


def test_matches_the_model_and_keeps_order(tiny_clip):
    model, _ = tiny_clip
    x = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    concepts = ["red", "striped fur", "wheel", "feathers"]
    img, txt = clip_embeddings(model, x, concepts, batch_size=3)
    assert img.shape == (7, 16) and txt.shape == (4, 16)
    assert img.dtype == np.float32 and txt.dtype == np.float32
    model.eval()
    with torch.no_grad():
        ref_img = model.encode_image(x).numpy()
        ref_txt = model.encode_text(open_clip.tokenize(concepts)).numpy()
    np.testing.assert_allclose(img, ref_img, atol=1e-5)
    np.testing.assert_allclose(txt, ref_txt, atol=1e-5)
    # batch size does not change anything; a float array works like a tensor
    img2, txt2 = clip_embeddings(model, x.numpy(), concepts, batch_size=64,
                                 tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    np.testing.assert_allclose(img2, img, atol=1e-5)
    np.testing.assert_allclose(txt2, txt, atol=1e-5)


def test_pil_images_template_dataset_and_train_flag(tiny_clip, tmp_path):
    from PIL import Image

    model, preprocess = tiny_clip
    rng = np.random.default_rng(0)
    pil = [Image.fromarray((rng.random((40 + i, 50, 3)) * 255).astype(np.uint8)) for i in range(3)]
    path = tmp_path / "im.png"
    pil[0].save(path)
    model.train()
    img, txt = clip_embeddings(model, pil + [str(path)], ["fur"], preprocess=preprocess,
                               template="a photo of {}.")
    assert model.training  # restored
    assert img.shape == (4, 16)
    np.testing.assert_allclose(img[3], img[0], atol=1e-5)  # the path is the same image
    model.eval()
    with torch.no_grad():
        ref = model.encode_text(open_clip.tokenize(["a photo of fur."])).numpy()
    np.testing.assert_allclose(txt, ref, atol=1e-5)
    # a Dataset yielding (image, label)
    data = torch.utils.data.TensorDataset(torch.stack([preprocess(p) for p in pil]), torch.arange(3))
    img_ds, _ = clip_embeddings(model, data, ["fur"], batch_size=2)
    np.testing.assert_allclose(img_ds, img[:3], atol=1e-5)


def test_feeds_the_text_library(tiny_clip):
    model, _ = tiny_clip
    x = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    concepts = ["red", "striped fur", "wheel"]
    img, txt = clip_embeddings(model, x, concepts)
    feats = np.random.default_rng(0).normal(size=(40, 8))
    lib = iis.ConceptLibrary.text(concepts, feats, img, txt, steps=20, top5_cutoff=-1.0,
                                  interpretability_cutoff=-1.0)
    assert lib.kind == "text" and lib.names == concepts and lib.vectors.shape == (3, 8)


def test_bad_inputs(tiny_clip):
    model, _ = tiny_clip
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(TypeError, match="encode_image"):
        clip_embeddings(torch.nn.Linear(3, 3), x, ["a"])
    with pytest.raises(ValueError, match="distinct"):
        clip_embeddings(model, x, ["a", "a"])
    with pytest.raises(ValueError, match="distinct"):
        clip_embeddings(model, x, ["a", " "])
    with pytest.raises(TypeError, match="not one string"):
        clip_embeddings(model, x, "a")
    with pytest.raises(ValueError, match="template"):
        clip_embeddings(model, x, ["a"], template="a photo")
    with pytest.raises(ValueError, match="preprocess"):
        clip_embeddings(model, [object()], ["a"])
    with pytest.raises(ValueError, match="batch_size"):
        clip_embeddings(model, x, ["a"], batch_size=0)
    with pytest.raises(TypeError, match="floating point"):
        clip_embeddings(model, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), ["a"])
