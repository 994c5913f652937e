"""EDM2's reference statistics (``calculate_metrics.py ref``: a pickled dict of numpy arrays) as a source of
FID and FD_DINOv2 reference statistics: read as data by a restricted unpickler, refused where the run asks
for another protocol than EDM2's (exit 2, one line naming the file and the field).
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from bench.metrics.edm_reference import check_protocol, read_edm_reference
from tests.conftest import require_fixture
from tests.test_fid import _images, _StandInInception

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|load)` is deprecated:DeprecationWarning")


def _stats(dim: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(3 * dim, dim))
    return {"mu": rng.normal(size=dim), "sigma": a.T @ a / (3 * dim)}


def write_edm2_pickle(path, **sections) -> None:
    """As EDM2's save_stats: pickle.dump of dict(num_images=N, <metric>=dict(mu=..., sigma=...))."""
    with open(path, "wb") as f:
        pickle.dump({"num_images": 1234, **sections}, f)


class _Payload:
    """A pickle that would run a shell command when loaded by pickle.load."""

    def __init__(self, target) -> None:
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_reads_edm2_statistics_as_arrays(tmp_path):
    fid, dino = _stats(6, 0), _stats(4, 1)
    write_edm2_pickle(tmp_path / "ref.pkl", fid=fid, fd_dinov2=dino)
    got = read_edm_reference(tmp_path / "ref.pkl")
    assert got["num_images"] == 1234
    for name, expected in (("fid", fid), ("fd_dinov2", dino)):
        for key in ("mu", "sigma"):
            np.testing.assert_array_equal(got[name][key], expected[key])
            assert got[name][key].dtype == np.float64


def test_never_runs_code_from_the_file(tmp_path):
    target = tmp_path / "pwned"
    write_edm2_pickle(tmp_path / "evil.pkl", fid={"mu": _Payload(target), "sigma": np.eye(2)})
    with pytest.raises(ValueError, match=r"evil.pkl: refused global posix.system"):
        read_edm_reference(tmp_path / "evil.pkl")
    assert not target.exists()
    with open(tmp_path / "obj.pkl", "wb") as f:  # an object array: refused
        pickle.dump({"fid": {"mu": np.array([1, "x"], dtype=object), "sigma": np.eye(2)}}, f)
    with pytest.raises(ValueError, match=r"obj.pkl: .*dtype 'O8' is not accepted"):
        read_edm_reference(tmp_path / "obj.pkl")


@pytest.mark.parametrize("fid, message", [
    ({"mu": np.zeros(3)}, "field 'fid' must hold 'mu' and 'sigma'"),
    ({"mu": np.zeros(3), "sigma": np.eye(4)}, r"field 'fid.sigma' has shape \(4, 4\), mu has \(3,\)"),
    ({"mu": np.zeros((3, 1)), "sigma": np.eye(3)}, "field 'fid.mu' must be a 1-d numeric array")])
def test_malformed_sections(tmp_path, fid, message):
    write_edm2_pickle(tmp_path / "bad.pkl", fid=fid)
    with pytest.raises(ValueError, match="bad.pkl: " + message):
        read_edm_reference(tmp_path / "bad.pkl")


def test_an_edm2_network_pickle_is_refused():
    """EDM2's network snapshots (shared fixture) pickle EDM2's persistent classes: refused, nothing imported or run."""
    path = require_fixture("edm2/P_img16_cond.pkl")
    with pytest.raises(ValueError, match="refused global torch_utils.persistence._reconstruct_persistent_obj"):
        read_edm_reference(path)


def test_protocol_and_sections(tmp_path):
    write_edm2_pickle(tmp_path / "ref.pkl", fid=_stats(6, 0))
    assert check_protocol(tmp_path / "ref.pkl", "fid", mode="legacy_tensorflow")["num_images"] == 1234
    with pytest.raises(ValueError, match=r"ref.pkl: field 'fid' holds statistics of mode 'legacy_tensorflow' "
                                         r"\(EDM2's calculate_metrics.py\), the run asks for 'clean'"):
        check_protocol(tmp_path / "ref.pkl", "fid", mode="clean")
    with pytest.raises(ValueError, match=r"ref.pkl: field 'fd_dinov2' is missing \(sections: fid\)"):
        check_protocol(tmp_path / "ref.pkl", "fd_dinov2", dinov2_resize="torch")


def test_fid_from_an_edm2_pickle_equals_the_npz(tmp_path):
    """The same mu/sigma as an npz and as EDM2's pickle give the same FID (stand-in Inception network)."""
    from bench.metrics import compute_metric
    from bench.metrics.assets import INCEPTION_FILE
    from bench.metrics.fid import compute_reference_stats

    torch.manual_seed(123)
    torch.jit.script(_StandInInception().eval()).save(str(tmp_path / INCEPTION_FILE))
    npz = compute_reference_stats(_images(40, 1).split(20), "toy", 32, "train", inception=tmp_path,
                                  backend="scorebench", out=tmp_path / "ref.npz")
    with np.load(npz) as f:
        write_edm2_pickle(tmp_path / "ref.pkl", fid={"mu": f["mu"], "sigma": f["sigma"]})
    x = _images(30, 2, shift=0.1)
    opts = {"inception": tmp_path, "backend": "scorebench"}
    a, pa = compute_metric("fid", x, ref_path=npz, **opts)
    b, pb = compute_metric("fid", x, ref_path=tmp_path / "ref.pkl", **opts)
    assert a == b and pb["num_reference"] == 1234 and "EDM2" in pb["reference_format"]
    with pytest.raises(ValueError, match="field 'fid' holds statistics of mode 'legacy_tensorflow'"):
        compute_metric("fid", x, ref_path=tmp_path / "ref.pkl", mode="clean", **opts)


def test_fd_dinov2_from_an_edm2_pickle_and_the_grid_refusals(tmp_path, monkeypatch, capsys):
    """fd_dinov2 against EDM2's pickle equals the npz of the same statistics (resize 'torch', EDM2's); a grid
    asking for 'pil' against it, or KID against it, exits 2 with one line naming the file and the field."""
    pytest.importorskip("transformers")
    import yaml

    from bench.metrics import compute_metric
    from bench.metrics.dinov2 import compute_dinov2_reference
    from bench.run import main
    from tests.test_dinov2 import hub_state

    weights = tmp_path / "dinov2_tiny.pth"
    torch.save(hub_state(), weights)
    npz = compute_dinov2_reference(_images(30, 1).split(15), tmp_path / "ref.npz", weights=weights, resize="torch")
    with np.load(npz) as f:
        write_edm2_pickle(tmp_path / "ref.pkl", fid=_stats(2048, 0), fd_dinov2={"mu": f["mu"], "sigma": f["sigma"]})
    x = _images(20, 2, shift=0.1)
    a, _ = compute_metric("fd_dinov2", x, dinov2=str(weights), dinov2_ref=str(npz), dinov2_resize="torch")
    b, pb = compute_metric("fd_dinov2", x, dinov2=str(weights), dinov2_ref=str(tmp_path / "ref.pkl"),
                           dinov2_resize="torch")
    assert a == b and pb["dinov2_resize"] == "torch"

    monkeypatch.setenv("SCOREBENCH_CACHE", str(tmp_path))
    torch.jit.script(_StandInInception().eval()).save(str(tmp_path / "inception-2015-12-05.pt"))
    pkl = tmp_path / "ref.pkl"
    for metric, data, message in (
            ("fd_dinov2", {"dinov2": str(weights), "dinov2_ref": str(pkl)},
             f"{pkl}: field 'fd_dinov2' holds statistics of dinov2_resize 'torch' (EDM2's calculate_metrics.py), "
             "the run asks for 'pil'"),
            ("kid", {"ref_path": str(pkl)}, f"{pkl}: field 'feats' is missing"),
            ("fid", {"ref_path": str(pkl), "mode": "clean"}, f"{pkl}: field 'fid' holds statistics of mode")):
        raw = {"name": "edm2_ref", "models": {"img": {"kind": "mixture", "shape": [3, 8, 8], "components": 2,
                                                      "sde": {"kind": "vp"}, "data": data}},
               "eval": {"num_samples": 8, "batch_size": 8, "seeds": "0-7", "metrics": [metric], "device": "cpu"},
               "sweeps": [{"solver": "ddim", "n_steps": 2}]}
        path = tmp_path / f"{metric}.yaml"
        path.write_text(yaml.safe_dump(raw))
        assert main(["--grid", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and str(path) in err[0], err
        assert not (tmp_path / "out").exists()
