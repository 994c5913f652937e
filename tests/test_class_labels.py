"""Per-sample class labels for class-conditional models: the labels follow the rows every solver
evaluates, the label of a seed is a function of the seed alone, and ``label:`` in grids.

Ground truth: :class:`~models.gaussian.ClassConditionalMixture`, whose class k is component k of a
Gaussian mixture, so that a sample asked for class k must equal the same seed sampled on component
k alone (an unconditional model that knows nothing of labels). A batch of mixed labels is compared
row by row with those single-row runs, for every registered sampler; a solver that evaluates a
subset of its rows without handing the labels along fails it (shown below by breaking
``select_rows``).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import yaml

import bench.models
import solvers.base
from bench.run import main
from models.accel import ChunkedScore
from models.edm import load_edm
from models.edm.precond import EDMPrecond, VPPrecond
from models.gaussian import ClassConditionalMixture, GaussianMixture
from models.score import CountingScore, conditioned, select_rows
from models.sde import VESDE, VPSDE
from solvers import SAMPLERS, Problem, SeededNoise, make_sampler, seed_labels
from solvers.noise import LABEL_STREAM
from tests.helpers import write_edm_pickle
from tests.test_conformance import options

ROUND_OFF = 1e-12  # float64, as tests/test_batch_invariance.py
K = 3


def cond_mixture(kind: str = "vp", scale: float = 1.0) -> ClassConditionalMixture:
    """Three components on 1×3×3 (a callable grid target too)."""
    sde = VESDE(sigma_max=5.0) if kind == "ve" else VPSDE()
    g = torch.Generator().manual_seed(0)
    means = scale * torch.randn(K, 1, 3, 3, generator=g, dtype=torch.float64)
    return ClassConditionalMixture(GaussianMixture(means, torch.tensor([0.2, 0.3, 0.4]), sde))


def _solve(name: str, model, seeds, labels=None, **extra):
    sampler = make_sampler(name, **{**options(name), **extra})
    problem = Problem(model)
    if labels is not None:
        problem = problem.conditioned(torch.as_tensor(labels))
    noise = SeededNoise(seeds)
    x = problem.prior_sample(len(noise), noise, dtype=torch.float64)
    sol = sampler.sample(problem, x, noise)
    assert sol.status == "ok", (name, sol.message)
    return sampler, sol


def labels_follow_rows(name: str, **extra) -> float:
    """Max |row i of a mixed-label batch − seed i alone on component labels[i]| (batch-coupled samplers:
    each seed alone, conditioned vs on its component)."""
    model = cond_mixture("ve" if name == "annealed_langevin" else "vp")
    seeds = list(range(8))
    labels = [s % K for s in seeds]
    sampler = make_sampler(name, **{**options(name), **extra})
    if sampler.batch_invariant:
        _, batch = _solve(name, model, seeds, labels, **extra)
        rows = [batch.x[i: i + 1] for i in range(len(seeds))]
    else:  # the batch couples its samples: compare at batch 1, the only batch both runs can share
        rows = [_solve(name, model, [s], [k], **extra)[1].x for s, k in zip(seeds, labels)]
    alone = [_solve(name, model.component(k), [s], **extra)[1].x for s, k in zip(seeds, labels)]
    diff = max((a - b).abs().max().item() for a, b in zip(rows, alone))
    spread = (torch.cat(alone) - torch.cat(alone).mean(0)).abs().max().item()
    assert spread > 0.1  # the classes put the samples in different places
    return diff


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_labels_follow_rows_every_sampler(name):
    diff = labels_follow_rows(name)
    print(f"{name}: max |mixed-label batch row - seed alone on its component| = {diff:.3g}")
    assert diff <= ROUND_OFF, f"{name}: row i of a mixed-label batch differs from its class's run by {diff:.3g}"


@pytest.mark.parametrize("name, extra", [("scipy_ode", {"per_sample": True}),
                                         ("torchdiffeq_ode", {"per_sample": True}),
                                         ("adaptive_improved_euler", {"per_sample_eval": False}),
                                         ("adaptive_em", {"per_sample_eval": True})])
def test_labels_follow_rows_variants(name, extra):
    diff = labels_follow_rows(name, **extra)
    print(f"{name} {extra}: max deviation = {diff:.3g}")
    assert diff <= ROUND_OFF


@pytest.mark.parametrize("name, extra", [("adaptive_improved_euler", {}), ("scipy_ode", {"per_sample": True}),
                                         ("torchdiffeq_ode", {"per_sample": True})])
def test_the_check_fails_when_labels_do_not_follow_rows(monkeypatch, name, extra):
    """select_rows handing the first k labels instead of labels[idx]: the samples leave their class.
    (Without select_rows at all the conditioned model refuses the row count: a ValueError.)"""
    def first_rows(model, idx):
        labels = getattr(model, "row_labels", None)
        return model if labels is None else conditioned(model, labels[: len(labels[idx])])

    monkeypatch.setattr(solvers.base, "select_rows", first_rows)
    with pytest.raises(AssertionError):
        assert labels_follow_rows(name, **extra) <= ROUND_OFF
    monkeypatch.setattr(solvers.base, "select_rows", lambda model, idx: model)
    with pytest.raises(ValueError, match=r"8 class labels for a batch of \d rows"):
        labels_follow_rows(name, **extra)


def test_counting_and_chunking_follow_the_labels():
    """A conditioned view counts into its parent's counter; batch splitting hands each chunk its rows."""
    model = cond_mixture()
    labels = torch.tensor([s % K for s in range(8)])
    x = torch.randn(8, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.full((8,), 0.4, dtype=torch.float64)
    ref = conditioned(model, labels)(x, t)
    counter = CountingScore(ChunkedScore(model, max_batch=3))
    view = conditioned(counter, labels)
    assert torch.equal(view(x, t), ref)  # chunks of 3, 3, 2 rows, each with its own labels
    sub = select_rows(view, torch.tensor([6, 1]))
    assert torch.equal(sub(x[[6, 1]], t[:2]), ref[[6, 1]])
    assert (counter.nfe, counter.rows) == (2, 10) and view.nfe == 2
    assert select_rows(counter, torch.tensor([0])) is counter  # no per-sample state: unchanged
    with pytest.raises(ValueError, match="8 class labels for a batch of 2 rows"):
        view(x[:2], t[:2])  # a row subset that skipped select_rows

    class NoLabels:  # a wrapper that cannot pass labels on is refused, not bypassed
        def __init__(self, m):
            self.m, self.sde, self.shape, self.data_range = m, m.sde, m.shape, m.data_range

        def __call__(self, x, t):
            return self.m(x, t)

    with pytest.raises(TypeError, match="NoLabels takes no per-sample class labels"):
        conditioned(CountingScore(NoLabels(model)), labels)


# --- the label of a seed ----------------------------------------------------------------------
def test_label_of_a_seed_is_a_function_of_the_seed_only():
    labels = seed_labels("0-999", 10)
    assert labels.dtype == torch.int64 and labels.shape == (1000,)
    assert torch.equal(labels[100:300], seed_labels(range(100, 300), 10))  # any batch or shard of seeds
    assert torch.equal(labels[[7, 3, 999]], seed_labels([7, 3, 999], 10))  # any order
    assert int(seed_labels([5], 10)) == int(np.random.default_rng([LABEL_STREAM, 5]).integers(10))  # documented
    with pytest.raises(ValueError, match="positive integer"):
        seed_labels([0], 0)


def _chi2_independence(labels: np.ndarray, z0: np.ndarray, D: int) -> float:
    """Pearson's chi-square of the contingency table label × quartile of z₀ ((D − 1)·3 dof)."""
    bins = np.digitize(z0, np.quantile(z0, [0.25, 0.5, 0.75]))
    table = np.zeros((D, 4))
    np.add.at(table, (labels, bins), 1)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def test_seed_labels_are_uniform_and_independent_of_the_noise():
    """Chi-square on 10 000 seeds: uniform over 10 classes (9 dof; p = 0.001 at 27.88), and independent
    of the seed's first noise draw z₀ (label × quartile of z₀, 27 dof; p = 0.001 at 55.48). A label
    taken from the sample's own generator — ⌊10 u⌋ of the first uniform of
    ``torch.Generator().manual_seed(s)`` — fails the second test."""
    n, D = 10_000, 10
    labels = seed_labels(range(n), D).numpy()
    counts = np.bincount(labels, minlength=D)
    chi2_uniform = float(((counts - n / D) ** 2 / (n / D)).sum())
    z0 = SeededNoise(range(n)).normal((n, 1))[:, 0].numpy()
    chi2_indep = _chi2_independence(labels, z0, D)
    print(f"\nseed labels on {n} seeds: counts {counts.tolist()}, chi2 uniform {chi2_uniform:.2f} (9 dof), "
          f"chi2 label x quartile(z0) {chi2_indep:.2f} (27 dof)")
    assert chi2_uniform < 27.88 and chi2_indep < 55.48
    m = 2000
    naive = np.array([int(torch.rand(1, generator=torch.Generator().manual_seed(s)) * D) for s in range(m)])
    chi2_naive = _chi2_independence(naive, z0[:m], D)
    print(f"the same generator's first uniform as the label: chi2 {chi2_naive:.1f} (27 dof)")
    assert chi2_naive > 55.48


# --- a class-conditional EDM network ----------------------------------------------------------
EDM_KW = dict(img_resolution=8, img_channels=3, label_dim=4, model_type="SongUNet", model_channels=16,
              channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])


@pytest.fixture(scope="module")
def cond_edm(tmp_path_factory):
    """A tiny class-conditional DDPM++ SongUNet under EDM (and VP) preconditioning, random weights,
    written as an EDM snapshot (the fixtures hold unconditional networks only)."""
    folder = tmp_path_factory.mktemp("edm_cond")
    paths = {}
    for name, cls in (("edm", EDMPrecond), ("vp", VPPrecond)):
        torch.manual_seed(0)
        net = cls(**EDM_KW).eval()
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
        paths[name] = write_edm_pickle(folder / f"cond_{name}.pkl", net, EDM_KW)
    return paths


@pytest.mark.parametrize("name, extra", [("edm_heun", {"n_steps": 4}), ("dpm_solver_pp", {"n_steps": 4}),
                                         ("euler_maruyama", {"n_steps": 4}),
                                         ("adaptive_improved_euler", {"rtol": 0.5, "atol": 0.5}),
                                         ("scipy_ode", {"rtol": 1e-2, "atol": 1e-2, "per_sample": True})])
@pytest.mark.parametrize("precond", ["edm", "vp"])
def test_edm_labels_follow_rows(cond_edm, precond, name, extra):
    """Per-sample labels on the conditional network (float64) = each seed alone with load_edm(label=k)."""
    path = cond_edm[precond]
    model = load_edm(path, dtype=torch.float64)
    assert model.label_dim == 4
    labels, seeds = [2, 0, 3, 1], [10, 11, 12, 13]
    sampler = make_sampler(name, **extra)
    problem = Problem(model).conditioned(torch.tensor(labels))
    noise = SeededNoise(seeds)
    batch = sampler.sample(problem, problem.prior_sample(4, noise, dtype=torch.float64), noise)
    worst = 0.0
    for i, (s, k) in enumerate(zip(seeds, labels)):
        alone = Problem(load_edm(path, label=k, dtype=torch.float64))
        n1 = SeededNoise([s])
        x1 = sampler.sample(alone, alone.prior_sample(1, n1, dtype=torch.float64), n1).x
        worst = max(worst, ((batch.x[i] - x1[0]).abs().max() / x1.abs().max()).item())
    other = Problem(load_edm(path, label=(labels[0] + 1) % 4, dtype=torch.float64))
    n1 = SeededNoise(seeds[:1])
    elsewhere = sampler.sample(other, other.prior_sample(1, n1, dtype=torch.float64), n1).x
    print(f"{precond} {name}: max |batch row - alone| / max|alone| = {worst:.3g}")
    assert worst <= 1e-10
    assert (batch.x[0] - elsewhere[0]).abs().max() > 1e-3  # the label reaches the network


def test_label_dim_is_read_without_tensors_and_as_safely(cond_edm, tmp_path, monkeypatch):
    """The grid-load check reads the records only (tensors skipped), through the same refusals."""
    import pickle

    from models.edm import UnsafePickleError
    from models.edm.loader import network_label_dim
    from models.edm.unpickle import read_snapshot
    from tests.test_edm import RunsCode

    assert network_label_dim(cond_edm["edm"]) == 4
    record = read_snapshot(cond_edm["edm"], tensors=False)["ema"]
    assert not any(isinstance(v, torch.Tensor) for v in record.state["_parameters"].values())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"ema": RunsCode()}))
    with pytest.raises(UnsafePickleError, match=r"refused global (posix|os|nt)\.system"):
        network_label_dim(tmp_path / "evil.pkl")
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_unconditioned_conditional_network_refuses_to_run(cond_edm):
    model = load_edm(cond_edm["edm"])
    with pytest.raises(ValueError, match="class-conditional \\(4 classes\\) and was called without class labels"):
        model(torch.zeros(1, 3, 8, 8), torch.tensor([0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="class indices in 0..3"):
        model.conditioned(torch.tensor([4]))


# --- grids ------------------------------------------------------------------------------------
def _grid(path, model, sweeps=None, **eval_):
    raw = {"name": "labels", "model": model,
           "eval": {"num_samples": 12, "batch_size": 4, "seeds": "100-111", "threads": 1, "shard_size": 4,
                    "save_samples": 10, **eval_},
           "sweeps": sweeps or [{"solver": "edm_heun", "n_steps": 3}]}
    path.write_text(yaml.safe_dump(raw))
    return path


def _records(out):
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]


def test_grid_run_with_random_labels_on_the_exact_model(tmp_path):
    """bench.run end to end, 3 shards of one batch each, batches split in chunks of 3: every sample lands
    on the component of its seed's label (the means are >= 31 apart, the stds <= 0.4), and the
    record lists the labels."""
    bench.models._CACHE.clear()
    model = {"kind": "callable", "target": "tests.test_class_labels:cond_mixture", "options": {"scale": 8.0},
             "label": "random"}
    sweeps = [{"solver": "adaptive_improved_euler", "rtol": 0.05}, {"solver": "scipy_ode", "per_sample": True,
                                                                      "rtol": 1e-3, "atol": 1e-3},
              {"solver": "edm_heun", "n_steps": 8}]
    grid = _grid(tmp_path / "g.yaml", model, sweeps, save_samples=12, accel={"max_batch": 3})  # + split batches
    out = tmp_path / "out"
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report"]) == 0
    records = _records(out)
    assert len(records) == 3
    want = seed_labels("100-111", K).tolist()
    means = cond_mixture(scale=8.0).mixture.means.reshape(K, -1)
    for r in records:
        assert r["status"] == "ok", r["message"]
        assert r["sample_labels"] == want and r["labels"] == {"label": "random", "label_dim": K,
                                                              "seed_to_label": "solvers.noise.seed_labels"}
        x = torch.load(out / "runs" / f"{r['run_id']}.samples.pt").double().reshape(12, -1)
        nearest = torch.cdist(x, means).argmin(1).tolist()
        assert nearest == want, (r["solver"], nearest, want)


def test_grid_with_labels_on_the_edm_network(tmp_path, cond_edm, capsys):
    bench.models._CACHE.clear()
    base = {"kind": "edm", "path": str(cond_edm["edm"])}
    grid = _grid(tmp_path / "g.yaml", {**base, "label": "random"},
                 [{"solver": "edm_heun", "n_steps": 3}, {"solver": "adaptive_improved_euler", "rtol": 0.5,
                                                          "atol": 0.5}])
    assert main(["--grid", str(grid), "--dry-run"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["run_id", "model", "label", "solver"] and " random " in table[1]
    out = tmp_path / "out"
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress", "--no-report"]) == 0
    random_runs = _records(out)
    assert [r["status"] for r in random_runs] == ["ok", "ok"]
    for r in random_runs:
        assert r["sample_labels"] == seed_labels("100-109", 4).tolist() and r["model_section"]["label"] == "random"
    # A fixed label is another run (the label is part of the identity); its samples differ.
    fixed = _grid(tmp_path / "f.yaml", {**base, "label": 1})
    assert main(["--grid", str(fixed), "--out", str(out), "--no-progress", "--no-report"]) == 0
    (rec,) = [r for r in _records(out) if r["model_section"]["label"] == 1]
    assert rec["status"] == "ok" and rec["sample_labels"] == [1] * 10
    rnd = next(r for r in random_runs if r["solver"] == "edm_heun")
    assert rec["run_id"] != rnd["run_id"]
    a = torch.load(out / "runs" / f"{rec['run_id']}.samples.pt")
    b = torch.load(out / "runs" / f"{rnd['run_id']}.samples.pt")
    same = [i for i, k in enumerate(rnd["sample_labels"]) if k == 1]
    differ = [i for i, k in enumerate(rnd["sample_labels"]) if k != 1]
    assert same and differ
    torch.testing.assert_close(a[same], b[same], rtol=1e-5, atol=1e-5)  # same seed, same class: same sample
    assert all((a[i] - b[i]).abs().max() > 1e-3 for i in differ)


@pytest.mark.parametrize("model, match", [
    ({"label": "cat"}, "field 'label' must be a class index >= 0 or 'random'"),
    ({"label": [1, 2]}, "field 'label' must be a class index >= 0 or 'random'"),
    ({"label": 4}, "field 'label' must be a class index in 0..3 or 'random'"),
    ({}, "is class-conditional \\(4 classes\\): field 'label' is required; expected a class index in 0..3"),
    ({"label": "random", "metrics": ["bpd"]},
     "metric 'bpd' cannot apply to model 'model': the model is class-conditional \\('label'\\)"),
], ids=["not-a-label", "list", "out-of-range", "missing", "bpd"])
def test_label_errors_at_load(tmp_path, capsys, cond_edm, model, match):
    grid = _grid(tmp_path / "bad.yaml", {"kind": "edm", "path": str(cond_edm["edm"]), **model})
    out = tmp_path / "out"
    assert main(["--grid", str(grid), "--out", str(out), "--no-progress"]) == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {grid} {'sweeps[0]' if 'bpd' in match else 'model'}: ")
    assert re.search(match, err[0]), err[0]


def test_label_on_an_unconditional_network_is_refused_at_load(tmp_path, capsys):
    from tests.conftest import require_fixture

    pkl = require_fixture("edm/B_edm_ddpmpp.pkl")
    grid = _grid(tmp_path / "bad.yaml", {"kind": "edm", "path": str(pkl), "label": "random"})
    assert main(["--grid", str(grid), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert not (tmp_path / "out").exists()
    err = capsys.readouterr().err
    assert f"field 'label' ('random') given, but the network in '{pkl}' entry 'ema' is unconditional" in err


# --- a class-conditional diffusers UNet2DModel ----------------------------------------------------
def test_diffusers_class_conditional_unet(tmp_path, capsys):
    """num_class_embeds: the same mechanism (rows follow, label required at load, label: random runs)."""
    diffusers = pytest.importorskip("diffusers", reason="optional extra scorebench[diffusers] not installed")
    from models.diffusers_adapter import class_label_dim, load_diffusers

    with pytest.raises(ValueError, match="class_embed_type 'timestep' embeds continuous class vectors"):
        class_label_dim({"class_embed_type": "timestep", "num_class_embeds": None})

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                 num_class_embeds=3).eval()
    with torch.no_grad():
        unet.class_embedding.weight.mul_(20.0)  # make the classes matter at random init
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(tmp_path / "pipe")
    model = load_diffusers(tmp_path / "pipe", dtype=torch.float64)
    assert model.label_dim == 3
    sampler = make_sampler("adaptive_improved_euler", rtol=0.5, atol=0.5)
    labels, seeds = [2, 0, 1], [3, 4, 5]
    problem = Problem(model).conditioned(torch.tensor(labels))
    noise = SeededNoise(seeds)
    batch = sampler.sample(problem, problem.prior_sample(3, noise, dtype=torch.float64), noise).x
    for i, (s, k) in enumerate(zip(seeds, labels)):
        for label, same in ((k, True), ((k + 1) % 3, False)):
            alone = Problem(model).conditioned(torch.tensor([label]))
            n1 = SeededNoise([s])
            x1 = sampler.sample(alone, alone.prior_sample(1, n1, dtype=torch.float64), n1).x
            dev = (batch[i] - x1[0]).abs().max().item()
            assert dev <= 1e-10 if same else dev > 1e-3, (i, label, dev)
    # In grids: required when the grid loads, and per-sample labels run.
    bench.models._CACHE.clear()
    section = {"kind": "diffusers", "path": str(tmp_path / "pipe")}
    bad = _grid(tmp_path / "bad.yaml", section, [{"solver": "ddim", "n_steps": 3}])
    assert main(["--grid", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert not (tmp_path / "o").exists()
    assert "the denoiser in diffusers folder" in capsys.readouterr().err
    grid = _grid(tmp_path / "g.yaml", {**section, "label": "random"}, [{"solver": "ddim", "n_steps": 3}])
    assert main(["--grid", str(grid), "--out", str(tmp_path / "o"), "--no-progress", "--no-report"]) == 0
    (rec,) = _records(tmp_path / "o")
    assert rec["status"] == "ok" and rec["sample_labels"] == seed_labels("100-109", 3).tolist()
