"""OpenAI ADM checkpoints (guided-diffusion) in the project's own UNetModel, replayed against the
reference fixtures recorded with ADM's code (shared/fixtures/adm, README there):

* the loader reproduces the state_dict (``weights_only``), strict on keys and shapes against the flags,
  classes from ``label_emb.weight``;
* the network's output (integer and fractional timesteps), embeddings and per-block probes match
  README §9's criterion (``≤ 1e-5·maxabs(ref) + 1e-6``);
* ADMScore's x̂₀ (clipped and not) and ``p_mean_variance`` on the full and the respaced diffusion;
* the noisy classifier (EncoderUNetModel): a state dict built by the project's code loads back
  strictly, every pool gives [B, classes], a mismatch is named.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch

from models.adm import load_adm, load_classifier
from models.adm.flags import classifier_flags, classifier_kwargs, model_flags, unet_kwargs
from models.adm.layers import timestep_embedding
from models.adm.loader import read_state_dict
from models.adm.schedule import adm_path
from models.adm.unet import POOLS, EncoderUNetModel, UNetModel
from solvers import Problem
from solvers.adm import posterior
from tests.conftest import require_fixture

F = "adm/A_lin_cond"


def fixture(suffix: str):
    return torch.load(require_fixture(f"{F}{suffix}"), weights_only=True)


def rel_err(out, ref) -> float:
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max())


def readme_ok(out, ref, rel=1e-5, abs_=1e-6) -> float:
    """README §9: per sample max|Δ| ≤ rel·max|ref| + abs; returns the worst per-sample ratio."""
    err = (out.double() - ref.double()).flatten(1).abs().max(1).values
    scale = ref.double().flatten(1).abs().max(1).values
    assert bool((err <= rel * scale + abs_).all()), (err / scale).tolist()
    return float((err / scale).max())


@pytest.fixture(scope="module")
def model():
    return load_adm(require_fixture(f"{F}.pt"), str(require_fixture(f"{F}_flags.json")))


@pytest.fixture(scope="module")
def io():
    return fixture("_io.pt")


def test_loader_reproduces_the_state_dict(model):
    state = torch.load(require_fixture(f"{F}.pt"), weights_only=True)
    ours = model.net.state_dict()
    assert list(ours) == list(state)  # same keys, same order
    assert all(torch.equal(ours[k], state[k]) for k in state)
    cfg = json.loads(require_fixture(f"{F}_flags.json").read_text())
    assert model.label_dim == cfg["num_classes"] == 4  # from label_emb.weight, not ADM's NUM_CLASSES
    assert sum(p.numel() for p in model.net.parameters()) == cfg["num_params"]
    assert {k: list(v.shape) for k, v in state.items()} == cfg["state_dict_shapes"]
    kwargs = unet_kwargs(model_flags(cfg["model_and_diffusion_flags"]), 4)
    for k, v in cfg["unet_kwargs"].items():  # the flags → UNetModel arguments, as ADM's create_model
        if k not in ("use_checkpoint", "use_fp16"):
            assert kwargs[k] == (tuple(v) if isinstance(v, list) else v), k
    heads = {name: m.num_heads for name, m in model.net.named_modules() if hasattr(m, "qkv")}
    assert heads == cfg["attention_heads"]


def test_network_output_matches_adm(model, io):
    with torch.no_grad():
        out = model.net(io["x"], io["t"], io["y"])
        out_float = model.net(io["x"], io["t_float"], io["y"])
        emb = timestep_embedding(io["t"], 32)
        time_out = model.net.time_embed(emb)
    errs = {"out": readme_ok(out, io["out"]), "out_float_t": readme_ok(out_float, io["out_float_t"]),
            "t_embedding": rel_err(emb, io["t_embedding"]), "time_embed": rel_err(time_out, io["time_embed_out"])}
    assert errs["t_embedding"] < 1e-6 and errs["time_embed"] < 1e-6
    print("\nADM network max error (relative to max|ref|):", errs)


def test_every_block_matches_the_probe(model, io):
    """The per-block probe (first 16 values per sample of each block's output)."""
    heads, got = io["blocks"]["head16"], {}
    hooks = [m.register_forward_hook(lambda mod, a, out, name=name: got.__setitem__(name, out))
             for name, m in model.net.named_modules() if name in heads]
    try:
        with torch.no_grad():
            model.net(io["x"], io["t"], io["y"])
    finally:
        for h in hooks:
            h.remove()
    assert set(got) == set(io["blocks"]["order"])
    for name in io["blocks"]["order"]:
        readme_ok(got[name].flatten(1)[:, :16], heads[name])


def test_score_model_timesteps_and_p_mean_variance(model, io):
    """ADMScore at t = (k + 1)/N feeds timestep k; x̂₀ clipped and not; ADM's learned-variance mean
    and log-variance from the project's posterior() on the full and the '25'-respaced diffusion."""
    noclip = load_adm(require_fixture(f"{F}.pt"), str(require_fixture(f"{F}_flags.json")), clip_denoised=False)
    for key, resp in (("pmv_full", None), ("pmv_respaced", io["schedule_respaced"]["timestep_map"])):
        p = io[key]
        k = p["t_model"]
        t = (k.double() + 1) / 1000
        clipped, raw = model.conditioned(io["y"]), noclip.conditioned(io["y"])
        assert torch.equal(clipped.timesteps(t), k.double())
        with torch.no_grad():
            readme_ok(clipped.network_output(p["x"] if "x" in p else io["x"], t), p["model_out"])
            terms = clipped.data_noise_and_variance(io["x"], t)
            x0_raw, _ = raw.data_and_noise(io["x"], t)
        assert rel_err(terms.x0, p["pred_xstart"]) < 1e-5 and rel_err(x0_raw, p["pred_xstart_noclip"]) < 1e-5
        assert terms.x0.abs().max() <= 1 < x0_raw.abs().max()  # the clip matters here
        # The reverse step from each index to the previous one (index 0 is the final denoise).
        idx = p["t_index"]
        keep = idx > 0
        prev = (idx - 1) if resp is None else resp[(idx - 1).clamp(min=0)]
        t_next = (prev.double() + 1) / 1000
        problem = Problem(clipped)
        c_x0, c_x, beta, beta_tilde = posterior(problem, t, t_next)
        ex = lambda v: v[:, None, None, None].float()  # noqa: E731
        mean = ex(c_x0) * terms.x0 + ex(c_x) * io["x"]
        log_var = terms.v * ex(beta.log()) + (1 - terms.v) * ex(beta_tilde.log())
        assert rel_err(mean[keep], p["mean"][keep]) < 1e-5
        assert rel_err(log_var[keep], p["log_variance"][keep]) < 1e-5
        mean_raw = ex(c_x0) * x0_raw + ex(c_x) * io["x"]
        assert rel_err(mean_raw[keep], p["mean_noclip"][keep]) < 1e-5


def test_respaced_tables_match_adm(model, io):
    """The '25'-respaced diffusion's own tables from the path's ᾱ at the kept timesteps."""
    s = io["schedule_respaced"]
    kept = s["timestep_map"]
    t = (kept.double() + 1) / 1000
    path = model.sde
    assert torch.allclose(path.marginal(t)[0] ** 2, torch.as_tensor(s["alphas_cumprod"]), rtol=1e-13, atol=0)
    problem = Problem(model)
    _, _, beta, beta_tilde = posterior(problem, t[1:], t[:-1])
    assert torch.allclose(beta, torch.as_tensor(s["betas"])[1:], rtol=1e-11, atol=0)
    assert torch.allclose(beta_tilde, torch.as_tensor(s["posterior_variance"])[1:], rtol=1e-11, atol=0)


# ---- strictness ------------------------------------------------------------------------------------------
def flags_of() -> dict:
    return json.loads(require_fixture(f"{F}_flags.json").read_text())["model_and_diffusion_flags"]


@pytest.mark.parametrize("change, named", [
    ({"num_channels": 64}, "shape: time_embed.0.weight [128, 32] (flags give [256, 64])"),
    ({"learn_sigma": False}, "out.2.weight [6, 32, 3, 3] (flags give [3, 32, 3, 3])"),
    ({"resblock_updown": False}, "missing: input_blocks.2.0.op.weight"),
    ({"attention_resolutions": "16"}, "unexpected: input_blocks.3.1.norm.weight"),
    ({"class_cond": False}, "flag class_cond is False but the checkpoint has label_emb.weight (4 classes)"),
])
def test_flags_that_do_not_match_are_refused_naming_keys(change, named):
    path = require_fixture(f"{F}.pt")
    with pytest.raises(ValueError) as err:
        load_adm(path, {**flags_of(), **change})
    assert named in str(err.value) and "\n" not in str(err.value)


def test_bad_flags_and_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown ADM flag.*'num_chanels'"):
        model_flags({"num_chanels": 32})
    with pytest.raises(ValueError, match="noise_schedule.*expected one of: linear, cosine"):
        model_flags({"noise_schedule": "squaredcos_cap_v2"})
    with pytest.raises(ValueError, match="timestep_respacing.*sampler"):
        model_flags({"timestep_respacing": "250"})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read as an ADM state_dict"):
        read_state_dict(bad)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, wrapped)
    with pytest.raises(ValueError, match="a flat dict of tensors"):
        read_state_dict(wrapped)


class Payload:
    def __reduce__(self):
        return (print, ("payload ran",))


def test_a_pickled_object_is_refused_without_running(tmp_path, capsys):
    path = tmp_path / "hostile.pt"
    torch.save(OrderedDict(w=torch.zeros(1), x=Payload()), path)
    with pytest.raises(ValueError, match="cannot read as an ADM state_dict"):
        read_state_dict(path)
    assert "payload ran" not in capsys.readouterr().out


# ---- the noisy classifier -----------------------------------------------------------------------------
@pytest.mark.parametrize("pool", POOLS)
def test_classifier_state_dict_round_trip(tmp_path, pool):
    """An EncoderUNetModel built from classifier flags, saved as ADM saves it, loads back strictly;
    logits [B, classes]; the class count comes from the head; wrong flags are named."""
    flags = {"image_size": 64, "classifier_width": 64, "classifier_depth": 1,
             "classifier_attention_resolutions": "16", "classifier_pool": pool}
    torch.manual_seed(0)
    kwargs = classifier_kwargs(classifier_flags(flags), num_classes=7)
    net = EncoderUNetModel(**kwargs)
    path = tmp_path / "clf.pt"
    torch.save(net.state_dict(), path)
    loaded, _ = load_classifier(path, flags)
    assert loaded.out_channels == 7
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([999.0, 10.0])
    with torch.no_grad():
        out = loaded(x, t)
        assert out.shape == (2, 7) and torch.equal(out, net.eval()(x, t))
    with pytest.raises(ValueError, match="the state_dict does not match"):
        load_classifier(path, {**flags, "classifier_width": 128})


def test_unet_without_classes_or_learned_sigma_builds_and_runs():
    net = UNetModel(image_size=32, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                    attention_resolutions=(2,), channel_mult=(1, 2), num_heads=2, use_new_attention_order=True)
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32), torch.tensor([3, 700])).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="class labels y must be given iff"):
        net(torch.randn(1, 3, 32, 32), torch.tensor([3]), torch.tensor([0]))
    path = adm_path("cosine", 1000)
    assert path.alphas_cumprod[-1] < 1e-4 and len(path.alphas_cumprod) == 1000


def test_cosine_schedule_and_rescaled_timesteps():
    """ADM's cosine β (betas_for_alpha_bar with β ≤ 0.999, written here from Nichol & Dhariwal's Eq. 17)
    and ``rescale_timesteps`` (README §4: with 4000 steps, timestep 3999 is fed as 999.75)."""
    import math

    from models.adm.schedule import alphas_cumprod, betas, model_timesteps

    N = 1000
    f = [math.cos((i / N + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(N + 1)]
    ref = torch.tensor([min(1 - f[i + 1] / f[i], 0.999) for i in range(N)], dtype=torch.float64)
    assert torch.allclose(betas("cosine", N), ref, rtol=1e-12, atol=1e-15)
    assert torch.allclose(alphas_cumprod("cosine", N), torch.cumprod(1 - ref, 0), rtol=1e-12, atol=0)
    assert float(betas("cosine", N)[-1]) == pytest.approx(0.999)
    t = torch.tensor([4000 / 4000, 126 / 4000], dtype=torch.float64)
    assert torch.allclose(model_timesteps(t, 4000, rescale=True), torch.tensor([999.75, 31.25], dtype=torch.float64))
    assert torch.allclose(model_timesteps(t, 4000), torch.tensor([3999.0, 125.0], dtype=torch.float64))
