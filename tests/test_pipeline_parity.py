"""Parity with diffusers' own pipelines: tiny random-weight pipelines saved here (tests/tiny_pipelines.py;
nothing downloaded), run by diffusers (``output_type='latent'``, or the latents its VAE gets where the
pipeline has no latent output: DiT) and by the harness (the folder loaded by
:func:`models.diffusers_pipelines.load_pipeline`, prompts encoded by the pipeline's own encoders, the
matching sampler, spacing and time mapping) from the same x_T, in float32. FLUX: the pipeline takes and
returns packed latents (``FluxPipeline._pack_latents`` / ``_unpack_latents``), the harness the unpacked
x_T; its dynamic shift is the sampler's ``shift`` exp(μ) and its grid's end 1/n the run's ``eps``
(docs/latent.md).

Each case of :data:`CASES` is a row of the parity table in docs/latent.md; the test reads that table and
asserts the measured relative latent error is within the row's bound and the network calls on both
sides equal the row's NFE (diffusers' denoiser calls counted by a forward hook; the harness's by its
counter, CountingScore). Text encoder and VAE decoder calls are counted apart (the model's tally).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="optional extra scorebench[diffusers] not installed")
pytest.importorskip("transformers", reason="optional extra scorebench[diffusers] not installed")

from bench.models import RunScore, run_sde  # noqa: E402
from models.diffusers_pipelines import load_pipeline  # noqa: E402
from models.guidance import make_guidance  # noqa: E402
from models.tally import CountedModel, Tally  # noqa: E402
from solvers import Problem, SeededNoise, make_sampler  # noqa: E402
from tests import tiny_pipelines  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "latent.md"
PROMPTS = ["a photo of a cat", "two dog sitting on the grass"]


def flux_shift(image_seq_len: int, base_len=256, max_len=4096, base_shift=0.5, max_shift=1.15) -> float:
    """exp(μ) of FluxPipeline's resolution-dependent shift (μ linear in the packed sequence length, from
    base_shift at base_len to max_shift at max_len), as docs/latent.md tells a FLUX grid to set it."""
    m = (max_shift - base_shift) / (max_len - base_len)
    return math.exp(image_seq_len * m + base_shift - m * base_len)


# case -> (pipeline builder, diffusers call kwargs, harness sampler and options, steps)
CASES = {
    "sd_ddim": (tiny_pipelines.sd_pipeline, {}, ("ddim", dict(eta=0.0, schedule="leading", steps_offset=1,
                                                             final_sigma="zero", denoise="tweedie")), 10),
    "dit_dpmpp_2m": (tiny_pipelines.dit_pipeline, {}, ("dpm_solver_pp", dict(
        solver_order=2, schedule="linspace_n1", final_sigma="zero", lower_order_final=False, denoise="tweedie")), 8),
    "sd3_flow_euler": (tiny_pipelines.sd3_pipeline, dict(height=16, width=16),
                       ("pf_euler", dict(schedule="uniform", shift=3.0)), 8),
    # SDXL's EulerDiscreteScheduler (leading, offset 1) keeps x/α; the pipeline scales the given latents by its
    # init_noise_sigma, 1/α at the first level, so the same x_T is the harness's x at that level
    "sdxl_euler": (tiny_pipelines.sdxl_pipeline, {}, ("euler", dict(schedule="leading", steps_offset=1)), 10),
    "pixart_dpmpp_2m": (tiny_pipelines.pixart_pipeline, dict(use_resolution_binning=False, clean_caption=False),
                        ("dpm_solver_pp", dict(solver_order=2, schedule="linspace_n1", final_sigma="zero",
                                               lower_order_final=False, denoise="tweedie")), 10),
    # FluxPipeline: σ = linspace(1, 1/n, n) shifted by exp(μ) (dynamic shifting, μ from the 16 packed tokens),
    # the last Euler step to σ = 0 = the harness's final denoise: pf_euler, uniform from T = 1 to eps = 1/n
    "flux_flow_euler": (tiny_pipelines.flux_pipeline, dict(height=16, width=16),
                        ("pf_euler", dict(schedule="uniform", shift=flux_shift(16))), 8),
}


def harness_setup(name: str, steps: int) -> tuple[dict, float | None]:
    """(load_pipeline kwargs, the run's eps or None) of a case."""
    if name.startswith("flux"):  # dynamic shifting off in the model (its shift exp(μ) is on the sampler)
        return {"scheduler": {"use_dynamic_shifting": False}}, 1.0 / steps
    return {}, None


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


def diffusers_latents(name: str, folder: Path, steps: int, x_T: torch.Tensor, scale: float = 1.0, **extra):
    """(final latents, denoiser calls, denoiser rows) of diffusers' own pipeline at ``guidance_scale`` (1: no
    CFG; FLUX: ``true_cfg_scale`` with the negative prompt "", its distilled guidance left at 3.5)."""
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True, text_encoder_3=None,
                                                       tokenizer_3=None) if name.startswith("sd3") else \
        diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    net = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    calls = []
    net.register_forward_pre_hook(lambda m, a, k: calls.append(int((a[0] if a else k["hidden_states"]).shape[0])),
                                  with_kwargs=True)
    kwargs = {**CASES[name][1], **extra}
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
            return seen["z"] * pipe.vae.config.scaling_factor, len(calls), sum(calls)
        if name.startswith("flux"):  # packed latents in and out; guidance_scale is the distilled guidance
            B, C, H, W = x_T.shape
            if scale != 1.0:
                kwargs.update(negative_prompt="", true_cfg_scale=scale)
            out = pipe(PROMPTS, num_inference_steps=steps, latents=pipe._pack_latents(x_T.clone(), B, C, H, W),
                       output_type="latent", **kwargs)
            z = pipe._unpack_latents(out.images, kwargs["height"], kwargs["width"], pipe.vae_scale_factor)
            return z, len(calls), sum(calls)
        out = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=scale, latents=x_T.clone(), output_type="latent",
                   **kwargs)
    return out.images, len(calls), sum(calls)


def harness_latents(name: str, folder: Path, steps: int, x_T: torch.Tensor, scale: float | None = None,
                    options: dict | None = None, **extra):
    """(final latents, NFE, the model's tally, the model, the run's tally) of the harness on the same folder
    from the same x_T; with ``scale``: classifier-free guidance (models.guidance), the denoiser counted;
    ``options`` override the case's sampler options."""
    load, eps = harness_setup(name, steps)
    model = load_pipeline(folder, **load, **extra)
    cond = torch.tensor([3, 7]) if name.startswith("dit") else model.encode_prompts(PROMPTS)
    solver, case_options = CASES[name][2]
    sampler = make_sampler(solver, n_steps=steps, **{**case_options, **(options or {})})
    tally = Tally()
    score = CountedModel(model, tally, "denoiser")
    if scale is not None:
        score = make_guidance("cfg", score, scale)
    if eps is not None:  # the run's eps (a grid's `eps`), as the executor applies it
        score = RunScore(score, run_sde(model, None, eps))
    with torch.no_grad():
        sol = sampler.sample(Problem(score).conditioned(cond), x_T.clone(), SeededNoise(range(2)))
    return sol.x, sol.stats.nfe, model.tally.snapshot(), model, tally.snapshot()


@pytest.mark.parametrize("name", sorted(CASES))
def test_latents_match_diffusers_pipeline(name, folders):
    steps = CASES[name][3]
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))  # DiTPipeline's draw with seed 1
    ref, calls, _ = diffusers_latents(name, folders[name], steps, x_T)
    x, nfe, tally, model, _ = harness_latents(name, folders[name], steps, x_T)
    err = rel(x, ref)
    print(f"| `{name}` | max rel. latent error {err:.1e} | NFE harness {nfe} | diffusers {calls} |")
    row = doc_rows()[name]
    assert err <= row["bound"] <= 1e-4
    assert nfe == calls == row["nfe_harness"] == row["nfe_diffusers"] == steps
    # text encoders counted apart from NFE: one call per encoder for the batch of prompts
    encoders = {"sd": 1, "sd3": 2, "dit": 0, "sdxl": 2, "pixart": 1, "flux": 2}[name.split("_")[0]]
    assert tally.get("text_encoder", {"calls": 0})["calls"] == encoders
    if encoders:
        assert tally["text_encoder"]["rows"] == encoders * len(PROMPTS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cfg_latents_match_diffusers_pipeline(name, folders):
    """Classifier-free guidance at scale 4: the pipeline's CFG (negative "" / null class, one batched call of
    2B rows per step) against the harness's wrapper (models.guidance, one forward of 2B rows per guided
    evaluation) around the same model: latents within the table's bound, NFE equal, the denoiser's rows 2B.
    FLUX: FluxPipeline's true CFG (``true_cfg_scale`` 4, negative prompt ""; the distilled guidance 3.5 in
    both branches) makes two calls of B rows per step, the harness one of 2B rows."""
    steps = CASES[name][3]
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ref, calls, rows = diffusers_latents(name, folders[name], steps, x_T, scale=4.0)
    x, nfe, _, _, networks = harness_latents(name, folders[name], steps, x_T, scale=4.0)
    err = rel(x, ref)
    print(f"| `{name}_cfg4` | max rel. latent error {err:.1e} | NFE harness {nfe} | diffusers {calls} |")
    row = doc_rows()[f"{name}_cfg4"]
    assert err <= row["bound"] <= 1e-4
    per_step = 2 if name.startswith("flux") else 1
    assert nfe == row["nfe_harness"] == steps and calls == row["nfe_diffusers"] == per_step * steps
    assert networks["denoiser"] == {"calls": steps, "rows": 2 * 2 * steps} and rows == 2 * 2 * steps


def test_flux_distilled_guidance_is_the_pipelines_guidance_scale(folders):
    """FLUX's guidance-distilled input at 5 (``distilled_guidance``) is FluxPipeline's ``guidance_scale=5``
    (one call of B rows per step, no CFG), within the table's bound; it moves the latents away from the
    default 3.5's by far more than that bound."""
    name, steps = "flux_flow_euler", CASES["flux_flow_euler"][3]
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ref, calls, rows = diffusers_latents(name, folders[name], steps, x_T, guidance_scale=5.0)
    x, nfe, _, _, networks = harness_latents(name, folders[name], steps, x_T, distilled_guidance=5.0)
    default, *_ = harness_latents(name, folders[name], steps, x_T)
    print(f"flux distilled guidance 5: max rel. latent error {rel(x, ref):.1e}; 3.5 vs 5: {rel(default, ref):.1e}")
    assert rel(x, ref) <= doc_rows()[name]["bound"]
    assert nfe == calls == steps and rows == networks["denoiser"]["rows"] == 2 * steps
    assert rel(default, ref) > 1e-3


def test_pixart_1024_resolution_conditions(tmp_path):
    """At sample size 128 (PixArt-α 1024) the transformer also takes the image's resolution and aspect ratio
    (``PixArtAlphaPipeline`` passes height, width of the image: 256×256 with the tiny VAE): the harness's
    conditions give the pipeline's latents within the table's bound (the 4096-token latents keep this to
    3 steps and no CFG)."""
    name, steps = "pixart_dpmpp_2m", 3
    folder = tiny_pipelines.pixart_pipeline(tmp_path / "pixart1024", sample_size=128)
    x_T = torch.randn(2, 4, 128, 128, generator=torch.Generator().manual_seed(1))
    ref, calls, _ = diffusers_latents(name, folder, steps, x_T)
    x, nfe, _, model, _ = harness_latents(name, folder, steps, x_T)
    assert model.image_size == (256, 256) and model.net.network.net.use_additional_conditions
    print(f"pixart 1024 (size conditions): max rel. latent error {rel(x, ref):.1e}")
    assert rel(x, ref) <= doc_rows()[name]["bound"]
    assert nfe == calls == steps


# case -> [height, width] of the decoded image: not the tiny pipelines' default 16×16, not square
SIZES = {"sd_ddim": (24, 16), "sdxl_euler": (16, 24), "sd3_flow_euler": (24, 16), "pixart_dpmpp_2m": (24, 16),
         "flux_flow_euler": (16, 24)}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_latents_at_a_size_match_the_pipeline(name, folders):
    """``size: [height, width]`` is the pipeline's ``height``/``width``: latents of height/8 × width/8 cells
    (the tiny VAE's scale factor 2 here), SDXL's time ids (original and target size = the image's), FLUX's
    packing and image ids at that size and its shift exp(μ) from the size's packed sequence length (24
    tokens): the pipeline's latents within the table's ``_size`` row, the same denoiser calls."""
    (height, width), steps = SIZES[name], CASES[name][3]
    x_T = torch.randn(2, 4, height // 2, width // 2, generator=torch.Generator().manual_seed(1))
    ref, calls, _ = diffusers_latents(name, folders[name], steps, x_T, height=height, width=width)
    options = {"shift": flux_shift(height // 4 * (width // 4))} if name.startswith("flux") else None
    x, nfe, _, model, _ = harness_latents(name, folders[name], steps, x_T, options=options, size=[height, width])
    err = rel(x, ref)
    print(f"| `{name}_size` | {height}×{width}: max rel. latent error {err:.1e} | NFE {nfe} | diffusers {calls} |")
    assert model.shape == x_T.shape[1:] and model.image_shape == (3, height, width)
    assert model.image_size == (height, width)
    row = doc_rows()[f"{name}_size"]
    assert err <= row["bound"] <= 1e-4
    assert nfe == calls == row["nfe_harness"] == row["nfe_diffusers"] == steps
    if name.startswith("sdxl"):  # the default size's time ids (16, 16) on these latents: far off
        wrong, *_ = harness_latents(name, folders[name], steps, x_T)
        assert rel(wrong, ref) > 1e-3


def test_size_rules_and_shapes(folders):
    """What each pipeline's size must be a multiple of (its check_inputs; the tiny VAE's scale factor 2),
    SD3's position-embedding limit, and the kind's describe() at a size: image and latent shapes."""
    from bench.kinds.diffusers import describe
    from models.diffusers_pipelines import check_size, pipeline_facts

    multiples = {name: pipeline_facts(folders[name])["multiple"] for name in CASES}
    assert multiples == {"sd_ddim": 8, "sdxl_euler": 8, "pixart_dpmpp_2m": 8, "dit_dpmpp_2m": 4,
                         "sd3_flow_euler": 4, "flux_flow_euler": 4}
    with pytest.raises(ValueError, match=r"divisible by 4 .*FluxPipeline.check_inputs: the VAE scale factor 2 x 2"):
        check_size(folders["flux_flow_euler"], [16, 18])
    with pytest.raises(ValueError, match=r"divisible by 4 .*StableDiffusion3Pipeline.check_inputs: the VAE scale "
                                         r"factor 2 x the transformer's patch size 2"):
        check_size(folders["sd3_flow_euler"], [16, 18])
    with pytest.raises(ValueError, match=r"at most 32 per side .*pos_embed_max_size 8"):
        check_size(folders["sd3_flow_euler"], [36, 16])
    flux = {"kind": "diffusers", "path": str(folders["flux_flow_euler"]), "scheduler": {"use_dynamic_shifting": False}}
    facts = describe({**flux, "size": [16, 24]})
    assert facts.shape == (3, 16, 24) and facts.sampled == (4, 8, 12)
    assert describe(flux).shape == (3, 256, 256) and describe(flux).sampled == (4, 128, 128)
    # DiT (no size argument in DiTPipeline): a square size runs, its position embedding recomputed for 12×12
    x_T = torch.randn(2, 4, 12, 12, generator=torch.Generator().manual_seed(1))
    x, nfe, *_ = harness_latents("dit_dpmpp_2m", folders["dit_dpmpp_2m"], 4, x_T, size=[24, 24])
    assert x.shape == x_T.shape and nfe == 4 and bool(x.isfinite().all())


def test_pixart_1024_conditions_follow_the_size(tmp_path):
    """PixArt-α 1024 (sample size 128) at ``size: [128, 192]``: the resolution and aspect-ratio conditions are
    (128, 192) and 2/3 (``PixArtAlphaPipeline`` without resolution binning); latents within the ``_size``
    row's bound, 3 steps (1536 tokens)."""
    name, steps, (height, width) = "pixart_dpmpp_2m", 3, (128, 192)
    folder = tiny_pipelines.pixart_pipeline(tmp_path / "pixart1024", sample_size=128)
    x_T = torch.randn(2, 4, height // 2, width // 2, generator=torch.Generator().manual_seed(1))
    ref, calls, _ = diffusers_latents(name, folder, steps, x_T, height=height, width=width)
    x, nfe, _, model, _ = harness_latents(name, folder, steps, x_T, size=[height, width])
    wrong, *_ = harness_latents(name, folder, steps, x_T)  # the default size's conditions on these latents
    print(f"pixart 1024 at {height}×{width}: max rel. latent error {rel(x, ref):.1e}; "
          f"with the default size's conditions {rel(wrong, ref):.1e}")
    assert model.image_size == (height, width) and model.net.network.net.use_additional_conditions
    assert rel(x, ref) <= doc_rows()[f"{name}_size"]["bound"] < rel(wrong, ref)
    assert nfe == calls == steps


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
