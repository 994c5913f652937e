"""EDM network pickles (Karras et al. 2022) loaded without NVIDIA's code, replayed against the
reference fixtures recorded with EDM's own code (shared/fixtures/edm, README there):

* the loader reproduces the snapshot's state_dict (keys, order, bytes) and constructor arguments;
* the project's SongUNet + VP/EDM preconditioning reproduce EDM's D(x; σ) and F_x to float32
  round-off (README §6: per sample maxabs(Δ) ≤ 1e-5·maxabs(ref) + 1e-6);
* EDM's ``edm_sampler`` runs are reproduced by the project's ``edm_heun`` / ``edm_stochastic`` on the
  loaded model with the same NFE and ≤ 1e-5·maxabs(images);
* hostile pickles are refused before anything in them runs.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import pickletools
import sys

import pytest
import torch

from models.edm import UnsafePickleError, load_edm, load_network
from models.edm.loader import EDMScore, network_from_record, sde_for
from models.edm.precond import EDMPrecond, VEPrecond, VPPrecond
from models.edm.unpickle import Container, Persistent, read_snapshot, state_dict
from solvers import Problem, RecordedNoise, make_sampler
from solvers.denoiser import data_prediction
from tests.conftest import require_fixture

pytestmark = pytest.mark.fixtures

NETS = {"A": "A_vp_ddpmpp", "B": "B_edm_ddpmpp"}


def fixture(name: str):
    return torch.load(require_fixture(f"edm/{name}"), weights_only=True)


def per_sample_ok(out, ref, rel=1e-5, abs_=1e-6):
    """README §6's criterion; returns the worst per-sample max|Δ| / max|ref|."""
    err = (out.double() - ref.double()).flatten(1).abs().max(1).values
    scale = ref.double().flatten(1).abs().max(1).values
    assert bool((err <= rel * scale + abs_).all()), (err / scale).tolist()
    return float((err / scale).max())


@pytest.fixture(scope="module", params=sorted(NETS))
def net_io(request):
    name = NETS[request.param]
    net, info = load_network(require_fixture(f"edm/{name}.pkl"))
    return request.param, net, info, fixture(f"{name}_io.pt")


def test_loader_reproduces_the_snapshot(net_io):
    _, net, info, io_ = net_io
    cfg = io_["config"]
    assert info.init_kwargs == cfg["init_kwargs"]
    assert info.num_params == cfg["num_params"] == 189_491
    sd = net.state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(k, list(s)) for k, s in cfg["state_dict_shapes"].items()]
    assert len(sd) == cfg["num_state_dict_entries"] == 147
    # The tensors are the pickle's bytes.
    record = read_snapshot(require_fixture(f"edm/{cfg['file']}"))["ema"]
    for k, v in state_dict(record).items():
        assert torch.equal(sd[k], v), k
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    for key in ("sigma_min", "sigma_max"):
        assert net.__dict__[key] == io_["precond"][key]  # VP: computed in float32 (σ_min = 2^-10 exactly)


def test_denoiser_matches_edm(net_io):
    name, net, _, io_ = net_io
    x, sigma = io_["x"], io_["sigma"]
    with torch.no_grad():
        D = net(x, sigma)
        c_skip, c_out, c_in, c_noise = net.coefficients(sigma.reshape(-1, 1, 1, 1))
        F_x = net.model(c_in * x, c_noise.flatten(), None)
        D_scalar = net(x.double(), io_["sigma_scalar"])
        D_aug = net(x, sigma, augment_labels=io_["augment_labels"])
        emb = net.model.embedding(c_noise.flatten(), None, None)
    assert D.dtype == torch.float32 and D_scalar.dtype == torch.float32
    # c_noise is exactly what EDM's U-Net received (VP's is float32-sensitive at σ = 0.02).
    assert torch.equal(c_noise.flatten(), io_["c_noise"])
    for c, key in ((c_skip, "c_skip"), (c_out, "c_out"), (c_in, "c_in")):
        torch.testing.assert_close(torch.as_tensor(c, dtype=torch.float32).expand(4, 1, 1, 1).flatten(), io_[key],
                                   rtol=1e-6, atol=0)
    torch.testing.assert_close(emb, io_["blocks"]["emb"], rtol=1e-5, atol=1e-6)
    errors = {k: per_sample_ok(out, io_[k]) for out, k in ((D, "D_x"), (F_x, "F_x"), (D_scalar, "D_x_scalar_sigma"),
                                                           (D_aug, "D_x_augment"))}
    print(f"\n{NETS[name]} max per-sample relative error: {errors}")


def test_score_model_is_the_denoiser_in_sigma_space(net_io):
    """s(x, t) = (α D(x/α; σ_ve) − x)/σ_t² on the preconditioning's SDE: the data prediction of the
    score model at t(σ) is EDM's D(x; σ)."""
    name, net, _, io_ = net_io
    model = EDMScore(net, sde_for(net))
    if name == "A":  # VP: the preconditioning's σ(t) is the VP SDE's σ_ve(t)
        assert model.sde.kind == "vp" and (model.sde.beta_min, model.sde.beta_max) == (0.1, pytest.approx(20.0))
        conv = io_["precond"]
        alpha, s = model.sde.marginal(conv["vp_t_grid_float64"])
        # EDM's √(exp(u) − 1) cancels at t = ε_t (u ≈ 1e-6): its own relative error there is ~1e-16/u.
        torch.testing.assert_close(s / alpha, conv["vp_sigma_of_t_float64"], rtol=1e-10, atol=0)
        torch.testing.assert_close(model.sde.inverse_ve_sigma(conv["vp_sigma_grid_float64"]),
                                   conv["vp_sigma_inv_float64"], rtol=1e-10, atol=1e-15)
        for f in ("float32", "float64"):  # the preconditioning's own conversions, in EDM's dtype
            assert torch.equal(net.sigma(conv[f"vp_t_grid_{f}"]), conv[f"vp_sigma_of_t_{f}"])
            assert torch.equal(net.sigma_inv(conv[f"vp_sigma_grid_{f}"]), conv[f"vp_sigma_inv_{f}"])
    else:
        assert model.sde.kind == "ve"
    sigma = io_["sigma"].double()
    t = model.sde.inverse_ve_sigma(sigma)
    alpha = model.sde.marginal(t)[0].reshape(-1, 1, 1, 1)
    with torch.no_grad():
        D = data_prediction(Problem(model), alpha * io_["x"].double(), t)
    per_sample_ok(D, io_["D_x"])


def test_sampling_range_follows_generate_py():
    a, _ = load_network(require_fixture("edm/A_vp_ddpmpp.pkl"))
    for net in (a, EDMPrecond(16, 3, model_type="SongUNet", model_channels=16, channel_mult=[1], num_blocks=1,
                              attn_resolutions=[])):
        sde = sde_for(net)
        alpha, sigma = sde.marginal(torch.tensor([sde.T, sde.eps], dtype=torch.float64))
        torch.testing.assert_close(sigma / alpha, torch.tensor([80.0, 0.002], dtype=torch.float64), rtol=1e-13, atol=0)
    ve = VEPrecond(16, 3, model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[])
    alpha, sigma = sde_for(ve).marginal(torch.tensor([1.0, sde_for(ve).eps], dtype=torch.float64))
    torch.testing.assert_close(sigma, torch.tensor([80.0, 0.02], dtype=torch.float64), rtol=1e-13, atol=0)  # clamped
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        sde_for(ve, sigma_min=50.0, sigma_max=10.0)


class LoggedNet(torch.nn.Module):
    """Records the (x, σ) of every network call."""

    def __init__(self, net):
        super().__init__()
        self.inner, self.calls = net, []

    def forward(self, x, sigma):
        self.calls.append((x.clone(), sigma.clone()))
        return self.inner(x, sigma)


@pytest.mark.parametrize("kind", ["det", "stoch"])
def test_edm_sampler_runs_are_reproduced(kind):
    rec = fixture(f"B_edm_ddpmpp_sampler_{kind}.pt")
    kw = rec["sampler_kwargs"]
    model = load_edm(require_fixture("edm/B_edm_ddpmpp.pkl"))
    model.net = LoggedNet(model.net)
    if kind == "det":
        sampler = make_sampler("edm_heun", n_steps=kw["num_steps"])
    else:
        sampler = make_sampler("edm_stochastic", n_steps=kw["num_steps"], S_churn=kw["S_churn"], S_tmin=kw["S_min"],
                               S_tmax=kw["S_max"], S_noise=kw["S_noise"])
    problem = Problem(model)
    x_init = rec["latents"].double() * rec["t_steps"][0]  # α = 1 on the VE SDE of an EDM network
    sol = sampler.sample(problem, x_init, RecordedNoise(list(rec["noise"])))
    assert sol.stats.nfe == problem.counter.nfe == rec["nfe"] == 15
    calls = model.net.calls
    assert len(calls) == 15
    sig = torch.stack([s for _, s in calls])  # [15, B]
    assert bool((sig == sig[:, :1]).all())  # one σ for the whole batch per call, as EDM's 0-dim σ
    torch.testing.assert_close(sig[:, 0], rec["calls_sigma"], rtol=1e-12, atol=0)
    for k, (x, _) in enumerate(calls):
        per_sample_ok(x, rec["calls_x"][k], abs_=0)
    err = per_sample_ok(sol.x, rec["images"], abs_=0)
    images_uint8 = (sol.x * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert (images_uint8.int() - rec["images_uint8"].int()).abs().max() <= 1
    print(f"\nedm_sampler {kind}: NFE {sol.stats.nfe} (EDM {rec['nfe']}), max per-sample error/maxabs {err:.2e}")


class ReplayScore:
    """A score model answering with EDM's recorded network outputs, in order (no network)."""

    def __init__(self, sde, outs):
        self.sde, self.shape, self.data_range = sde, tuple(outs.shape[2:]), (-1.0, 1.0)
        self.outs, self.k = outs, 0

    def __call__(self, x, t):
        D = self.outs[self.k].to(x.dtype)
        self.k += 1
        sigma = self.sde.marginal(t)[1].reshape(-1, 1, 1, 1)
        return (D - x) / sigma**2


@pytest.mark.parametrize("kind", ["det", "stoch"])
def test_sampler_arithmetic_with_recorded_network_outputs(kind):
    """README §6: driven by EDM's recorded network outputs and noise, the project's sampler arithmetic
    reproduces EDM's images to ≤ 1e-12·maxabs."""
    rec = fixture(f"B_edm_ddpmpp_sampler_{kind}.pt")
    kw = rec["sampler_kwargs"]
    net = EDMPrecond(16, 3, model_type="SongUNet", model_channels=16, channel_mult=[1], num_blocks=1,
                     attn_resolutions=[])
    score = ReplayScore(sde_for(net), rec["calls_out"])
    opts = {} if kind == "det" else dict(S_churn=kw["S_churn"], S_tmin=kw["S_min"], S_tmax=kw["S_max"],
                                         S_noise=kw["S_noise"])
    sampler = make_sampler("edm_heun" if kind == "det" else "edm_stochastic", n_steps=kw["num_steps"], **opts)
    sol = sampler.sample(Problem(score), rec["latents"].double() * 80.0, RecordedNoise(list(rec["noise"])))
    assert score.k == 15
    assert (sol.x - rec["images"]).abs().max() <= 1e-12 * rec["images"].abs().max()


# --- hostile and malformed pickles ------------------------------------------------------------
class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > PWNED_MARKER",))


def test_hostile_pickle_is_refused_before_it_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "network-snapshot-000000.pkl"
    path.write_bytes(pickle.dumps({"ema": RunsCode()}))
    assert "system" in str([op for op in pickletools.genops(path.read_bytes())])  # it would call os.system
    with pytest.raises(UnsafePickleError, match=r"refused global (posix|os|nt)\.system"):
        load_network(path)
    assert not (tmp_path / "PWNED_MARKER").exists()
    # Any other global is refused too, named in the error; so are persistent ids.
    for payload, match in ((pickle.dumps({"ema": eval}), "builtins.eval"),
                           (pickle.dumps({"ema": torch.nn.Linear(1, 1)}), "torch.nn.modules.linear.Linear")):
        path.write_bytes(payload)
        with pytest.raises(UnsafePickleError, match=match):
            load_network(path)


def test_exec_of_module_src_is_never_attempted(tmp_path):
    """A persistence record whose embedded source would run code is read as inert data: its class name
    is refused and the source is never executed; EDM's packages are never imported."""
    src = "import os\nos.system('echo pwned > PWNED_MARKER')\n"

    class Record:
        def __reduce__(self):
            return (_reconstruct_stub, ({"type": "class", "version": 6, "module_src": src, "class_name": "Evil",
                                         "state": {}},))

    buf = io.BytesIO()
    EDMNamePickler(buf, protocol=4).dump({"ema": Record()})
    path = tmp_path / "evil.pkl"
    path.write_bytes(buf.getvalue())
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ValueError, match="class 'Evil' is not a network the loader builds"):
            load_network(path)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "PWNED_MARKER").exists()
    assert not {"torch_utils", "dnnlib", "training"} & set(sys.modules)


def _reconstruct_stub(meta):
    return meta


class EDMNamePickler(pickle._Pickler):
    """Writes :func:`_reconstruct_stub` under the name of EDM's reconstructor (no EDM code needed)."""

    def save(self, obj, save_persistent_id=True):
        if obj is _reconstruct_stub:
            super().save("torch_utils.persistence")
            super().save("_reconstruct_persistent_obj")
            self.write(pickle.STACK_GLOBAL)
            return
        super().save(obj, save_persistent_id)


def test_wrong_version_and_bad_files_are_refused(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(UnsafePickleError, match="not a readable EDM snapshot"):
        load_network(path)
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(UnsafePickleError, match="dict at the top level"):
        load_network(path)
    with pytest.raises(ValueError, match="no entry 'raw'; expected one of: ema, loss_fn, augment_pipe"):
        load_network(require_fixture("edm/B_edm_ddpmpp.pkl"), key="raw")
    with pytest.raises(ValueError, match="EDMLoss.*not a network"):
        load_network(require_fixture("edm/B_edm_ddpmpp.pkl"), key="loss_fn")


def test_strict_on_arguments_keys_and_shapes():
    record = read_snapshot(require_fixture("edm/B_edm_ddpmpp.pkl"))["ema"]
    network_from_record(record)  # as stored: fine

    def changed(fn):
        r = copy.deepcopy(record)
        fn(r)
        return r

    def set_kwarg(k, v):
        return changed(lambda r: r.state["_init_kwargs"].__setitem__(k, v))

    with pytest.raises(ValueError, match="shape"):  # widths differ from the stored tensors
        network_from_record(changed(lambda r: _set_param(r, "model.map_layer0.weight", torch.zeros(64, 8))))
    with pytest.raises(ValueError, match="children"):  # an extra block in the stored tree
        network_from_record(set_kwarg("num_blocks", 2))
    with pytest.raises(ValueError, match="unexpected keyword argument 'mystery'"):
        network_from_record(set_kwarg("mystery", 1))
    with pytest.raises(ValueError, match="missing"):
        network_from_record(changed(lambda r: _drop_param(r, "model.map_layer1.bias")))
    with pytest.raises(ValueError, match="num_groups"):  # a stored attribute that differs from the built module
        network_from_record(changed(lambda r: _module(r, "model.enc.16x16_block0.norm0").state.__setitem__(
            "num_groups", 2)))


def _module(record, dotted):
    for part in dotted.split("."):
        record = record.state["_modules"][part]
    return record


def _set_param(record, dotted, value):
    *mods, name = dotted.split(".")
    _module(record, ".".join(mods)).state["_parameters"][name] = torch.nn.Parameter(value, requires_grad=False)


def _drop_param(record, dotted):
    *mods, name = dotted.split(".")
    del _module(record, ".".join(mods)).state["_parameters"][name]


# --- architectures without a fixture: ADM and NCSN++ through the same record path -------------
def _as_record(module):
    """A module as the persistent record EDM would write (class name, __dict__, init kwargs)."""
    state = dict(module.__dict__)
    state["_modules"] = {k: (_as_container(v) if isinstance(v, torch.nn.ModuleDict) else
                             None if v is None else _as_record(v)) for k, v in module._modules.items()}
    return Persistent(type(module).__name__, state, "")


def _as_container(module):
    c = Container()
    c.__setstate__({**module.__dict__, "_modules": {k: _as_record(v) for k, v in module._modules.items()}})
    return c


@pytest.mark.parametrize("precond, kwargs", [
    (EDMPrecond, dict(model_type="DhariwalUNet", model_channels=64, channel_mult=[1, 2], num_blocks=1,
                      attn_resolutions=[4], label_dim=10)),
    (VEPrecond, dict(model_type="SongUNet", embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
                     resample_filter=[1, 3, 3, 1], model_channels=16, channel_mult=[1, 2], num_blocks=1,
                     attn_resolutions=[4])),
    (VPPrecond, dict(model_type="SongUNet", encoder_type="skip", decoder_type="skip", model_channels=16,
                     channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])),
], ids=["adm-edm-cond", "ncsnpp-ve", "ddpmpp-skip-vp"])
def test_other_architectures_round_trip(precond, kwargs):
    torch.manual_seed(0)
    net = precond(img_resolution=8, img_channels=3, **kwargs).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for name, b in net.named_buffers():
            if name.endswith("freqs"):
                b.normal_(0, 16)
    record = _as_record(net)
    record.state["_init_kwargs"] = {"img_resolution": 8, "img_channels": 3, **kwargs}
    loaded, info = network_from_record(record)
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 0.1])
    labels = torch.eye(10)[[1, 7]] if kwargs.get("label_dim") else None
    with torch.no_grad():
        out = loaded(x, sigma, labels)
        assert torch.equal(out, net(x, sigma, labels))
        # D = c_skip x + c_out F_x: the output carries the U-Net's non-trivial signal.
        assert out.shape == x.shape and float((out - net.coefficients(sigma.reshape(-1, 1, 1, 1))[0] * x).std()) > 1e-3
    if kwargs.get("label_dim"):
        model = EDMScore(loaded, sde_for(loaded), torch.eye(10)[[3]])
        t = torch.tensor([0.5, 0.5], dtype=torch.float64)
        with torch.no_grad():
            a = model(x, t)
            assert not torch.allclose(a, EDMScore(loaded, sde_for(loaded), torch.eye(10)[[4]])(x, t))  # it reaches
            assert torch.equal(a, model.conditioned(torch.tensor([3, 3]))(x, t))  # the network; indices = one-hot
