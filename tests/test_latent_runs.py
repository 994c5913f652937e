"""Text-to-image and latent runs through the CLI on tiny random-weight pipelines (tests/tiny_pipelines.py):
prompts read from a file and encoded once per shard by the pipeline's own text encoder, latents
decoded by its VAE before metrics and saved samples, the decode and the encoding timed apart from
sampling, text encoder and VAE decoder calls counted apart from NFE, the prompts file in the run's
identity, and classifier-free guidance (``guidance: {kind: cfg}``) on a text model."""

from __future__ import annotations

import pytest
import torch
import yaml

pytest.importorskip("diffusers", reason="optional extra scorebench[diffusers] not installed")
pytest.importorskip("transformers", reason="optional extra scorebench[diffusers] not installed")

import bench.models  # noqa: E402
from bench.grid import load_grid  # noqa: E402
from bench.records import read_records  # noqa: E402
from bench.run import main  # noqa: E402
from models.diffusers_pipelines import load_pipeline  # noqa: E402
from solvers import Problem, SeededNoise, make_sampler  # noqa: E402
from tests import tiny_pipelines  # noqa: E402

PROMPTS = ["a photo of a cat", "two dog sitting on the grass", "a red car", "the blue table"]


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    return {"sd": tiny_pipelines.sd_pipeline(root / "sd"), "dit": tiny_pipelines.dit_pipeline(root / "dit")}


def grid(tmp_path, model: dict, sweeps=None, **eval_) -> str:
    doc = {"name": "latent", "model": model,
           "eval": {"num_samples": 4, "batch_size": 2, "device": "cpu", "metrics": [], "save_samples": 4, **eval_},
           "sweeps": sweeps or [{"solver": "ddim", "n_steps": 3, "schedule": "leading", "steps_offset": 1}]}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_text_to_image_run_records_encode_decode_and_networks(tmp_path, pipes):
    bench.models._CACHE.clear()
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    model = {"kind": "diffusers", "path": str(pipes["sd"]), "prompts": {"file": str(tmp_path / "p.txt")}}
    out = tmp_path / "out"
    assert main(["--grid", grid(tmp_path, model), "--out", str(out), "--no-progress"]) == 0
    (r,) = read_records(out).values()
    assert r["status"] == "ok", r["message"]
    assert r["nfe"] == 3 and r["batch_sizes"] == [2, 2]
    # prompts: one text-encoder call per batch-sized chunk of the shard; the VAE: one call per batch (decode_batch 8)
    assert r["networks"]["text_encoder"] == {"calls": 2, "rows": 4, "calls_per_batch": 1.0,
                                             "forwards_per_sample": 1.0}
    assert r["networks"]["vae_decoder"]["calls"] == 2 and r["networks"]["vae_decoder"]["rows"] == 4
    assert r["networks"]["denoiser"]["calls"] == 2 * 3 and r["forwards_per_sample"] == 3
    assert r["decode_time_s"] > 0 and r["text_encode_time_s"] > 0
    assert r["spec"]["inputs"]["prompts"] and r["model_section"]["prompts"]["pick"] == "index"
    assert r["prompts"]["first_prompt_indices"] == [0, 1, 2, 3]
    # the saved samples are decoded images, as the harness's sampler and the VAE give them by hand, prompt i
    # for sample i
    (saved,) = (out / "runs").glob("*.samples.pt")
    samples = torch.load(saved, weights_only=True)
    pipe = load_pipeline(pipes["sd"])
    cond = pipe.encode_prompts(PROMPTS[:2])
    sampler = make_sampler("ddim", n_steps=3, schedule="leading", steps_offset=1)
    problem = Problem(pipe)
    noise = SeededNoise(range(2))
    with torch.no_grad():
        x = sampler.sample(problem.conditioned(cond), problem.prior_sample(2, noise), noise).x
        images = pipe.decoder(x)
    assert images.shape == (2, 3, 16, 16) and samples.shape == (4, 3, 16, 16)
    torch.testing.assert_close(samples[:2].float(), images, rtol=1e-4, atol=1e-5)


def test_prompts_file_is_part_of_the_run_identity(tmp_path, pipes):
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    model = {"kind": "diffusers", "path": str(pipes["sd"]), "prompts": {"file": str(tmp_path / "p.txt")}}
    (a,) = load_grid(grid(tmp_path, model)).runs
    (tmp_path / "p.txt").write_text("\n".join(reversed(PROMPTS)) + "\n")
    (b,) = load_grid(grid(tmp_path, model)).runs
    assert a.run_id != b.run_id and a.inputs["prompts"] != b.inputs["prompts"]
    assert a.inputs["checkpoint"] == b.inputs["checkpoint"]


def test_pick_by_seed_and_csv_column(tmp_path, pipes):
    """pick: seed draws each sample's prompt by its seed alone (two prompts serve four samples); a CSV
    column is read by name."""
    from bench.prompts import prompt_indices, read_prompts

    (tmp_path / "p.csv").write_text("id,caption\n1,a photo of a cat\n2,a red car\n")
    spec = {"file": str(tmp_path / "p.csv"), "column": "caption", "pick": "seed"}
    assert read_prompts(spec) == ("a photo of a cat", "a red car")
    idx = prompt_indices(spec, range(0, 4), [10, 11, 12, 13], 2)
    assert idx[2:].tolist() == prompt_indices(spec, range(0, 2), [12, 13], 2).tolist()  # the seed decides
    model = {"kind": "diffusers", "path": str(pipes["sd"]), "prompts": spec}
    bench.models._CACHE.clear()
    out = tmp_path / "out"
    assert main(["--grid", grid(tmp_path, model), "--out", str(out), "--no-progress"]) == 0
    (r,) = read_records(out).values()
    assert r["status"] == "ok" and r["networks"]["text_encoder"]["rows"] == 4


def test_cfg_sweep_on_a_text_model(tmp_path, pipes):
    """guidance: {kind: cfg, scale: [1, 4]} on a text pipeline: the null condition is the pipeline's empty
    prompt; a guided step is one denoiser call of 2B rows (forwards per sample 2 per step)."""
    bench.models._CACHE.clear()
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    model = {"kind": "diffusers", "path": str(pipes["sd"]), "prompts": {"file": str(tmp_path / "p.txt")}}
    sweeps = [{"solver": "ddim", "n_steps": 3, "schedule": "leading", "steps_offset": 1,
               "guidance": {"kind": "cfg", "scale": [1.0, 4.0]}}]
    out = tmp_path / "out"
    assert main(["--grid", grid(tmp_path, model, sweeps), "--out", str(out), "--no-progress"]) == 0
    records = sorted(read_records(out).values(), key=lambda r: r["guidance"]["scale"])
    assert [r["status"] for r in records] == ["ok", "ok"]
    for r in records:
        assert r["nfe"] == 3 and r["networks"]["denoiser"]["rows"] == 2 * 2 * 3 * 2
        assert r["forwards_per_sample"] == 6


def test_flux_run_through_the_cli(tmp_path):
    """A FLUX pipeline (CLIP + T5, guidance-embedding transformer, FLUX.1's dynamic-shifting scheduler config)
    as a grid's model: dynamic shifting off in the section, the shift and FluxPipeline's grid end (eps 1/n)
    on the sweep; FluxPipeline's default 128×128 latents (packed per call), decoded to 256×256 by the tiny
    VAE; both text encoders counted once per chunk of prompts; the distilled guidance is the section's."""
    bench.models._CACHE.clear()
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    folder = tiny_pipelines.flux_pipeline(tmp_path / "flux")
    model = {"kind": "diffusers", "path": str(folder), "prompts": {"file": str(tmp_path / "p.txt")},
             "scheduler": {"use_dynamic_shifting": False}, "distilled_guidance": 4.0}
    sweeps = [{"solver": "pf_euler", "n_steps": 2, "schedule": "uniform", "shift": 3.0, "eps": 0.5}]
    out = tmp_path / "out"
    assert main(["--grid", grid(tmp_path, model, sweeps, num_samples=2, save_samples=0), "--out", str(out),
                 "--no-progress"]) == 0
    (r,) = read_records(out).values()
    assert r["status"] == "ok", r["message"]
    assert r["shape"] == [3, 256, 256] and r["latent_shape"] == [4, 128, 128]
    assert r["nfe"] == 2 and r["networks"]["denoiser"] == {"calls": 2, "rows": 4, "calls_per_batch": 2.0,
                                                           "forwards_per_sample": 2.0}
    assert r["networks"]["text_encoder"]["calls"] == 2 and r["networks"]["text_encoder"]["rows"] == 4
    assert r["networks"]["vae_decoder"]["rows"] == 2
    assert r["schedule"]["t"] == pytest.approx([1.0, 0.75])  # σ = 1, 3·½/(1 + 2·½); then the final denoise
    assert r["model_section"]["distilled_guidance"] == 4.0


def test_flux_run_at_a_size(tmp_path):
    """``size: [16, 24]`` on a FLUX pipeline: 8×12 latents (24 packed tokens per call), decoded to 16×24;
    the record's shape and latent_shape say so, and the size is part of the run's identity."""
    bench.models._CACHE.clear()
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    folder = tiny_pipelines.flux_pipeline(tmp_path / "flux")
    model = {"kind": "diffusers", "path": str(folder), "prompts": {"file": str(tmp_path / "p.txt")},
             "scheduler": {"use_dynamic_shifting": False}, "size": [16, 24]}
    sweeps = [{"solver": "pf_euler", "n_steps": 2, "schedule": "uniform", "shift": 1.585, "eps": 0.5}]
    path = grid(tmp_path, model, sweeps, num_samples=2, save_samples=2)
    out = tmp_path / "out"
    assert main(["--grid", path, "--out", str(out), "--no-progress"]) == 0
    (r,) = read_records(out).values()
    assert r["status"] == "ok", r["message"]
    assert r["shape"] == [3, 16, 24] and r["latent_shape"] == [4, 8, 12] and r["model_section"]["size"] == [16, 24]
    assert r["nfe"] == 2 and r["networks"]["vae_decoder"]["rows"] == 2
    (saved,) = (out / "runs").glob("*.samples.pt")
    assert torch.load(saved, weights_only=True).shape == (2, 3, 16, 24)
    (a,) = load_grid(path).runs
    (b,) = load_grid(grid(tmp_path, {**model, "size": [24, 16]}, sweeps, num_samples=2, save_samples=2)).runs
    (c,) = load_grid(grid(tmp_path, {k: v for k, v in model.items() if k != "size"}, sweeps, num_samples=2,
                          save_samples=2)).runs
    assert len({a.run_id, b.run_id, c.run_id}) == 3 and a.run_id == r["run_id"]


def test_dit_latent_run_with_labels(tmp_path, pipes):
    bench.models._CACHE.clear()
    model = {"kind": "diffusers", "path": str(pipes["dit"]), "label": "random"}
    sweeps = [{"solver": "dpm_solver_pp", "n_steps": 4, "schedule": "linspace_n1"}]
    out = tmp_path / "out"
    assert main(["--grid", grid(tmp_path, model, sweeps), "--out", str(out), "--no-progress"]) == 0
    (r,) = read_records(out).values()
    assert r["status"] == "ok", r["message"]
    assert r["shape"] == [3, 16, 16] and r["latent_shape"] == [4, 8, 8]
    assert "text_encoder" not in r["networks"] and r["networks"]["vae_decoder"]["rows"] == 4


def test_clip_score_of_a_text_to_image_run(tmp_path, pipes):
    """clip_score applies to a run with prompts and scores each decoded image against its own prompt: the
    record's value is the metric on the saved images with prompts 0..3 of the file."""
    from bench.metrics import make_metric
    from tests.test_clip_score import tiny_clip

    bench.models._CACHE.clear()
    clip = tiny_clip(tmp_path / "openai-tiny-clip")
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    model = {"kind": "diffusers", "path": str(pipes["sd"]), "prompts": {"file": str(tmp_path / "p.txt")},
             "data": {"clip": str(clip)}}
    out = tmp_path / "out"
    assert main(["--grid", grid(tmp_path, model, metrics=["clip_score"]), "--out", str(out), "--no-progress"]) == 0
    (r,) = read_records(out).values()
    assert r["status"] == "ok", r["message"]
    (saved,) = (out / "runs").glob("*.samples.pt")
    ref = make_metric("clip_score", clip=clip, data_range=(-1.0, 1.0))
    ref.update(torch.load(saved, weights_only=True), torch.arange(4), prompts=PROMPTS)
    assert abs(r["metrics"]["clip_score"]["value"] - ref.compute()[0]) < 1e-9
    # without prompts the grid refuses it
    dit = {"kind": "diffusers", "path": str(pipes["dit"]), "label": 1, "data": {"clip": str(clip)}}
    sweeps = [{"solver": "dpm_solver_pp", "n_steps": 4}]
    assert main(["--grid", grid(tmp_path, dit, sweeps, metrics=["clip_score"]), "--out", str(tmp_path / "o2"),
                 "--no-progress"]) == 2


@pytest.mark.fixtures
def test_edm2_latent_run_decoded_by_a_vae(tmp_path):
    """kind edm2 with ``vae``: the fixture's network made a latent model (a StabilityVAEEncoder record of 3
    channels, as the network has), its latents decoded as EDM2 does — (x − bias)/scale per channel, then
    the VAE decoder — before the saved samples; the record's shape is the image's."""
    import numpy as np

    from models.edm.unpickle import Persistent, read_snapshot
    from models.edm2 import load_edm2
    from tests.conftest import require_fixture
    from tests.edm2_pickles import dumps_snapshot

    bench.models._CACHE.clear()
    data = read_snapshot(require_fixture("edm2/P_img16_cond.pkl"))
    scale, bias = np.float32([0.12, 0.11, 0.13]), np.float32([-0.7, -0.35, -0.02])
    data["encoder"] = Persistent("StabilityVAEEncoder", {"vae_name": "stabilityai/sd-vae-ft-mse", "scale": scale,
                                                         "bias": bias, "batch_size": 8, "_vae": None,
                                                         "_init_args": (), "_init_kwargs": {}}, "")
    pkl = tmp_path / "latent.pkl"
    pkl.write_bytes(dumps_snapshot(data))
    tiny_pipelines.vae(latent_channels=3).save_pretrained(tmp_path / "vae")
    model = {"kind": "edm2", "path": str(pkl), "label": "random", "vae": str(tmp_path / "vae"), "decode_batch": 3}
    sweeps = [{"solver": "edm_heun", "n_steps": 4}]
    out = tmp_path / "out"
    assert main(["--grid", grid(tmp_path, model, sweeps), "--out", str(out), "--no-progress"]) == 0
    (r,) = read_records(out).values()
    assert r["status"] == "ok", r["message"]
    assert r["shape"] == [3, 32, 32] and r["latent_shape"] == [3, 16, 16] and r["spec"]["inputs"]["vae"]
    assert r["networks"]["vae_decoder"] == {"calls": 2, "rows": 4, "calls_per_batch": 1.0, "forwards_per_sample": 1.0}
    # by hand: the same sampler on the same model, then EDM2's conversion and the VAE
    from models.latent import load_vae
    from solvers.noise import seed_labels

    edm2 = load_edm2(pkl)
    problem = Problem(edm2).conditioned(seed_labels(range(2), 4))
    noise = SeededNoise(range(2))
    with torch.no_grad():
        x = make_sampler("edm_heun", n_steps=4).sample(problem, problem.prior_sample(2, noise), noise).x
        images = load_vae(tmp_path / "vae").decode(edm2.latent_to_vae(x)).sample
    (saved,) = (out / "runs").glob("*.samples.pt")
    torch.testing.assert_close(torch.load(saved, weights_only=True)[:2], images, rtol=1e-4, atol=1e-5)
    # autoguidance by the same snapshot without a VAE: the guide draws the main model's latents, not its
    # decoded images, so the grid's shape check compares latents
    guide = {"kind": "edm2", "path": str(pkl), "label": "random"}
    guided = {"name": "latent", "models": {"main": model, "guide": guide},
              "eval": {"num_samples": 2, "batch_size": 2, "device": "cpu", "metrics": []},
              "sweeps": [{"model": "main", "solver": "edm_heun", "n_steps": 4,
                          "guidance": {"kind": "autoguidance", "scale": 2.0, "guide": "guide"}}]}
    (tmp_path / "guided.yaml").write_text(yaml.safe_dump(guided))
    assert main(["--grid", str(tmp_path / "guided.yaml"), "--out", str(tmp_path / "g"), "--no-progress"]) == 0
    (r,) = read_records(tmp_path / "g").values()
    assert r["status"] == "ok", r["message"]
    assert r["networks"]["guide"]["forwards_per_sample"] == r["networks"]["denoiser"]["forwards_per_sample"] == 7
    assert r["networks"]["vae_decoder"]["forwards_per_sample"] == 1.0


@pytest.mark.fixtures
@pytest.mark.parametrize("change, says", [
    ({"vae": "no_such_vae"}, "VAE folder 'no_such_vae' (field 'vae') not found"),
    ({"decode_batch": 0}, "field 'decode_batch' (latent rows per VAE decoder call) must be an integer >= 1"),
    ({"vae": "VAE"}, "samples pixels (encoder 'StandardRGBEncoder'"),
])
def test_edm2_vae_hostile_input(tmp_path, capsys, change, says):
    """A missing VAE folder, a bad decode_batch, a VAE on a pixel snapshot: exit 2 at load, one line,
    nothing written."""
    from tests.conftest import require_fixture

    tiny_pipelines.vae(latent_channels=3).save_pretrained(tmp_path / "VAE")
    change = {k: str(tmp_path / v) if v == "VAE" else v for k, v in change.items()}
    model = {"kind": "edm2", "path": str(require_fixture("edm2/P_img16_cond.pkl")), "label": "random",
             "vae": str(tmp_path / "VAE"), **change}
    out = tmp_path / "out"
    assert main(["--grid", grid(tmp_path, model, [{"solver": "edm_heun", "n_steps": 4}]), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines
    assert not out.exists()
