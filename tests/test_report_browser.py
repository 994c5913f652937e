"""report.html in a real browser: Debian's headless Chromium over the DevTools pipe (bench.browser).

Needs Debian's ``chromium`` package (``apt-get install chromium``), which the README's set-up does not
install: without it the test skips with that reason, except under CI's strict mode
(``SCOREBENCH_REQUIRE_FIXTURES=1``; .ci/run installs the package), where the skip fails.
"""

from __future__ import annotations

import re

import torch

from bench.browser import ChromiumError, find_chromium, inspect_page
from bench.records import write_record, write_samples
from bench.report import build_report
from tests.conftest import missing


def record(run_id, model, solver, nfe, fd, status="ok", **options):
    metrics = {} if fd is None else {"fd_exact": {
        "value": fd, "protocol": {"metric": "fd_exact", "seeds": "0-63", "num_generated": 64},
        "uncertainty": {"method": "jackknife over 10 seed groups", "stderr": 0.05 * fd,
                        "interval": [0.9 * fd, 1.1 * fd], "level": 0.95}}}
    return {"run_id": run_id, "grid": "browser", "model": model, "solver": solver, "options": options,
            "status": status, "message": "" if status == "ok" else "non-finite state at step 3", "nfe": nfe,
            "metrics": metrics, "wall_time_s": 0.1 * (nfe or 1), "sampling_time_s": 0.05, "num_samples": 64,
            "batch_size": 32, "seeds": "0-63", "device": "cpu", "data_range": [-1, 1], "T": None,
            "prior": {"kind": "gaussian"}, "versions": {"torch": torch.__version__}, "git_revision": "abc123"}


def make_results(out):
    rows = [record(f"r{i:09d}", model, solver, n, fd)
            for i, (model, solver, n, fd) in enumerate([
                ("mix", "euler_maruyama", 10, 0.5), ("mix", "euler_maruyama", 100, 0.05), ("mix", "pf_heun", 19, 0.2),
                ("mix", "pf_heun", 39, 0.1), ("mix", "ddim", 10, 0.3), ("mix", "adaptive_em", 120, 0.04),
                ("img", "pf_euler", 10, 2.0), ("img", "pf_euler", 30, 1.0)])]
    rows.append(record("f000000001", "mix", "pc", None, None, status="nonfinite"))
    for r in rows:
        write_record(out, r)
    write_samples(out, "r000000000", torch.randn(64, 2))
    write_samples(out, "r000000006", torch.rand(16, 1, 8, 8) * 2 - 1)
    (out / "grid.yaml").write_text("name: browser\n# <not a tag>\n")
    return rows


def test_report_in_headless_chromium(tmp_path):
    try:
        find_chromium()
    except ChromiumError as e:
        missing(str(e))
    rows = make_results(tmp_path)
    made = build_report(tmp_path)
    page = made["report_html"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)  # nothing fetched from anywhere
    assert "&lt;not a tag&gt;" in page  # the grid file is shown, escaped
    sort_and_filter = """(() => {
      const th = Array.from(document.querySelectorAll('#runs th')).find(h => h.textContent === 'nfe');
      th.click(); const up = Array.from(document.querySelectorAll('#runs tbody tr'))
        .map(r => r.cells[th.cellIndex].textContent);
      th.click(); const down = document.querySelector('#runs tbody tr').cells[th.cellIndex].textContent;
      const f = document.getElementById('filter'); f.value = 'pf_heun'; f.dispatchEvent(new Event('input'));
      const shown = Array.from(document.querySelectorAll('#runs tbody tr')).filter(r => r.style.display !== 'none');
      const thumb = document.querySelector('.thumbs img'); thumb.click();
      return {up: up, down: down, shown: shown.length, label: document.getElementById('shown').textContent,
              big: thumb.classList.contains('big')};
    })()"""
    seen = inspect_page(made["report_html"], screenshot=tmp_path / "shot.png", script=sort_and_filter)
    assert seen["errors"] == [] and seen["requests"] == []
    assert seen["title"] == "scorebench report: browser"
    # Every image loaded: 2 models x (fd_exact + wall-clock figures) + 2 sample grids.
    assert len(seen["images"]) == 6
    assert all(i["complete"] and i["width"] > 100 and i["height"] > 100 for i in seen["images"]), seen["images"]
    assert seen["tables"]["runs"] == len(rows) == 9
    s = seen["script"]
    assert s["up"][:3] == ["10", "10", "10"] and s["up"][-1] == ""  # numeric sort, the failed run (no NFE) last
    assert s["down"] == "120"
    assert s["shown"] == 2 and s["label"] == "2" and s["big"] is True
    assert (tmp_path / "shot.png").stat().st_size > 10_000
