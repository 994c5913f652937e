"""Latent and text-to-image runs (issue 26), on a Stable-Diffusion-like pipeline with random weights built
here (tests/tiny_pipelines.py layout, wider in full size; nothing downloaded):

* ``vae_decode``: the harness's decode of a batch of latents (``model.decoder``: chunks of ``decode_batch``
  rows, the latent → VAE-input conversion, the ``vae_decoder`` count, the float cast and concatenation)
  against the bare ``vae.decode(z / scaling_factor)`` on the same chunks, timed right before each round
  (:class:`~tests.benchmarks.conftest.Interleaved`); fails above ``LATENT_BOUND['vae_decode']``;
* ``text_encode``: ``model.encode_prompts`` (the pipeline's own ``encode_prompt`` with the
  ``text_encoder`` counting hook) against the same pipeline's ``encode_prompt`` uncounted, on a second
  copy without hooks; fails above ``LATENT_BOUND['text_encode']``;
* ``decode_share``: a whole latent run's batch — prompts encoded, DPM-Solver++(2M) at 20 steps, latents
  decoded — and the share of its time the decode and the encoding take (reported, not bounded).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers", reason="optional extra scorebench[diffusers] not installed")
pytest.importorskip("transformers", reason="optional extra scorebench[diffusers] not installed")

from models.diffusers_pipelines import load_pipeline  # noqa: E402
from solvers import Problem, SeededNoise, make_sampler  # noqa: E402
from tests.benchmarks.bounds import LATENT_BOUND, check_bound  # noqa: E402
from tests.benchmarks.conftest import CLOCK, Interleaved  # noqa: E402

PROMPTS = ["a photo of a cat", "two dog sitting on the grass", "a red car", "the blue table"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, full_size):
    """A saved SD-like pipeline: in full size a VAE of widths (64, 128, 128) on 32×32 latents (128×128
    images), a wider UNet and a CLIP text encoder of SD's length (77 tokens, width 256, 6 layers), so that
    the forwards dominate as they do for real models."""
    import diffusers

    from tests import tiny_pipelines as tp

    root = tmp_path_factory.mktemp("bench_pipe")
    tp.sd_pipeline(root)
    if full_size:
        torch.manual_seed(0)
        vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                                      block_out_channels=(64, 128, 128), layers_per_block=1, norm_num_groups=32,
                                      down_block_types=("DownEncoderBlock2D",) * 3,
                                      up_block_types=("UpDecoderBlock2D",) * 3).eval()
        vae.save_pretrained(root / "vae")
        tok = tp.tokenizer(root / "_tok77", max_length=77)
        tok.save_pretrained(root / "tokenizer")
        tp.clip_text(len(tok), hidden=256, layers=6, max_length=77).save_pretrained(root / "text_encoder")
        unet = diffusers.UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
                                              block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=256,
                                              attention_head_dim=8,
                                              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
        unet.save_pretrained(root / "unet")
    return root


def _rounds(full_size: bool) -> int:
    return 9 if full_size else 1


@pytest.mark.parametrize("batch", [8])
def test_vae_decode_vs_bare_decoder(benchmark, folder, batch, full_size):
    model = load_pipeline(folder, decode_batch=4)
    vae, sf = model.decoder.vae, model.decoder.vae.config.scaling_factor
    z = torch.randn(batch, *model.shape, generator=torch.Generator().manual_seed(0))

    def bare() -> float:
        with torch.no_grad():
            t0 = CLOCK()
            for part in z.split(4):
                vae.decode(part / sf)
            return CLOCK() - t0

    limit = Interleaved(bare)
    images = benchmark.pedantic(model.decoder, args=(z,), setup=limit, rounds=_rounds(full_size), warmup_rounds=1)
    assert images.shape == (batch, *model.image_shape)
    assert model.tally.snapshot()["vae_decoder"]["rows"] % batch == 0
    if benchmark.stats is not None:
        benchmark.extra_info.update(batch=batch, decode_batch=4, ratio_to_limit=limit.ratio(benchmark),
                                    bound=LATENT_BOUND["vae_decode"], forward_s=limit.per_call(benchmark, 1))
        check_bound(f"VAE decode of {batch} latents", benchmark.extra_info["ratio_to_limit"],
                    LATENT_BOUND["vae_decode"])


def test_text_encode_vs_the_pipelines_own(benchmark, folder, full_size):
    model = load_pipeline(folder)
    bare_model = load_pipeline(folder)  # a second copy: its hooks removed, the pipeline's encode_prompt alone
    for enc in (bare_model.pipe.text_encoder,):
        enc._forward_pre_hooks.clear()
    prompts = PROMPTS * 4

    def bare() -> float:
        with torch.no_grad():
            t0 = CLOCK()
            bare_model.pipe.encode_prompt(prompts, "cpu", 1, False)
            return CLOCK() - t0

    limit = Interleaved(bare)
    cond = benchmark.pedantic(model.encode_prompts, args=(prompts,), setup=limit, rounds=_rounds(full_size),
                              warmup_rounds=1)
    assert cond["encoder_hidden_states"].shape[0] == len(prompts)
    if benchmark.stats is not None:
        benchmark.extra_info.update(prompts=len(prompts), ratio_to_limit=limit.ratio(benchmark),
                                    bound=LATENT_BOUND["text_encode"])
        check_bound(f"text encoding of {len(prompts)} prompts", benchmark.extra_info["ratio_to_limit"],
                    LATENT_BOUND["text_encode"])


def test_decode_share_of_a_latent_run(benchmark, folder, full_size):
    """One batch of a latent run: encode its prompts, sample (DPM-Solver++(2M), 20 steps), decode; the
    decode's and the encoding's shares of the batch's time go into extra_info (reported in docs/latent.md)."""
    model = load_pipeline(folder)
    batch, steps = (8, 20) if full_size else (2, 3)
    sampler = make_sampler("dpm_solver_pp", n_steps=steps, solver_order=2, schedule="leading_n1", steps_offset=1)
    prompts = (PROMPTS * 4)[:batch]
    parts = {"encode": [], "sample": [], "decode": []}

    def one_batch():
        with torch.no_grad():
            t0 = CLOCK()
            cond = model.encode_prompts(prompts)
            t1 = CLOCK()
            problem = Problem(model).conditioned(cond)
            noise = SeededNoise(range(batch))
            x = sampler.sample(problem, problem.prior_sample(batch, noise), noise).x
            t2 = CLOCK()
            images = model.decoder(x)
            t3 = CLOCK()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            parts[k].append(v)
        return images

    images = benchmark.pedantic(one_batch, rounds=3 if full_size else 1, warmup_rounds=0)
    assert images.shape == (batch, *model.image_shape)
    total = [sum(parts[k][i] for k in parts) for i in range(len(parts["decode"]))]
    benchmark.extra_info.update(
        batch=batch, n_steps=steps, image_shape=list(model.image_shape),
        decode_share=sorted(d / t for d, t in zip(parts["decode"], total, strict=True))[len(total) // 2],
        encode_share=sorted(e / t for e, t in zip(parts["encode"], total, strict=True))[len(total) // 2])
    print(f"\nlatent run batch of {batch}, {steps} steps: decode share {benchmark.extra_info['decode_share']:.3f}, "
          f"text encoding share {benchmark.extra_info['encode_share']:.3f}")
