"""EDM2 snapshots (Karras et al. 2024) loaded without NVIDIA's code, replayed against the reference
fixtures recorded with EDM2's own code (shared/fixtures/edm2, README there):

* the loader reproduces the snapshot (state_dict keys in order, float16 tensors, constructor args);
* the project's magnitude-preserving U-Net + Precond reproduce EDM2's D(x; σ), F_x, logvar and every
  block's output (README §7: per sample maxabs(Δ) ≤ 1e-5·maxabs(ref) + 1e-6; measured: bitwise);
* EDM2's ``edm_sampler`` (8 steps, guidance 1) is reproduced by the project's ``edm_heun`` with the
  same network calls and NFE, and the decoded uint8 images as StandardRGBEncoder decodes them;
* a latent snapshot (StabilityVAEEncoder) gives the VAE's input (x − bias)/scale;
* hostile pickles are refused before anything in them runs; reference statistics read as arrays.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import pickletools

import numpy as np
import pytest
import torch

from models.edm.unpickle import Persistent, UnsafePickleError, read_reference_stats, read_snapshot, state_dict
from models.edm2 import load_edm2, load_network, read_edm2_snapshot
from models.edm2.layers import MPConv
from solvers import Problem, RecordedNoise, make_sampler
from solvers.denoiser import time_of_sigma
from tests.conftest import require_fixture
from tests.edm2_pickles import dumps_snapshot

pytestmark = pytest.mark.fixtures

NETWORKS_EDM2_SHA256 = "7298880db4bf955d2941496cce3a554a970867b3eae4d22276cb1c293c131fa2"  # README §2.1


def fixture(name: str):
    return torch.load(require_fixture(f"edm2/{name}"), weights_only=True)


def pkl():
    return require_fixture("edm2/P_img16_cond.pkl")


def per_sample_err(out, ref, rel=1e-5, abs_=1e-6) -> float:
    """README §7's criterion (asserted); returns the worst per-sample max|Δ| / max|ref|."""
    err = (out.double() - ref.double()).flatten(1).abs().max(1).values
    scale = ref.double().flatten(1).abs().max(1).values
    assert bool((err <= rel * scale + abs_).all()), (err / scale).tolist()
    return float((err / scale).max())


@pytest.fixture(scope="module")
def io_rec():
    return fixture("P_img16_cond_io.pt")


@pytest.fixture(scope="module")
def net():
    return load_network(pkl())[0]


def test_loader_reproduces_the_snapshot(io_rec):
    config = io_rec["config"]
    record = read_snapshot(pkl())["ema"]
    tensors = state_dict(record)
    assert list(tensors) == list(config["state_dict_shapes"])  # names and order of EDM2's ema.state_dict()
    assert all(v.dtype == torch.float16 for v in tensors.values())
    assert record.module_sha256 == NETWORKS_EDM2_SHA256  # kept as a hash, never executed
    net, info, space = read_edm2_snapshot(pkl())
    assert info.class_name == "Precond" and info.model_type == "UNet" and info.num_params == config["num_params"]
    assert info.init_kwargs == {k: list(v) if isinstance(v, tuple) else v for k, v in config["init_kwargs"].items()}
    assert space.encoder == "StandardRGBEncoder" and not space.latent
    ours = net.state_dict()
    for name, value in tensors.items():
        assert torch.equal(ours[name], value.float()), name  # exact upcast
    gains = {m.gain_dtype for m in net.modules() if isinstance(m, MPConv)}
    assert gains == {torch.float16}


def test_denoiser_matches_edm2(net, io_rec):
    r = io_rec
    errs = {
        "D_x": per_sample_err(net(r["x"], r["sigma"], r["class_labels"]), r["D_x"]),
        "D_x_scalar_sigma": per_sample_err(net(r["x"], r["sigma_scalar"], r["class_labels"]), r["D_x_scalar_sigma"]),
        "D_x_no_labels": per_sample_err(net(r["x"], r["sigma"]), r["D_x_no_labels"]),
        "logvar": per_sample_err(net.logvar(r["sigma"]), r["logvar"]),
        "F_x": per_sample_err(net.unet(r["x_in"], r["c_noise"], r["unet_class_labels"]), r["F_x"]),
    }
    c_skip, c_out, c_in, c_noise = net.coefficients(r["sigma"].reshape(-1, 1, 1, 1))
    for name, ours in (("c_skip", c_skip), ("c_out", c_out), ("c_in", c_in), ("c_noise", c_noise)):
        torch.testing.assert_close(ours.flatten(), r[name].flatten(), rtol=1e-6, atol=0)
    assert torch.equal(net.labels(None, "cpu"), r["unet_class_labels_when_none"])
    # Every block's output (first 16 values per sample) and the embeddings.
    probes = {}
    hooks = [module.register_forward_hook(lambda m, a, out, name=name: probes.__setitem__(name, out))
             for name, module in [*(("enc." + k, v) for k, v in net.unet.enc.items()),
                                  *(("dec." + k, v) for k, v in net.unet.dec.items())]]
    net(r["x"], r["sigma"], r["class_labels"])
    for h in hooks:
        h.remove()
    assert list(probes) == r["blocks"]["order"]
    for name, head in r["blocks"]["head16"].items():
        errs[name] = per_sample_err(probes[name].flatten(1)[:, :16], head)
    emb = net.unet.embedding(r["c_noise"], r["unet_class_labels"])
    errs["emb"] = per_sample_err(emb, r["blocks"]["emb"])
    worst = max(errs.values())
    print(f"\nEDM2 denoiser: max per-sample error/maxabs {worst:.2e} over {len(errs)} tensors "
          f"(D_x {errs['D_x']:.2e})")


def test_float16_gain_rounding_is_what_edm2_computes(net, io_rec):
    """Without the float16 rounding of gain/√fan_in, the project's network is EDM2's float32-upcast
    copy (``D_x_weights_upcast_f32``), which differs from the snapshot's D_x (README §3, §7)."""
    r = io_rec
    try:
        for m in net.modules():
            if isinstance(m, MPConv):
                m.gain_dtype = None
        upcast = net(r["x"], r["sigma"], r["class_labels"])
    finally:
        for m in net.modules():
            if isinstance(m, MPConv):
                m.gain_dtype = torch.float16
    per_sample_err(upcast, r["D_x_weights_upcast_f32"])
    assert (upcast - r["D_x"]).abs().max() > 1e-5 * r["D_x"].abs().max()


def test_score_model_labels_and_prediction(io_rec):
    r = io_rec
    model = load_edm2(pkl())
    assert model.label_dim == 4 and model.shape == (3, 16, 16) and model.sde.kind == "ve"
    t = time_of_sigma(model.sde, r["sigma"].double())
    x = r["x"].double()
    with pytest.raises(ValueError, match="class-conditional"):
        model.data_and_noise(x, t)  # labels are given per batch (or at load), never defaulted
    cond = model.conditioned(r["class_label_indices"])
    x0, eps = cond.data_and_noise(x, t)
    per_sample_err(x0, r["D_x"])
    torch.testing.assert_close(cond(x, t), -eps / r["sigma"].double().reshape(-1, 1, 1, 1))
    fixed = load_edm2(pkl(), label=2)
    torch.testing.assert_close(fixed.class_labels, torch.eye(4)[[2]])
    with pytest.raises(ValueError, match="samples are pixels"):
        model.latent_to_vae(x)


# --- EDM2's edm_sampler ------------------------------------------------------------------------
class LoggedNet(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.inner, self.calls = net, []

    def forward(self, x, sigma, *labels):
        self.calls.append((x.clone(), sigma.clone()))
        return self.inner(x, sigma, *labels)


@pytest.mark.parametrize("schedule", ["karras", "karras_float32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_edm2_sampler_is_reproduced(dtype, schedule):
    """EDM2 runs float32 throughout; the project's edm_heun (float64 time, state in ``dtype``)
    reproduces its calls, latents and uint8 images, on the float64 Karras grid (the default) and on
    EDM2's float32 evaluation of it ('karras_float32': the same σ in every network call)."""
    rec = fixture("P_img16_cond_sampler_det.pt")
    kw = rec["sampler_kwargs"]
    assert kw["guidance"] == 1 and kw["S_churn"] == 0
    assert (kw["sigma_min"], kw["sigma_max"], kw["rho"]) == (0.002, 80, 7)
    model = load_edm2(pkl()).conditioned(rec["class_label_indices"])
    model.net = LoggedNet(model.net)
    problem = Problem(model)
    x_init = rec["noise"].to(dtype) * rec["t_steps"][0]  # EDM2 starts from noise · t_0 (t_0 = 79.99998)
    sampler = make_sampler("edm_heun", n_steps=kw["num_steps"], schedule=schedule)
    sol = sampler.sample(problem, x_init, RecordedNoise([]))
    assert sol.stats.nfe == problem.counter.nfe == rec["nfe_net"] == 15 and rec["num_randn_draws"] == 0
    calls = model.net.calls
    assert len(calls) == 15
    sig = torch.stack([s for _, s in calls])
    assert bool((sig == sig[:, :1]).all())  # one σ per call for the batch, as EDM2's 0-dim t
    if schedule == "karras_float32":  # EDM2's float32 σ exactly, but the final denoise at eps (σ = 0.002)
        assert torch.equal(sig[:-1, 0].float(), rec["calls_t"][:-1])
        torch.testing.assert_close(sig[-1:, 0], rec["calls_t"][-1:].double(), rtol=1e-6, atol=0)
    else:  # the float64 grid (t_0 = 80, not 79.99998) is within 1e-6 of EDM2's
        torch.testing.assert_close(sig[:, 0], rec["calls_t"].double(), rtol=1e-6, atol=0)
        assert not torch.equal(sig[:, 0].float(), rec["calls_t"])
    for k, (x, _) in enumerate(calls):
        per_sample_err(x, rec["calls_x"][k], abs_=0)
    err = per_sample_err(sol.x, rec["latents_out"], abs_=0)
    images = model.space.to_uint8(sol.x)
    diff = int((images.int() - rec["images_uint8_nchw"].int()).abs().max())
    assert images.shape == rec["images_uint8_nchw"].shape and diff <= 1
    print(f"\nEDM2 edm_sampler replay ({dtype}, {schedule}): NFE {sol.stats.nfe} (EDM2 {rec['nfe_net']}), "
          f"latents max per-sample error/maxabs {err:.2e}, uint8 max |Δ| {diff}")


class ReplayScore:
    """A VE score model answering with EDM2's recorded network outputs, in order (no network); it keeps
    the states it is called at."""

    def __init__(self, sde, outs):
        self.sde, self.shape, self.data_range = sde, tuple(outs.shape[2:]), (-1.0, 1.0)
        self.outs, self.xs = outs, []

    def __call__(self, x, t):
        D = self.outs[len(self.xs)].to(x.dtype)
        self.xs.append(x.clone())
        sigma = self.sde.marginal(t)[1].reshape(-1, 1, 1, 1)
        return (D - x) / sigma**2


def test_sampler_arithmetic_with_recorded_network_outputs():
    """README §7: driven by EDM2's recorded outputs, every state the sampler evaluates (EDM2's calls_x)
    and the result are reproduced to ≤ 1e-6·maxabs (the last step to σ = 0 returns D itself)."""
    rec = fixture("P_img16_cond_sampler_det.pt")
    score = ReplayScore(load_edm2(pkl()).sde, rec["calls_out"])
    sampler = make_sampler("edm_heun", n_steps=8, schedule="karras_float32")
    sol = sampler.sample(Problem(score), rec["noise"].double() * rec["t_steps"][0], RecordedNoise([]))
    assert len(score.xs) == 15
    errs = [float((x - ref).abs().max() / ref.abs().max()) for x, ref in zip(score.xs, rec["calls_x"], strict=True)]
    errs.append(float((sol.x - rec["latents_out"]).abs().max() / rec["latents_out"].abs().max()))
    assert max(errs) <= 1e-6, errs
    print(f"\nEDM2 sampler arithmetic on recorded outputs: max error/maxabs {max(errs):.2e} over 15 calls + result")


# --- latent snapshots -----------------------------------------------------------------------------
RAW_MEAN, RAW_STD = [5.81, 3.25, 0.12, -2.15], [4.17, 4.62, 3.71, 3.28]  # StabilityVAEEncoder's defaults


def vae_encoder_record(scale=None, bias=None) -> Persistent:
    scale = np.float32(0.5) / np.float32(RAW_STD) if scale is None else scale
    bias = np.float32(0) - np.float32(RAW_MEAN) * scale if bias is None else bias
    state = {"vae_name": "stabilityai/sd-vae-ft-mse", "scale": scale, "bias": bias, "batch_size": 8, "_vae": None,
             "_init_args": (), "_init_kwargs": {}}
    return Persistent("StabilityVAEEncoder", state, "")


def test_latent_snapshot_exposes_the_vae_input(tmp_path):
    data = read_snapshot(pkl())
    data["encoder"] = vae_encoder_record()
    path = tmp_path / "latent.pkl"
    path.write_bytes(dumps_snapshot(data))
    model = load_edm2(path)
    assert model.latent and model.space.vae_name == "stabilityai/sd-vae-ft-mse"
    np.testing.assert_array_equal(model.space.scale, np.float32([0.11990407, 0.10822511, 0.13477089, 0.15243903]))
    np.testing.assert_array_equal(model.space.bias, np.float32([-0.69664264, -0.3517316, -0.016172506, 0.32774392]))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    vae_in = model.latent_to_vae(x)
    # Encoding x·scale + bias undoes it: the latent is the VAE's raw latent normalised to std 0.5.
    scale, bias = torch.from_numpy(model.space.scale).reshape(1, -1, 1, 1), torch.from_numpy(model.space.bias)
    torch.testing.assert_close(vae_in * scale + bias.reshape(1, -1, 1, 1), x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(vae_in[:, 0], (x[:, 0] - bias[0]) / scale[0, 0], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"expected latents \[B, 4, H, W\]"):
        model.latent_to_vae(x[:, :3])
    with pytest.raises(ValueError, match="decode through the VAE"):
        model.space.to_uint8(x)
    # float64 arrays (or anything but float32) in a snapshot are refused by the unpickler.
    data["encoder"] = vae_encoder_record(scale=np.float64(0.5) / np.float64(RAW_STD), bias=np.zeros(4))
    path.write_bytes(dumps_snapshot(data))
    with pytest.raises(UnsafePickleError, match="numpy array of dtype.*float64.*not accepted"):
        load_edm2(path)
    data["encoder"] = Persistent("FancyEncoder", {}, "")
    path.write_bytes(dumps_snapshot(data))
    with pytest.raises(ValueError, match="encoder 'FancyEncoder'.*expected one of: StandardRGBEncoder, StabilityVAE"):
        load_edm2(path)


# --- hostile pickles --------------------------------------------------------------------------------
MARKER = "PWNED_EDM2_MARKER"


class RunsSystem:
    def __reduce__(self):
        return (os.system, (f"echo pwned > {MARKER}",))


class RunsExec:
    def __reduce__(self):
        return (exec, (f"open('{MARKER}', 'w').write('pwned')",))


def _misc_global():  # stands for a torch_utils function other than the persistence record
    return None


class CallsTorchUtils:
    def __reduce__(self):
        return (_misc_global, ())


@pytest.mark.parametrize("payload, global_name", [
    (RunsSystem(), r"(posix|os|nt)\.system"),
    (RunsExec(), r"builtins\.exec"),
    (CallsTorchUtils(), r"torch_utils\.misc\.const_like"),
])
def test_hostile_edm2_pickle_is_refused_before_it_runs(tmp_path, monkeypatch, payload, global_name):
    """An EDM2 snapshot (EasyDict, the real records) with one entry that would create a file when
    unpickled: refused, the global named, the file never created."""
    monkeypatch.chdir(tmp_path)
    data = read_snapshot(pkl())
    data["loss_fn"] = payload
    blob = dumps_snapshot(data, names={_misc_global: ("torch_utils.misc", "const_like")})
    path = tmp_path / "network-snapshot-0000000-0.050.pkl"
    path.write_bytes(blob)
    globals_named = [arg for op, arg, _ in pickletools.genops(blob) if op.name == "SHORT_BINUNICODE"]
    assert ("system" if isinstance(payload, RunsSystem) else "exec" if isinstance(payload, RunsExec)
            else "const_like") in globals_named  # the payload is in the file, ready to be called
    with pytest.raises(UnsafePickleError, match=rf"refused global {global_name}"):
        load_edm2(path)
    assert not (tmp_path / MARKER).exists()


# --- reference statistics ---------------------------------------------------------------------------
def test_reference_stats_read_as_plain_arrays(tmp_path):
    rng = np.random.default_rng(0)
    stats = {"fid": {"mu": rng.standard_normal(8), "sigma": np.eye(8)},
             "fd_dinov2": {"mu": rng.standard_normal(4).astype(np.float32), "sigma": np.eye(4, dtype=np.float32)}}
    for protocol in (4, 5):
        path = tmp_path / f"img64_p{protocol}.pkl"
        path.write_bytes(pickle.dumps(stats, protocol=protocol))
        got = read_reference_stats(path)
        assert set(got) == {"fid", "fd_dinov2"}
        for metric, d in stats.items():
            for key, ref in d.items():
                assert type(got[metric][key]) is np.ndarray and got[metric][key].dtype == ref.dtype
                np.testing.assert_array_equal(got[metric][key], ref)
    # Hostile: a payload beside the arrays is refused, the global named, nothing run.
    monkey = tmp_path / MARKER
    path = tmp_path / "hostile.pkl"
    path.write_bytes(pickle.dumps({"fid": {"mu": np.zeros(2), "sigma": RunsSystem()}}, protocol=4))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(UnsafePickleError, match=r"refused global (posix|os|nt)\.system.*reference statistics"):
            read_reference_stats(path)
    finally:
        os.chdir(cwd)
    assert not monkey.exists()
    # Torch tensors and object arrays are not reference statistics.
    path.write_bytes(pickle.dumps({"fid": {"mu": torch.zeros(2)}}))
    with pytest.raises(UnsafePickleError, match="refused global torch"):
        read_reference_stats(path)
    path.write_bytes(pickle.dumps({"fid": {"mu": np.array([1, "a"], dtype=object)}}, protocol=4))
    with pytest.raises(UnsafePickleError):
        read_reference_stats(path)


def test_snapshot_file_hash_is_the_documented_one():
    assert hashlib.sha256(pkl().read_bytes()).hexdigest() == (
        "c914b09a5b421817fe807eb9dfbf71f78d913c42f5a5d199480eea088fd16af8")


# --- EDM2's stochastic sampler: noise drawn only on the steps that churn ------------------------------
def edm2_sampler_spec(denoise, noise, t_steps, S_churn, S_min, S_max, S_noise, generator):
    """README §4's ``edm_sampler`` loop written out (float64 here): a draw only where
    S_min ≤ t_cur ≤ S_max. Returns (x, the draws taken)."""
    num_steps, draws = len(t_steps) - 1, []
    x = noise * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:], strict=True)):
        t_hat, x_hat = t_cur, x
        if S_churn > 0 and S_min <= t_cur <= S_max:
            gamma = min(S_churn / num_steps, 2**0.5 - 1)
            t_hat = t_cur + gamma * t_cur
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            draws.append(z)
            x_hat = x + (t_hat**2 - t_cur**2).sqrt() * S_noise * z
        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            d_prime = (x - denoise(x, t_next)) / t_next
            x = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x, draws


@pytest.mark.parametrize("churn_draws", ["in_range", "every_step"])
def test_edm2_stochastic_sampler_draws_only_where_it_churns(churn_draws):
    rec = fixture("P_img16_cond_sampler_det.pt")
    churn = dict(S_churn=40.0, S_tmin=0.05, S_tmax=50.0, S_noise=1.003)  # EDM's ImageNet-64 settings
    model = load_edm2(pkl()).conditioned(rec["class_label_indices"])
    t_steps = rec["t_steps"].double()  # EDM2's float32 grid, 8 points, then 0

    def denoise(x, t):
        return model.net(x, t.reshape(1).expand(x.shape[0]), model.class_labels).double()

    noise = rec["noise"].double()
    ref, draws = edm2_sampler_spec(denoise, noise, t_steps, churn["S_churn"], churn["S_tmin"], churn["S_tmax"],
                                   churn["S_noise"], torch.Generator().manual_seed(0))
    assert len(draws) == 5  # σ = 80, 0.035, 0.002 lie outside [0.05, 50]
    in_range = [bool(churn["S_tmin"] <= s <= churn["S_tmax"]) for s in t_steps[:-2]]  # the 7 Heun steps
    if churn_draws == "in_range":
        recorded = list(draws)
    else:  # EDM's rule: a draw on every step; those outside the range are multiplied by 0
        it = iter(draws)
        recorded = [next(it) if inside else torch.full_like(noise, 1e3) for inside in in_range]
    stream = RecordedNoise(recorded)
    sampler = make_sampler("edm_stochastic", n_steps=8, schedule="karras_float32", churn_draws=churn_draws, **churn)
    sol = sampler.sample(Problem(model), noise * t_steps[0], stream)
    assert stream.k == len(recorded) == (5 if churn_draws == "in_range" else 7)
    assert sol.stats.nfe == 15
    err = per_sample_err(sol.x, ref, abs_=0)
    print(f"\nEDM2 stochastic sampler spec ({churn_draws}): NFE {sol.stats.nfe}, max per-sample error/maxabs {err:.2e}")
    with pytest.raises(ValueError, match="churn_draws must be one of: every_step, in_range"):
        make_sampler("edm_stochastic", churn_draws="sometimes")
