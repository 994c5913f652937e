"""CLIP score against torchmetrics' ``CLIPScore`` (test-only dependency) on a tiny random CLIP.

The tiny CLIP (32-d, 2 layers, 32 px images, a byte-level vocabulary without merges) is built from a
config and saved as a folder with its processor, which both sides load. Two facts of the environment:

* torchmetrics decides that torchvision is installed from the distribution's metadata, and the
  project's name-only torchvision stand-in (tests/stand_ins/torchvision) has metadata but no module,
  so torchmetrics is imported with that check answering "not installed" (its own fallback then holds);
* torchmetrics 1.9 reads ``get_image_features`` / ``get_text_features`` as tensors (transformers 4);
  transformers 5 returns the projected embedding as ``pooler_output``, so torchmetrics gets the model
  through an adapter that returns it. Everything else — the processor calls, truncation to 77 tokens,
  normalisation, ×100, the mean and its clip at 0 — is torchmetrics' own code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from bench.metrics import make_metric  # noqa: E402


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's byte → printable character table (printable bytes map to themselves, others above 255)."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A random CLIPModel and its CLIPProcessor saved in ``folder``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
                                  "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77,
                                  "bos_token_id": len(vocab) - 2, "eos_token_id": len(vocab) - 1},
                     vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "image_size": 32, "patch_size": 8}, projection_dim=16)
    CLIPModel(cfg).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(folder)
    return folder


PROMPTS = ["a photo of a cat", "a red car on a road", "two dogs", "x " * 60 + "a very long prompt beyond 77 tokens",
           "an empty room", "the sea"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    # torchmetrics accepts a path only if it names one of its known backbones ("openai" for CLIP's)
    return tiny_clip(tmp_path_factory.mktemp("clip") / "openai-tiny-clip")


def _torchmetrics_clipscore(folder: Path):
    """torchmetrics' CLIPScore on ``folder`` (see the module docstring for the two adaptations)."""
    import importlib.metadata

    import lightning_utilities.core.imports as lu

    real = lu._version

    def version(name):
        if name == "torchvision":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    lu._version = version
    try:
        from torchmetrics.multimodal.clip_score import CLIPScore
    finally:
        lu._version = real

    metric = CLIPScore(model_name_or_path=str(folder))

    class Adapter(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.config = model, model.config

        def get_image_features(self, *a, **k):
            out = self.model.get_image_features(*a, **k)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

        def get_text_features(self, *a, **k):
            out = self.model.get_text_features(*a, **k)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

    metric.model = Adapter(metric.model)
    return metric


def test_against_torchmetrics(clip_folder):
    import importlib.util

    if importlib.util.find_spec("torchmetrics") is None:
        pytest.skip("torchmetrics (test extra) is not installed")
    g = torch.Generator().manual_seed(1)
    images = torch.rand(12, 3, 24, 40, generator=g)  # floats in [0, 1]: both sides see the same uint8 images
    u8 = (images * 255 + 0.5).floor().clamp(0, 255).to(torch.uint8)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(12)]
    reference = _torchmetrics_clipscore(clip_folder)
    for lo in (0, 5):  # two updates, as two batches
        hi = 5 if lo == 0 else 12
        with pytest.warns(UserWarning, match="longer than"):
            reference.update(list(u8[lo:hi]), prompts[lo:hi])
    expected = float(reference.compute())
    ours = make_metric("clip_score", clip=clip_folder, prompts=PROMPTS, seeds="0-11")
    ours.update(images[5:], torch.arange(5, 12))
    ours.update(images[:5], torch.arange(0, 5))
    value, protocol = ours.compute()
    per_sample = ours.scores(images, prompts)
    print(f"CLIP score (tiny random CLIP, 12 images): scorebench {value!r}, torchmetrics {expected!r}; per-sample "
          f"100 cos from {per_sample.min():.3f} to {per_sample.max():.3f}")
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert protocol["num_generated"] == 12 and protocol["uncertainty"]["groups"] == 10
    # The clip at 0 is after the mean (torchmetrics), not per sample.
    assert value == pytest.approx(max(float(per_sample.mean()), 0.0), rel=1e-12)
    # Each pair alone, and the pairs with a positive score together (a positive mean): the same numbers.
    pos = [i for i in range(12) if per_sample[i] > 0]
    assert 0 < len(pos) < 12
    for i in range(12):
        one = _torchmetrics_clipscore(clip_folder)
        one.update([u8[i]], [prompts[i]])
        assert float(one.compute()) == pytest.approx(max(float(per_sample[i]), 0.0), rel=1e-5, abs=1e-5), i
    subset = _torchmetrics_clipscore(clip_folder)
    subset.update([u8[i] for i in pos], [prompts[i] for i in pos])
    mine = make_metric("clip_score", clip=clip_folder, prompts=PROMPTS)
    mine.update(images[pos], torch.tensor(pos))
    assert mine.compute()[0] == pytest.approx(float(subset.compute()), rel=1e-5) and mine.compute()[0] > 1
    print(f"CLIP score of the {len(pos)} positive pairs: scorebench {mine.compute()[0]!r}, torchmetrics "
          f"{float(subset.compute())!r}")


def test_missing_backbone_and_prompts(tmp_path, monkeypatch, clip_folder):
    from bench.metrics import MissingAssetError

    monkeypatch.setenv("SCOREBENCH_CACHE", str(tmp_path))
    with pytest.raises(MissingAssetError) as e:
        make_metric("clip_score")
    assert "\n" not in str(e.value) and "huggingface-cli download openai/clip-vit-large-patch14" in str(e.value)
    metric = make_metric("clip_score", clip=clip_folder)
    with pytest.raises(ValueError, match="needs the prompt of every sample"):
        metric.update(torch.rand(2, 3, 8, 8), torch.arange(2))


def test_shards_merge_to_one_pass_with_its_jackknife(clip_folder):
    import io

    from bench.metrics.uncertainty import GROUPS

    g = torch.Generator().manual_seed(2)
    images, ids = torch.rand(30, 3, 16, 16, generator=g), torch.arange(100, 130)
    whole = make_metric("clip_score", clip=clip_folder, prompts=PROMPTS)
    whole.update(images, ids)
    expected, protocol = whole.compute()
    merged = make_metric("clip_score", clip=clip_folder, prompts=PROMPTS)
    for lo, hi in ((20, 30), (0, 7), (7, 20)):
        part = make_metric("clip_score", clip=clip_folder, prompts=PROMPTS)
        part.update(images[lo:hi], ids[lo:hi])
        buf = io.BytesIO()
        torch.save(part.state(), buf)
        buf.seek(0)
        merged.merge(torch.load(buf, weights_only=True))
    value, merged_protocol = merged.compute()
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-12)
    u, mu = protocol["uncertainty"], merged_protocol["uncertainty"]
    assert u["groups"] == GROUPS and mu["replicates"] == pytest.approx(u["replicates"], rel=1e-12, abs=1e-12)
    scores = whole.scores(images, [PROMPTS[int(i) % len(PROMPTS)] for i in ids])
    keep = ids % GROUPS != 0
    assert u["replicates"][0] == pytest.approx(max(float(scores[keep].mean()), 0.0), rel=1e-12, abs=1e-12)
