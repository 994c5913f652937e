"""report.html: one self-contained page per results folder (images inline, no network, opens from disk).

The page holds, per model: the quality-vs-NFE and wall-clock-vs-NFE figures, the Pareto front per
metric (interval overlaps marked), the fixed-NFE-budget and NFE-to-reach tables, bits/dim, each
metric's protocol and sample grids (thumbnails; a click shows full size); then the run table
(sortable by a click on a header, filterable by text: a few lines of plain JavaScript, no library),
failed runs with their reasons, the environment and the grid file. Every string from a record is
HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["page", "table", "image", "RUN_TABLE_COLUMNS"]

RUN_TABLE_COLUMNS = ("run_id", "model", "family", "status", "nfe", "n_steps", "num_samples", "batch_size",
                     "wall_time_s", "sampling_time_s")

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1400px;padding:0 18px 60px;color:#222}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:19px;border-bottom:1px solid #ccc;margin-top:34px}
h3{font-size:15px;margin:22px 0 6px}nav a{margin-right:12px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:12.5px}
th,td{border:1px solid #ddd;padding:2px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}table.sortable th{cursor:pointer}table.sortable th:after{content:" \\2195";color:#aaa}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.fail td{background:#fff1f0}
.fig{max-width:100%;height:auto;border:1px solid #eee}.note{color:#555;font-size:12.5px}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}.thumbs figure{margin:0;font-size:11px;width:140px}
.thumbs img{width:136px;height:auto;image-rendering:pixelated;cursor:zoom-in;border:1px solid #ddd}
.thumbs img.big{width:auto;max-width:90vw;cursor:zoom-out;position:relative;z-index:2}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}.overlap{color:#b35900}
input#filter{font-size:13px;padding:3px 6px;width:320px}
"""

_JS = """
function sortTable(th){const t=th.closest('table'),b=t.tBodies[0],i=Array.from(th.parentNode.children).indexOf(th);
 const asc=th.dataset.dir!=='asc';th.dataset.dir=asc?'asc':'desc';
 const key=r=>{const s=r.cells[i].textContent.trim(),v=parseFloat(s);return isNaN(v)||!/^[-+.\\d]/.test(s)?s:v;};
 const rows=Array.from(b.rows).sort((a,c)=>{const x=key(a),y=key(c);
  if(typeof x===typeof y)return (x<y?-1:x>y?1:0)*(asc?1:-1);return typeof x==='number'?-1:1;});
 rows.forEach(r=>b.appendChild(r));}
function filterRuns(q){q=q.toLowerCase();let n=0;
 for(const r of document.getElementById('runs').tBodies[0].rows){const s=r.textContent.toLowerCase().includes(q);
  r.style.display=s?'':'none';n+=s;}document.getElementById('shown').textContent=n;}
document.addEventListener('DOMContentLoaded',()=>{
 for(const th of document.querySelectorAll('table.sortable th'))th.addEventListener('click',()=>sortTable(th));
 for(const im of document.querySelectorAll('.thumbs img'))im.addEventListener('click',()=>im.classList.toggle('big'));
 const f=document.getElementById('filter');if(f)f.addEventListener('input',()=>filterRuns(f.value));});
"""


def _esc(v: object) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _cell(v: object) -> tuple[str, bool]:
    """Text of a table cell and whether it is a number."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "", False
    if isinstance(v, bool | np.bool_):
        return ("yes" if v else ""), False
    if isinstance(v, int | np.integer):
        return str(int(v)), True
    if isinstance(v, float | np.floating):
        return f"{float(v):.4g}", True
    return str(v), False


def table(df: pd.DataFrame, table_id: str | None = None, sortable: bool = False, row_class=None) -> str:
    """An HTML table of ``df`` (escaped); ``row_class(row) -> str`` sets a class per row."""
    attrs = f' id="{_esc(table_id)}" data-rows="{_esc(table_id)}"' if table_id else ""
    cls = ' class="sortable"' if sortable else ""
    head = "".join(f"<th>{_esc(c)}</th>" for c in df.columns)
    rows = []
    for rec in df.to_dict("records"):
        tds = []
        for c in df.columns:
            text, num = _cell(rec[c])
            tds.append(f'<td class="num">{_esc(text)}</td>' if num else f"<td>{_esc(text)}</td>")
        rc = row_class(rec) if row_class else ""
        rows.append(f'<tr class="{_esc(rc)}">' + "".join(tds) + "</tr>" if rc else "<tr>" + "".join(tds) + "</tr>")
    return f"<table{attrs}{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def image(path: Path, alt: str, cls: str = "fig") -> str:
    """An ``<img>`` with the PNG inline as a data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img class="{cls}" alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _protocol_table(records: list[dict], metric: str) -> pd.DataFrame:
    """Distinct values of each protocol field of ``metric`` over the records (with run counts)."""
    fields: dict[str, Counter] = {}
    for r in records:
        entry = (r.get("metrics") or {}).get(metric) or {}
        proto = dict(entry.get("protocol") or {})
        u = entry.get("uncertainty") or {}
        if u:
            proto["uncertainty"] = f"{u.get('method')}; level {u.get('level')}"
        for k, v in proto.items():
            if k in ("nfe_per_batch", "stderr"):
                continue
            s = json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else str(v)
            fields.setdefault(k, Counter())[s[:300]] += 1
    rows = [{"field": k, "value": "; ".join(f"{v}" + (f" ({n} runs)" if len(c) > 1 else "") for v, n in c.items())}
            for k, c in sorted(fields.items())]
    return pd.DataFrame(rows, columns=["field", "value"])


def _environment(records: list[dict]) -> pd.DataFrame:
    fields: dict[str, Counter] = {}
    for r in records:
        env = {"git_revision": r.get("git_revision"), "device": r.get("device"), "device_name": r.get("device_name"),
               "host": r.get("host"), "platform": r.get("platform"), "executor": r.get("executor"),
               "threads": r.get("threads"), **{f"version: {k}": v for k, v in (r.get("versions") or {}).items()}}
        for k, v in env.items():
            if v is not None:
                fields.setdefault(k, Counter())[str(v)] += 1
    return pd.DataFrame([{"field": k, "value": "; ".join(f"{v} ({n} runs)" for v, n in c.items())}
                         for k, c in fields.items()], columns=["field", "value"])


def page(*, title: str, records: list[dict], runs: pd.DataFrame, models: list[dict], grid_text: str | None,
         notes: list[str]) -> str:
    """The whole page.

    Args:
        title: page title (the grid name).
        records: every record (for protocols and the environment).
        runs: the runs frame.
        models: one dict per model: ``name``, ``figures`` [(png path, alt)], ``sections``
            [(heading, html)], ``samples`` [(png path, caption)].
        grid_text: the grid file's text, if the results folder has it.
        notes: lines for the top of the page.
    """
    n_ok = int((runs["status"] == "ok").sum())
    parts = [f"<h1>{_esc(title)}</h1>",
             f'<p class="note">{len(runs)} runs ({n_ok} ok, {len(runs) - n_ok} failed) · {len(models)} models · '
             + " · ".join(_esc(n) for n in notes) + "</p>",
             "<nav>" + "".join(f'<a href="#model-{i}">{_esc(m["name"])}</a>' for i, m in enumerate(models))
             + '<a href="#runs-section">runs</a><a href="#failed">failed runs</a><a href="#environment">environment</a>'
             '<a href="#grid">grid file</a></nav>']
    for i, m in enumerate(models):
        parts.append(f'<h2 id="model-{i}">model {_esc(m["name"])}</h2>')
        for path, alt in m["figures"]:
            parts.append(image(path, alt))
        for heading, body in m["sections"]:
            parts.append(f"<h3>{_esc(heading)}</h3>{body}")
        parts.append("<h3>metric protocols</h3>")
        mrecs = [r for r in records if r.get("model") == m["name"]]
        for metric in sorted({k for r in mrecs for k in (r.get("metrics") or {})}):
            parts.append(f"<p><b>{_esc(metric)}</b></p>" + table(_protocol_table(mrecs, metric)))
        if m["samples"]:
            parts.append("<h3>sample grids (click for full size)</h3><div class='thumbs'>" + "".join(
                f"<figure>{image(p, cap, 'thumb')}<figcaption>{_esc(cap)}</figcaption></figure>"
                for p, cap in m["samples"]) + "</div>")
    cols = [c for c in RUN_TABLE_COLUMNS if c in runs]
    for metric in sorted(_metric_columns(runs)):
        cols += [metric, f"{metric}_stderr"]
    parts.append('<h2 id="runs-section">all runs</h2><p>filter: <input id="filter" placeholder="text in any cell">'
                 f' <span class="note"><span id="shown">{len(runs)}</span> of {len(runs)} shown; '
                 "click a header to sort</span></p>")
    parts.append(table(runs[cols], "runs", sortable=True,
                       row_class=lambda r: "" if r.get("status") == "ok" else "fail"))
    failed = runs[runs["status"] != "ok"]
    parts.append(f'<h2 id="failed">failed runs ({len(failed)})</h2>')
    parts.append(table(failed[["run_id", "model", "family", "status", "message"]]) if len(failed)
                 else "<p>none</p>")
    parts.append('<h2 id="environment">environment</h2>' + table(_environment(records)))
    parts.append('<h2 id="grid">grid file</h2>' + (f"<pre>{_esc(grid_text)}</pre>" if grid_text is not None else
                                                   "<p>not in the results folder (runs made before the sweep "
                                                   "copied it)</p>"))
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
            f"<title>{_esc(title)}</title><style>{_CSS}</style><script>{_JS}</script></head><body>"
            + "\n".join(parts) + "</body></html>\n")


def _metric_columns(runs: pd.DataFrame) -> set[str]:
    """The metric value columns of the runs frame (those with a ``_stderr`` companion)."""
    return {c[: -len("_stderr")] for c in runs.columns if c.endswith("_stderr")}
