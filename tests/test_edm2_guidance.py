"""EDM2's guided sampler (NVlabs/edm2 ``generate_images.py``: ``edm_sampler`` with ``gnet`` and
``guidance``) against its formulas, on the public EDM2 fixture's network (shared/fixtures/edm2):

* EDM2 guides by a second network, D_w = gnet + w (net − gnet) (``ref_Dx.lerp(Dx, guidance)``):
  autoguidance with a weaker conditional copy of the fixture network, and CFG with an unconditional
  network (EDM2's conditional networks are trained without label dropout; its CFG presets pair them
  with an ``xs-uncond`` network). The harness's guided denoiser equals the formula evaluated on the
  two networks directly, to round-off;
* the guided sampler (the harness's ``edm_heun`` on EDM2's float32 ρ = 7 grid) equals a hand-written
  loop of EDM2's Heun steps with that denoiser (latents, ≤ 1e-5 relative per sample);
* NFE per network: the solver counts 2N − 1 guided denoiser evaluations; the main network and the
  guide each one forward of B rows per evaluation — through a grid run and its record as well.

The guide networks are written here from the fixture (weights perturbed; an unconditional copy has
no label embedding), in EDM2's pickle format (tests/edm2_pickles.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

import bench.models
from bench.grid import parse_grid
from bench.models import run_model
from bench.records import read_records
from bench.run import main
from models.edm.unpickle import read_snapshot, state_dict
from models.edm2 import load_network
from models.guidance import Autoguidance
from models.score import conditioned
from models.tally import Tally
from solvers import Problem, SeededNoise, make_sampler
from tests.conftest import require_fixture
from tests.edm2_pickles import dumps_snapshot

pytestmark = pytest.mark.fixtures

N_STEPS = 8  # EDM2's fixture sampler run: 8 steps, 15 network calls
LABELS = torch.tensor([0, 3, 1])
SEEDS = [0, 1, 2]


def _pkl():
    return require_fixture("edm2/P_img16_cond.pkl")


def write_guides(folder) -> tuple[str, str]:
    """(a weaker conditional copy, an unconditional copy) of the fixture network, as EDM2 pickles."""
    data = read_snapshot(_pkl())
    weak = copy.deepcopy(data)
    g = torch.Generator().manual_seed(7)
    for t in state_dict(weak["ema"]).values():  # float16, perturbed in place: a "bad version of itself"
        t.add_((0.05 * t.float().abs().mean() * torch.randn(t.shape, generator=g)).to(t.dtype))
    weak_path = folder / "guide_weak.pkl"
    weak_path.write_bytes(dumps_snapshot(weak))
    uncond = copy.deepcopy(data)
    ema, unet = uncond["ema"], uncond["ema"].state["_modules"]["unet"]
    for record in (ema, unet):
        record.state["_init_kwargs"]["label_dim"] = 0
    ema.state["label_dim"] = 0
    unet.state["_modules"]["emb_label"] = None  # an unconditional EDM2 U-Net has no label embedding
    uncond_path = folder / "guide_uncond.pkl"
    uncond_path.write_bytes(dumps_snapshot(uncond))
    return str(weak_path), str(uncond_path)


def grid(main_path: str, guides: tuple[str, str], n: int = 3) -> dict:
    weak, uncond = guides
    return {"name": "edm2-guided",
            "models": {"s": {"kind": "edm2", "path": main_path, "label": "random"},
                       "xs": {"kind": "edm2", "path": weak, "label": "random"},
                       "xs_uncond": {"kind": "edm2", "path": uncond}},
            "eval": {"num_samples": n, "batch_size": n, "seeds": f"0-{n - 1}", "dtype": "float32", "threads": 1,
                     "device": "cpu"},
            "sweeps": [{"model": "s", "solver": "edm_heun", "n_steps": N_STEPS, "schedule": "karras_float32",
                        "guidance": [{"kind": "autoguidance", "scale": 2.0, "guide": "xs"},
                                     {"kind": "cfg", "scale": 1.4, "guide": "xs_uncond"}]}]}


def edm2_guided_heun(net, gnet, w: float, labels, x_init, t_steps):
    """EDM2's edm_sampler (deterministic, S_churn = 0) with its guided denoiser, written from the paper
    (Karras et al. 2022, Algorithm 1; the guided D of generate_images.py): float32 throughout."""
    onehot = torch.eye(net.label_dim)[labels]

    def denoise(x, t):
        D = net(x, t.reshape(1).expand(x.shape[0]), onehot).float()
        ref = gnet(x, t.reshape(1).expand(x.shape[0]), onehot if gnet.label_dim else None).float()
        return ref + w * (D - ref)

    x_next = x_init.float()
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:], strict=True)):
        x_cur = x_next
        d_cur = (x_cur - denoise(x_cur, t_cur)) / t_cur  # Euler step
        x_next = x_cur + (t_next - t_cur) * d_cur
        if i < len(t_steps) - 2:  # 2nd-order correction
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def karras_float32(n: int) -> torch.Tensor:
    """EDM2's t_steps, computed in float32 as generate_images.py does (σ ∈ [0.002, 80], ρ = 7), then 0."""
    i = torch.arange(n, dtype=torch.float32)
    t = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    return torch.cat([t, torch.zeros(1)])


@pytest.mark.parametrize("which", [0, 1], ids=["autoguidance", "cfg_uncond_network"])
def test_edm2_guided_sampler_against_its_formula(tmp_path, which):
    bench.models._CACHE.clear()
    guides = write_guides(tmp_path)
    spec = parse_grid(grid(str(_pkl()), guides), "edm2-guided.yaml")
    run = spec.runs[which]
    w = run.guidance["scale"]
    tally = Tally()
    model = run_model(run, "cpu", tally)
    net, gnet = load_network(_pkl())[0], load_network(guides[which])[0]
    assert gnet.label_dim == (4 if which == 0 else 0)

    # The guided denoiser is gnet + w (net − gnet), to round-off.
    view = conditioned(model, LABELS)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2.0
    t = torch.full((3,), 0.6, dtype=torch.float64)
    sigma = float(model.sde.marginal(t)[1][0])
    x0, _ = view.data_and_noise(x, t)
    onehot = torch.eye(4)[LABELS]
    D, ref = net(x, torch.full((3,), sigma), onehot), gnet(x, torch.full((3,), sigma), onehot if which == 0 else None)
    formula = ref + w * (D - ref)
    err = float((x0 - formula).abs().max() / formula.abs().max())
    assert err <= 1e-6, err
    assert tally.snapshot() == {"denoiser": {"calls": 1, "rows": 3}, "guide": {"calls": 1, "rows": 3}}

    # The guided sampler's latents equal a hand-written loop of EDM2's formula.
    problem = Problem(model).conditioned(LABELS)
    t_steps = karras_float32(N_STEPS)
    x_init = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * t_steps[0]  # EDM2: noise · t_0
    before = tally.snapshot()
    sol = make_sampler("edm_heun", n_steps=N_STEPS, schedule="karras_float32").sample(problem, x_init,
                                                                                      SeededNoise(SEEDS))
    hand = edm2_guided_heun(net, gnet, w, LABELS, x_init, t_steps)
    rel = (sol.x.double() - hand.double()).flatten(1).abs().max(1).values / hand.double().flatten(1).abs().max(1).values
    assert float(rel.max()) <= 1e-5, rel.tolist()
    # NFE per network: 2N − 1 guided evaluations; main and guide one B-row forward each per evaluation.
    assert sol.stats.nfe == 2 * N_STEPS - 1
    assert tally.since(before) == {"denoiser": {"calls": 15, "rows": 45}, "guide": {"calls": 15, "rows": 45}}
    print(f"\nEDM2 guided sampler ({run.guidance['kind']}, w={w}): guided D vs gnet + w(net − gnet) {err:.1e}, "
          f"latents vs hand-written loop max {float(rel.max()):.1e} relative; NFE {sol.stats.nfe}, "
          f"denoiser 15 calls × 3 rows, guide 15 calls × 3 rows")


def test_edm2_guided_grid_records_every_network(tmp_path):
    """The same two runs through the CLI: one record each, NFE = guided evaluations (15), the main and
    guide networks' forwards per sample beside it (15 + 15 = 30 in the diff-sampler convention)."""
    bench.models._CACHE.clear()
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid(str(_pkl()), write_guides(tmp_path), n=2)))
    out = tmp_path / "out"
    assert main(["--grid", str(path), "--out", str(out), "--workers", "1", "--no-progress", "--no-report"]) == 0
    records = list(read_records(out).values())
    assert len(records) == 2
    for r in records:
        assert r["status"] == "ok", r["message"]
        assert r["nfe"] == 15 and r["forwards_per_sample"] == 30.0
        assert r["networks"]["denoiser"]["calls"] == r["networks"]["guide"]["calls"] == 15
        assert r["networks"]["guide"]["forwards_per_sample"] == 15.0
        assert r["spec"]["inputs"].keys() >= {"checkpoint", "guide:checkpoint"}
    assert {r["guidance"]["kind"] for r in records} == {"autoguidance", "cfg"}


def test_autoguidance_refuses_a_guide_of_another_shape():
    from models.gaussian import ClassConditionalMixture, GaussianMixture
    from models.sde import VESDE

    a = ClassConditionalMixture(GaussianMixture(torch.zeros(2, 3), 0.5, VESDE()))
    b = ClassConditionalMixture(GaussianMixture(torch.zeros(2, 4), 0.5, VESDE()))
    with pytest.raises(ValueError, match="shape"):
        Autoguidance(a, b, 2.0)


def test_imagenet512_edm2_grid_dry_run_and_offline_error(tmp_path, monkeypatch, capsys):
    """grids/imagenet512_edm2.yaml: 17 guided runs (autoguidance by EDM2-XS, CFG by XS-uncond, the
    interval), validated without its files; run without them, one line names the missing snapshot."""
    from tests.conftest import ROOT

    monkeypatch.setenv("SCOREBENCH_CKPT_DIR", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    path = ROOT / "grids" / "imagenet512_edm2.yaml"
    assert main(["--grid", str(path), "--dry-run"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if " edm2_img512_s_" in line]
    assert len(rows) == 17
    assert sum("autoguidance w=2.1 guide=edm2_img512_xs_guide" in r for r in rows) == 7
    assert sum(" cfg w=" in r and "uncond=edm2_img512_xs_uncond" in r for r in rows) == 3
    assert sum(" interval w=" in r for r in rows) == 4
    out = tmp_path / "results"
    assert main(["--grid", str(path), "--out", str(out)]) == 2
    assert not out.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "EDM2 snapshot 'edm2-img512-s-2147483-0.070.pkl' not found" in lines[0]
    assert "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/edm2-img512-s-2147483-0.070.pkl" in lines[0]
