"""FD_DINOv2: the features are the reference protocol's (EDM2 calculate_metrics.py / dgm-eval), from a hub
checkpoint and from a transformers folder alike; nothing is downloaded.

The reference computation is written out here from the protocol facts (not from this project's code):
uint8 RGB → PIL bicubic resize to 224 → /255 → ImageNet mean/std → the torch.hub DINOv2 ViT forward
(patch embedding, position embeddings resampled with scale factor (16 + 0.1)/37, pre-norm blocks with
layer scale, final LayerNorm) → the CLS token. It runs on a small random-weight DINOv2 (128-d, 2
blocks, 14-px patches, a 37 × 37 position grid as ViT-L/14's) stored in the hub's state-dict format.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("transformers")

from bench.metrics import MissingAssetError, make_metric  # noqa: E402
from bench.metrics.dinov2 import (  # noqa: E402
    DINOv2Features,
    _hub_config,
    compute_dinov2_reference,
    find_dinov2,
    hub_to_transformers,
)

DIM, DEPTH, HIDDEN, GRID, PATCH = 128, 2, 256, 37, 14


def hub_state(seed: int = 0) -> dict:
    """A random DINOv2 state dict under the torch.hub model's names and shapes."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.02, mean=0.0):
        return mean + scale * torch.randn(*shape, generator=g)

    s = {"cls_token": rnd(1, 1, DIM, scale=0.5), "pos_embed": rnd(1, 1 + GRID * GRID, DIM, scale=0.5),
         "mask_token": torch.zeros(1, DIM), "patch_embed.proj.weight": rnd(DIM, 3, PATCH, PATCH, scale=0.05),
         "patch_embed.proj.bias": rnd(DIM), "norm.weight": rnd(DIM, scale=0.1, mean=1.0), "norm.bias": rnd(DIM)}
    for i in range(DEPTH):
        p = f"blocks.{i}."
        s |= {p + "norm1.weight": rnd(DIM, scale=0.1, mean=1.0), p + "norm1.bias": rnd(DIM),
              p + "attn.qkv.weight": rnd(3 * DIM, DIM, scale=0.1), p + "attn.qkv.bias": rnd(3 * DIM),
              p + "attn.proj.weight": rnd(DIM, DIM, scale=0.1), p + "attn.proj.bias": rnd(DIM),
              p + "ls1.gamma": rnd(DIM, scale=0.2, mean=0.5), p + "norm2.weight": rnd(DIM, scale=0.1, mean=1.0),
              p + "norm2.bias": rnd(DIM), p + "mlp.fc1.weight": rnd(HIDDEN, DIM, scale=0.1),
              p + "mlp.fc1.bias": rnd(HIDDEN), p + "mlp.fc2.weight": rnd(DIM, HIDDEN, scale=0.1),
              p + "mlp.fc2.bias": rnd(DIM), p + "ls2.gamma": rnd(DIM, scale=0.2, mean=0.5)}
    return s


def reference_features(state: dict, images: torch.Tensor) -> torch.Tensor:
    """The protocol, written out: uint8 [B, 3, H, W] → CLS features [B, DIM] (float64 network)."""
    arr = images.permute(0, 2, 3, 1).numpy()
    x = np.stack([np.asarray(Image.fromarray(a, "RGB").resize((224, 224), Image.Resampling.BICUBIC)) for a in arr])
    x = torch.from_numpy(x).permute(0, 3, 1, 2).double() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).double().view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).double().view(1, 3, 1, 1)
    w = {k: v.double() for k, v in state.items()}
    tok = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=PATCH)  # [B, D, 16, 16]
    n = tok.shape[-1]
    tok = tok.flatten(2).transpose(1, 2)
    pos = state["pos_embed"].float()  # the hub resamples in float32, scale factor (n + 0.1) / GRID
    patch_pos = F.interpolate(pos[:, 1:].reshape(1, GRID, GRID, DIM).permute(0, 3, 1, 2),
                              scale_factor=((n + 0.1) / GRID,) * 2, mode="bicubic", align_corners=False)
    pos = torch.cat([pos[:, :1], patch_pos.permute(0, 2, 3, 1).reshape(1, n * n, DIM)], 1).double()
    h = torch.cat([w["cls_token"].expand(len(x), 1, DIM), tok], 1) + pos
    heads = DIM // 64
    for i in range(DEPTH):
        p = f"blocks.{i}."
        y = F.layer_norm(h, (DIM,), w[p + "norm1.weight"], w[p + "norm1.bias"], eps=1e-6)
        q, k, v = (y @ w[p + "attn.qkv.weight"].T + w[p + "attn.qkv.bias"]).reshape(
            len(x), -1, 3, heads, 64).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(64), -1) @ v
        a = a.transpose(1, 2).reshape(len(x), -1, DIM) @ w[p + "attn.proj.weight"].T + w[p + "attn.proj.bias"]
        h = h + w[p + "ls1.gamma"] * a
        y = F.layer_norm(h, (DIM,), w[p + "norm2.weight"], w[p + "norm2.bias"], eps=1e-6)
        y = F.gelu(y @ w[p + "mlp.fc1.weight"].T + w[p + "mlp.fc1.bias"]) @ w[p + "mlp.fc2.weight"].T + w[
            p + "mlp.fc2.bias"]
        h = h + w[p + "ls2.gamma"] * y
    return F.layer_norm(h, (DIM,), w["norm.weight"], w["norm.bias"], eps=1e-6)[:, 0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The random DINOv2 as a hub .pth file and as a transformers folder (37 x 37 position grid, as
    facebook/dinov2-large stores it)."""
    from transformers import Dinov2Model

    folder = tmp_path_factory.mktemp("dinov2")
    state = hub_state()
    torch.save(state, folder / "dinov2_tiny.pth")
    model = Dinov2Model(_hub_config(state))
    model.load_state_dict(hub_to_transformers(state, set(model.state_dict())), strict=True)
    model.save_pretrained(folder / "hf")
    return state, folder / "dinov2_tiny.pth", folder / "hf"


def _uint8_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False) + 0.1 * torch.randn(
        n, 3, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def test_features_are_the_reference_protocols(weights):
    state, pth, hf = weights
    x = _uint8_images(6, 1)
    expected = reference_features(state, x)
    hub = DINOv2Features(pth, resize="pil")(x).double()
    folder = DINOv2Features(hf, resize="pil")(x).double()
    err = (hub - expected).abs().max().item()
    assert err < 2e-4 * expected.abs().max().item(), err  # float32 network vs the float64 reference
    assert (hub - folder).abs().max().item() <= 1e-5  # hub checkpoint and transformers folder: the same features
    both = (hub - folder).abs().max().item()
    print(f"DINOv2 features vs the written-out protocol: max error {err:.3g} (features up to "
          f"{expected.abs().max().item():.3g}); hub file vs transformers folder {both:.3g}")
    # Each protocol fact matters at this size: the patch tokens' mean instead of CLS, no final norm,
    # transformers' own exact-size position resampling, or EDM2's torch resize all move the features.
    assert (DINOv2Features(pth, resize="torch")(x).double() - expected).abs().max() > 50 * err
    from transformers import Dinov2Model

    plain = Dinov2Model.from_pretrained(str(hf), local_files_only=True).eval()
    img = torch.from_numpy(np.stack([np.asarray(Image.fromarray(a, "RGB").resize((224, 224), Image.Resampling.BICUBIC))
                                     for a in x.permute(0, 2, 3, 1).numpy()])).permute(0, 3, 1, 2).float() / 255
    img = (img - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1)
    with torch.no_grad():
        out = plain(pixel_values=img)
    assert (out.pooler_output.double() - expected).abs().max() > 50 * err  # size=(16, 16) is not the hub's
    assert (out.last_hidden_state[:, 1:].mean(1).double() - expected).abs().max() > 50 * err


def test_grey_images_are_repeated_to_rgb(weights):
    _, pth, _ = weights
    net = DINOv2Features(pth)
    x = _uint8_images(3, 2)[:, :1]
    assert torch.equal(net(x), net(x.repeat(1, 3, 1, 1)))


def test_missing_weights_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOREBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MissingAssetError) as e:
        find_dinov2()
    msg = str(e.value)
    assert "\n" not in msg and "dinov2_vitl14_pretrain.pth" in msg and str(tmp_path / "cache") in msg
    assert "curl -L -o" in msg and "huggingface-cli download facebook/dinov2-large" in msg
    with pytest.raises(MissingAssetError, match="nowhere.pth"):
        find_dinov2(tmp_path / "nowhere.pth")


def test_fd_on_a_folder_of_images_both_ways(weights, tmp_path):
    """FD_DINOv2 between two folders of PNGs: the metric (reference statistics from folder A, samples from
    folder B) and EDM2's formula on the written-out reference features (np.mean / np.cov, scipy sqrtm)."""
    import scipy.linalg

    state, pth, _ = weights
    a, b = _uint8_images(40, 3), _uint8_images(36, 4)
    for name, imgs in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        for i, im in enumerate(imgs):
            Image.fromarray(im.permute(1, 2, 0).numpy(), "RGB").save(tmp_path / name / f"{i:03d}.png")

    def folder(name):
        files = sorted((tmp_path / name).glob("*.png"))
        return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])

    ref = compute_dinov2_reference(folder("a").split(16), tmp_path / "ref.npz", weights=pth)
    metric = make_metric("fd_dinov2", dinov2=str(pth), dinov2_ref=str(ref), seeds="0-35")
    for lo in range(0, 36, 10):
        metric.update(folder("b")[lo: lo + 10], torch.arange(lo, min(lo + 10, 36)))
    value, protocol = metric.compute()

    fa, fb = reference_features(state, folder("a")).numpy(), reference_features(state, folder("b")).numpy()
    mu1, mu2 = fb.mean(0), fa.mean(0)
    s1, s2 = np.cov(fb, rowvar=False), np.cov(fa, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2)
    expected = float(np.real(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root)))
    assert value == pytest.approx(expected, rel=1e-3), (value, expected)
    assert protocol["dinov2_resize"] == "pil" and protocol["num_generated"] == 36 and protocol["num_reference"] == 40
    assert protocol["uncertainty"]["stderr"] > 0
    print(f"FD_DINOv2 (random 128-d DINOv2, 36 vs 40 PNGs): metric {value:.6f}, written-out reference {expected:.6f}")


def test_statistics_of_another_protocol_are_refused(weights, tmp_path):
    _, pth, _ = weights
    ref = compute_dinov2_reference([_uint8_images(8, 5)], tmp_path / "torch_ref.npz", weights=pth, resize="torch")
    with pytest.raises(ValueError, match=r"torch_ref.npz: field 'dinov2_resize' is 'torch', the run asks for 'pil'"):
        make_metric("fd_dinov2", dinov2=str(pth), dinov2_ref=str(ref))
