"""Parity with diffusers' own pipelines: tiny random-weight pipelines saved here (tests/tiny_pipelines.py;
nothing downloaded), run by diffusers (``output_type='latent'``, or the latents its VAE gets where the
pipeline has no latent output: DiT) and by the harness (the folder loaded by
:func:`models.diffusers_pipelines.load_pipeline`, prompts encoded by the pipeline's own encoders, the
matching sampler, spacing and time mapping) from the same x_T, in float32.

Each case of :data:`CASES` is a row of the parity table in docs/latent.md; the test reads that table and
asserts the measured relative latent error is within the row's bound and the network calls on both
sides equal the row's NFE (diffusers' denoiser calls counted by a forward hook; the harness's by its
counter, CountingScore). Text encoder and VAE decoder calls are counted apart (the model's tally).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="optional extra scorebench[diffusers] not installed")
pytest.importorskip("transformers", reason="optional extra scorebench[diffusers] not installed")

from models.diffusers_pipelines import load_pipeline  # noqa: E402
from models.guidance import make_guidance  # noqa: E402
from models.tally import CountedModel, Tally  # noqa: E402
from solvers import Problem, SeededNoise, make_sampler  # noqa: E402
from tests import tiny_pipelines  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "latent.md"
PROMPTS = ["a photo of a cat", "two dog sitting on the grass"]

# case -> (pipeline builder, diffusers call kwargs, harness sampler and options, steps)
CASES = {
    "sd_ddim": (tiny_pipelines.sd_pipeline, {}, ("ddim", dict(eta=0.0, schedule="leading", steps_offset=1,
                                                             final_sigma="zero", denoise="tweedie")), 10),
    "dit_dpmpp_2m": (tiny_pipelines.dit_pipeline, {}, ("dpm_solver_pp", dict(
        solver_order=2, schedule="linspace_n1", final_sigma="zero", lower_order_final=False, denoise="tweedie")), 8),
    "sd3_flow_euler": (tiny_pipelines.sd3_pipeline, dict(height=16, width=16),
                       ("pf_euler", dict(schedule="uniform", shift=3.0)), 8),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {name: build(root / name) for name, (build, *_) in CASES.items()}


def doc_rows() -> dict[str, dict]:
    """case -> {'bound', 'nfe_harness', 'nfe_diffusers'} from docs/latent.md's parity table."""
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`(\w+)`\s*\|[^|]*\|\s*≤ ([0-9.e-]+)\s*\|[^|]*\|\s*(\d+)\s*\|\s*(\d+)\s*\|", line)
        if m:
            rows[m.group(1)] = {"bound": float(m.group(2)), "nfe_harness": int(m.group(3)),
                                "nfe_diffusers": int(m.group(4))}
    return rows


def rel(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def diffusers_latents(name: str, folder: Path, steps: int, x_T: torch.Tensor, scale: float = 1.0):
    """(final latents, denoiser calls) of diffusers' own pipeline at ``guidance_scale`` (1: no CFG)."""
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True, text_encoder_3=None,
                                                       tokenizer_3=None) if name.startswith("sd3") else \
        diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    net = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    calls = []
    net.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    kwargs = CASES[name][1]
    with torch.no_grad():
        if name.startswith("dit"):  # DiTPipeline has no latent output: keep what its VAE gets
            seen = {}
            decode = pipe.vae.decode

            def keep(z, *a, **k):
                seen["z"] = z.clone()
                return decode(z, *a, **k)

            pipe.vae.decode = keep
            pipe([3, 7], num_inference_steps=steps, guidance_scale=scale,
                 generator=torch.Generator().manual_seed(1), output_type="pt")
            return seen["z"] * pipe.vae.config.scaling_factor, len(calls)
        out = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=scale, latents=x_T.clone(), output_type="latent",
                   **kwargs)
    return out.images, len(calls)


def harness_latents(name: str, folder: Path, steps: int, x_T: torch.Tensor, scale: float | None = None):
    """(final latents, NFE, the model's tally, the model, the run's tally) of the harness on the same folder
    from the same x_T; with ``scale``: classifier-free guidance (models.guidance), the denoiser counted."""
    model = load_pipeline(folder)
    cond = torch.tensor([3, 7]) if name.startswith("dit") else model.encode_prompts(PROMPTS)
    solver, options = CASES[name][2]
    sampler = make_sampler(solver, n_steps=steps, **options)
    tally = Tally()
    score = CountedModel(model, tally, "denoiser")
    if scale is not None:
        score = make_guidance("cfg", score, scale)
    with torch.no_grad():
        sol = sampler.sample(Problem(score).conditioned(cond), x_T.clone(), SeededNoise(range(2)))
    return sol.x, sol.stats.nfe, model.tally.snapshot(), model, tally.snapshot()


@pytest.mark.parametrize("name", sorted(CASES))
def test_latents_match_diffusers_pipeline(name, folders):
    steps = CASES[name][3]
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))  # DiTPipeline's draw with seed 1
    ref, calls = diffusers_latents(name, folders[name], steps, x_T)
    x, nfe, tally, model, _ = harness_latents(name, folders[name], steps, x_T)
    err = rel(x, ref)
    print(f"| `{name}` | max rel. latent error {err:.1e} | NFE harness {nfe} | diffusers {calls} |")
    row = doc_rows()[name]
    assert err <= row["bound"] <= 1e-4
    assert nfe == calls == row["nfe_harness"] == row["nfe_diffusers"] == steps
    # text encoders counted apart from NFE: one call per encoder for the batch of prompts
    encoders = {"sd": 1, "sd3": 2, "dit": 0}[name.split("_")[0]]
    assert tally.get("text_encoder", {"calls": 0})["calls"] == encoders
    if encoders:
        assert tally["text_encoder"]["rows"] == encoders * len(PROMPTS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cfg_latents_match_diffusers_pipeline(name, folders):
    """Classifier-free guidance at scale 4: the pipeline's CFG (negative "" / null class, one batched call of
    2B rows per step) against the harness's wrapper (models.guidance, one forward of 2B rows per guided
    evaluation) around the same model: latents within the table's bound, NFE equal, the denoiser's rows 2B."""
    steps = CASES[name][3]
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ref, calls = diffusers_latents(name, folders[name], steps, x_T, scale=4.0)
    x, nfe, _, _, networks = harness_latents(name, folders[name], steps, x_T, scale=4.0)
    err = rel(x, ref)
    print(f"| `{name}_cfg4` | max rel. latent error {err:.1e} | NFE harness {nfe} | diffusers {calls} |")
    row = doc_rows()[f"{name}_cfg4"]
    assert err <= row["bound"] <= 1e-4
    assert nfe == calls == row["nfe_harness"] == row["nfe_diffusers"] == steps
    assert networks["denoiser"] == {"calls": steps, "rows": 2 * 2 * steps}


def test_decoded_images_match_the_pipeline(folders):
    """The harness's VAE decode (chunks of one row here) gives DiTPipeline's output_type='pt' images
    ((x/2 + ½) clamped), and counts one vae_decoder call per chunk."""
    pipe = diffusers.DiffusionPipeline.from_pretrained(folders["dit_dpmpp_2m"], local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        images = pipe([3, 7], num_inference_steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(1),
                      output_type="pt").images
    model = load_pipeline(folders["dit_dpmpp_2m"], decode_batch=1)
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    solver, options = CASES["dit_dpmpp_2m"][2]
    with torch.no_grad():
        sol = make_sampler(solver, n_steps=4, **options).sample(Problem(model).conditioned(torch.tensor([3, 7])),
                                                                x_T, SeededNoise(range(2)))
    decoded = model.decoder(sol.x)
    assert decoded.shape == (2, *model.image_shape) == (2, 3, 16, 16)
    assert float(((decoded / 2 + 0.5).clamp(0, 1) - images).abs().max()) < 1e-5
    assert model.tally.snapshot() == {"vae_decoder": {"calls": 2, "rows": 2}}


def test_null_conditions_are_the_pipelines_negative_branch(folders):
    """null_condition: DiT's null class (num_embeds_ada_norm), the SD pipeline's embedding of no negative
    prompt, SD3's negative (prompt) embeddings and pooled projections — as each pipeline's CFG uses them."""
    dit = load_pipeline(folders["dit_dpmpp_2m"])
    assert dit.null_condition(3).tolist() == [1000, 1000, 1000]
    dit.conditioned(torch.tensor([1000, 0]))  # the null class is a valid condition row
    with pytest.raises(ValueError, match=r"class indices in 0..1000"):
        dit.conditioned(torch.tensor([1001]))
    for name, n_enc in (("sd_ddim", 1), ("sd3_flow_euler", 2)):
        model = load_pipeline(folders[name])
        null = model.null_condition(2)
        model.null_condition(5)  # encoded once per model: "" and its negative, one call per encoder each
        assert model.tally.snapshot()["text_encoder"] == {"calls": 2 * n_enc, "rows": 2 * n_enc}
        pipe = model.pipe
        if name.startswith("sd3"):
            _, neg, _, npooled = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=True)
            torch.testing.assert_close(null["pooled_projections"], npooled, rtol=1e-5, atol=1e-6)  # batch of 1 vs 2
        else:
            _, neg = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
        torch.testing.assert_close(null["encoder_hidden_states"], neg, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="condition it on one row per sample"):
            model(torch.zeros(2, 4, 8, 8), torch.full((2,), 0.5, dtype=torch.float64))
