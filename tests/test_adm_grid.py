"""``kind: adm`` in grids: every registered sampler on the ADM fixture network (records' NFE equal to
the network calls counted outside the harness), classifier guidance with its calls recorded apart,
grids/imagenet64_adm.yaml's dry run and offline error, and bad flags refused at grid load."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import bench.models
from bench.records import read_records
from bench.run import main
from models.adm import load_adm
from models.adm.flags import classifier_flags, classifier_kwargs
from models.adm.unet import EncoderUNetModel
from solvers import SAMPLERS, Problem, SeededNoise, make_sampler, sampler_options
from tests.conftest import ROOT, require_fixture
from tests.test_edm_grid import CHEAP as EDM_CHEAP

F = "adm/A_lin_cond"
CHEAP = {  # the EDM grid test's cheap options, with ADM's respaced grids and its path's needs
    **EDM_CHEAP,
    # score_sde's tables exist on VE/VP/sub-VP only: the exact transition on ADM's path, Euler–Maruyama under
    # pc without the Langevin corrector (whose α_i is the table's).
    "pc": {"n_steps": 3, "predictor": "euler_maruyama", "corrector": "none"},
    "reverse_diffusion": {"n_steps": 4, "discretization": "transition"},
    "adm_ancestral": {"n_steps": 4, "schedule": "adm_respaced"},
    "ddim": {"n_steps": 4, "schedule": "adm_ddim"},
}
# What ADM's discrete path cannot run, and why (score_sde's ancestral step is VE/VP's own; adm_ancestral
# is ADM's on its table).
REFUSED = {"annealed_langevin": "VE path", "ancestral_sampling": "ancestral step (VE, VP)"}


def cheap(name: str) -> dict:
    if name in CHEAP:
        return dict(CHEAP[name])
    return {"n_steps": 4} if "n_steps" in sampler_options(name) else {}


def flags() -> dict:
    return json.loads(require_fixture(f"{F}_flags.json").read_text())["model_and_diffusion_flags"]


def write_grid(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


CLASSIFIER_FLAGS = {"classifier_width": 64, "classifier_depth": 1, "classifier_attention_resolutions": "8",
                    "classifier_channel_mult": "1,1"}


def write_classifier(path, num_classes: int = 4) -> dict:
    """A classifier built by the project's EncoderUNetModel for the 16×16 fixture model, saved as ADM
    saves one (a state_dict); returns its flags."""
    torch.manual_seed(0)
    net = EncoderUNetModel(**classifier_kwargs(classifier_flags({"image_size": 16, **CLASSIFIER_FLAGS}),
                                               num_classes=num_classes))
    torch.save(net.state_dict(), path)
    return dict(CLASSIFIER_FLAGS)


def section(**extra) -> dict:
    return {"kind": "adm", "path": str(require_fixture(f"{F}.pt")), "flags": flags(), "label": "random", **extra}


def test_every_registered_sampler_counts_the_network_calls():
    """In process: each sampler's reported NFE equals the forward passes of the network (a hook on
    the UNetModel, outside every wrapper of the harness)."""
    model = load_adm(require_fixture(f"{F}.pt"), flags())
    calls = []
    model.net.register_forward_hook(lambda *a: calls.append(1))
    nfe = {}
    for name in sorted(set(SAMPLERS) - set(REFUSED)):
        sampler = make_sampler(name, **cheap(name))
        problem = Problem(model).conditioned(torch.tensor([3, 1]))
        noise = SeededNoise([0, 1])
        x = problem.prior_sample(2, noise)
        calls.clear()
        with torch.no_grad():
            sol = sampler.sample(problem, x, noise)
        assert sol.stats.nfe == len(calls) > 0, name
        if sampler.expected_nfe is not None:
            assert sampler.expected_nfe == len(calls), name
        nfe[name] = len(calls)
    print("\nNFE per sampler on the ADM fixture network (counted at the network):", nfe)


def test_every_registered_sampler_runs_in_a_grid(tmp_path, capsys):
    bench.models._CACHE.clear()
    runnable = sorted(set(SAMPLERS) - set(REFUSED))
    grid = write_grid(tmp_path / "adm_all.yaml", {
        "name": "adm-fixture", "model": section(),
        "eval": {"num_samples": 2, "batch_size": 2, "seeds": "0-1", "dtype": "float32", "threads": 1},
        "sweeps": [{"solver": name, **cheap(name)} for name in runnable]})
    out = tmp_path / "out"
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report"]) == 0
    records = {r["solver"]: r for r in read_records(out).values()}
    assert sorted(records) == runnable
    for name, r in records.items():
        assert r["status"] == "ok", (name, r["message"])
        expected = make_sampler(name, **cheap(name)).expected_nfe
        assert r["nfe"] == (expected if expected is not None else r["nfe_per_batch"][0]) > 0, name
        assert r["sde"]["kind"] == "tabulated"
    assert records["adm_ancestral"]["nfe"] == records["ddim"]["nfe"] == 4  # ADM's: one call per respaced step
    # The refused ones: exit 2 at grid load with the reason, nothing written.
    for name, why in REFUSED.items():
        bad = write_grid(tmp_path / f"{name}.yaml", {
            "name": "adm-refused", "model": section(), "eval": {"num_samples": 2, "batch_size": 2, "seeds": "0-1"},
            "sweeps": [{"solver": name, **cheap(name)}]})
        capsys.readouterr()
        assert main(["--grid", str(bad), "--out", str(tmp_path / name)]) == 2
        assert why in capsys.readouterr().err and not (tmp_path / name).exists()


def test_classifier_guided_grid_records_classifier_calls(tmp_path):
    """A classifier built by the project's EncoderUNetModel for the 16×16 fixture model (4 classes),
    saved as ADM saves one: the records carry classifier_nfe per batch beside the denoiser's NFE."""
    bench.models._CACHE.clear()
    clf_flags = write_classifier(tmp_path / "clf.pt")
    model = section(classifier={"path": str(tmp_path / "clf.pt"), "scale": 2.0, "flags": clf_flags})
    grid = write_grid(tmp_path / "guided.yaml", {
        "name": "adm-guided", "model": model,
        "eval": {"num_samples": 4, "batch_size": 2, "seeds": "0-3", "dtype": "float32", "threads": 1},
        "sweeps": [{"solver": "adm_ancestral", "n_steps": 5, "schedule": "adm_respaced"},
                   {"solver": "ddim", "n_steps": 5, "schedule": "adm_ddim"}]})
    out = tmp_path / "out"
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report"]) == 0
    for r in read_records(out).values():
        assert r["status"] == "ok", r["message"]
        assert r["nfe_per_batch"] == [5, 5]
        assert [e["classifier_nfe"] for e in r["stats_extra"]] == [5, 5]
        assert [e["classifier_nfe_per_sample"] for e in r["stats_extra"]] == [5.0, 5.0]
    # A classifier whose classes differ from the model's is refused at grid load.
    torch.save(EncoderUNetModel(**classifier_kwargs(classifier_flags({"image_size": 16, **clf_flags}),
                                                    num_classes=3)).state_dict(), tmp_path / "clf3.pt")
    bad = write_grid(tmp_path / "bad.yaml", {
        "name": "adm-bad", "model": {**model, "classifier": {**model["classifier"], "path": str(tmp_path / "clf3.pt")}},
        "eval": {"num_samples": 2, "batch_size": 2, "seeds": "0-1"}, "sweeps": [{"solver": "ddim", "n_steps": 3}]})
    assert main(["--grid", str(bad), "--out", str(tmp_path / "bad_out")]) == 2
    assert not (tmp_path / "bad_out").exists()


def test_classifier_guidance_is_a_swept_guidance_kind(tmp_path):
    """``guidance: {kind: classifier, scale: [...]}`` (models.guidance's axis): one run per scale on the
    same loaded networks, the scale reaching the gradient, the classifier's forwards and backwards
    counted per network beside the denoiser's calls (one guided evaluation = one NFE)."""
    bench.models._CACHE.clear()
    clf_flags = write_classifier(tmp_path / "clf.pt")
    grid = write_grid(tmp_path / "axis.yaml", {
        "name": "adm-axis", "model": section(classifier={"path": str(tmp_path / "clf.pt"), "flags": clf_flags}),
        "eval": {"num_samples": 4, "batch_size": 2, "seeds": "0-3", "dtype": "float32", "threads": 1},
        "sweeps": [{"solver": "ddim", "n_steps": 5, "schedule": "adm_ddim",
                    "guidance": {"kind": "classifier", "scale": [0.0, 4.0]}}]})
    out = tmp_path / "out"
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report"]) == 0
    records = sorted(read_records(out).values(), key=lambda r: r["guidance"]["scale"])
    assert [r["guidance"] for r in records] == [{"kind": "classifier", "scale": s} for s in (0.0, 4.0)]
    samples = []
    for r in records:
        assert r["status"] == "ok", r["message"]
        assert r["nfe_per_batch"] == [5, 5]
        assert r["networks"] == {name: {"calls": 10, "rows": 20, "calls_per_batch": 5.0, "forwards_per_sample": 5.0}
                                 for name in ("denoiser", "classifier", "classifier_backward")}
        assert r["forwards_per_sample"] == 5.0  # the classifier is listed apart, never added to it
        samples.append(torch.load(out / "runs" / f"{r['run_id']}.samples.pt", weights_only=True))
    assert not torch.allclose(samples[0], samples[1])  # the swept scale reached the gradient


def test_imagenet64_adm_grid_dry_run_and_offline_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCOREBENCH_CKPT_DIR", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    grid = ROOT / "grids" / "imagenet64_adm.yaml"
    assert main(["--grid", str(grid), "--dry-run"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if " adm64" in line]
    assert len(rows) == 50
    assert any(" adm64_guided " in r and " adm_ancestral " in r and "n_steps=250 " in r for r in rows)
    out = tmp_path / "results"
    assert main(["--grid", str(grid), "--out", str(out)]) == 2
    assert not out.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "'64x64_diffusion.pt' not found" in lines[0]
    assert "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/64x64_diffusion.pt" in lines[0]


@pytest.mark.parametrize("change, named", [
    ({"num_channels": 64}, "time_embed.0.weight [128, 32] (flags give [256, 64])"),
    ({"num_res_blocks": 2}, "72 missing: input_blocks.4.0.in_layers.0.weight"),
    ({"noise_schedule": "sqrt"}, "expected one of: linear, cosine"),
    ({"num_chanels": 32}, "unknown ADM flag(s) 'num_chanels'"),
])
def test_flags_that_do_not_match_exit_2_at_grid_load(tmp_path, capsys, change, named):
    grid = write_grid(tmp_path / "g.yaml", {
        "name": "adm-bad", "model": section(flags={**flags(), **change}),
        "eval": {"num_samples": 2, "batch_size": 2, "seeds": "0-1"}, "sweeps": [{"solver": "ddim", "n_steps": 3}]})
    out = tmp_path / "out"
    assert main(["--grid", str(grid), "--out", str(out)]) == 2
    assert not out.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "model" in lines[0], lines


def test_flags_from_a_json_file_and_the_hashed_files():
    """``flags:`` a JSON file (the fixtures' layout, ``model_and_diffusion_flags`` inside): checked with
    the checkpoint, the shape and path known without loading, both files in the run's identity."""
    from bench.kinds import MODEL_KINDS

    kind = MODEL_KINDS["adm"]
    sec = section(flags=str(require_fixture(f"{F}_flags.json")))
    kind.check(sec, True)
    facts = kind.describe(sec, False)
    assert facts.shape == (3, 16, 16) and len(facts.sde.alphas_cumprod) == 1000
    assert set(kind.files(sec)) == {"checkpoint", "flags"}
    with pytest.raises(ValueError, match="field 'label' must be a class index in 0..3"):
        kind.check({**sec, "label": 4}, True)
    with pytest.raises(ValueError, match="class-conditional \\(4 classes\\): field 'label' is required"):
        kind.check({k: v for k, v in sec.items() if k != "label"}, True)
