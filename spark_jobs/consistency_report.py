"""The consistency report: one self-contained HTML page (plots as inline base64 PNG) plus the JSON summary.

Plots (matplotlib, Agg backend): inconsistency rate per feature, rate per hour, online vs offline scatter of the
most inconsistent numeric features, and the cause breakdown. No external asset: the page opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

TOP_FEATURES = 25


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(summary: dict[str, Any]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    cols = sorted(summary["columns"], key=lambda c: -c["mismatch_rate"])[:TOP_FEATURES]
    cols = [c for c in cols if c["inconsistent"]] or cols[:10]
    fig, ax = plt.subplots(figsize=(8, max(2.0, 0.28 * len(cols) + 1)))
    ax.barh([c["name"] for c in cols][::-1], [100 * c["mismatch_rate"] for c in cols][::-1], color="#c0392b")
    ax.set_xlabel("inconsistent rows (%)")
    ax.set_title("Inconsistency rate per feature (top)")
    out["per_feature"] = _png(fig)

    hours = summary["hours"]
    fig, ax = plt.subplots(figsize=(8, 2.8))
    ax.plot(
        [h["hour"] for h in hours], [100 * h["mismatch_rate"] for h in hours], marker="o", color="#2c3e50"
    )
    ax.set_xlabel("hour (UTC)")
    ax.set_ylabel("inconsistent cells (%)")
    ax.set_title(f"Inconsistency over {summary['date']}")
    out["over_time"] = _png(fig)

    numeric = [c for c in summary["columns"] if c.get("scatter")]
    numeric.sort(key=lambda c: -c["mismatch"])
    shown = numeric[:4]
    if shown:
        fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.2), squeeze=False)
        for ax, c in zip(axes[0], shown, strict=False):
            pts = [p for p in c["scatter"] if all(math.isfinite(v) for v in p[:2])]
            good = [p for p in pts if not p[2]]
            bad = [p for p in pts if p[2]]
            ax.scatter([p[0] for p in good], [p[1] for p in good], s=8, color="#7f8c8d", label="agree")
            ax.scatter([p[0] for p in bad], [p[1] for p in bad], s=12, color="#c0392b", label="mismatch")
            if pts:
                lo = min(min(p[0], p[1]) for p in pts)
                hi = max(max(p[0], p[1]) for p in pts)
                ax.plot([lo, hi], [lo, hi], lw=0.8, color="#2980b9")
            ax.set_title(c["name"], fontsize=8)
            ax.set_xlabel("offline")
            ax.set_ylabel("online")
        axes[0][0].legend(fontsize=7)
        out["scatter"] = _png(fig)

    causes = summary.get("causes") or {}
    fig, ax = plt.subplots(figsize=(6, 2.6))
    names = list(causes) or ["none"]
    colors = ["#c0392b" if n == "unexplained" else "#2980b9" for n in names]
    ax.bar(names, [causes.get(n, 0) for n in names], color=colors)
    ax.set_ylabel("inconsistent cells")
    ax.set_title("Likely causes")
    out["causes"] = _png(fig)
    return out


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(summary: dict[str, Any]) -> str:
    plots = _plots(summary)
    status = "FAILED" if summary.get("exceeded") else "OK"
    color = "#c0392b" if summary.get("exceeded") else "#27ae60"
    unexplained = summary.get("unexplained", 0)
    cols = sorted(summary["columns"], key=lambda c: (-c["inconsistent"], c["name"]))
    feature_rows = [
        [
            c["name"],
            c["op"] or c["kind"],
            c["total"],
            c["both_null"],
            c["online_only_null"],
            c["offline_only_null"],
            c["mismatch"],
            f"{100 * c['mismatch_rate']:.2f} %",
            f"{c['smape_mean']:.2e}" if "smape_mean" in c else "",
            ", ".join(f"{k}={v}" for k, v in sorted(c["causes"].items())),
        ]
        for c in cols
        if c["inconsistent"]
    ][:200]
    examples = [
        [
            e["log_id"][:12],
            e["column"],
            json.dumps(e["online"])[:80],
            json.dumps(e["offline"])[:80],
            e["cause"],
        ]
        for e in summary.get("examples", [])
    ]
    imgs = "".join(f'<figure><img alt="{k}" src="{v}"/></figure>' for k, v in plots.items())
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in summary.get("reasons", []))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"/>
<title>tessera consistency: {html.escape(summary["join"])} {html.escape(summary["date"])}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
.status {{ color: white; background: {color}; padding: 4px 12px; border-radius: 4px; }}
table {{ border-collapse: collapse; font-size: 12px; margin: 12px 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; }}
figure {{ display: inline-block; margin: 8px; vertical-align: top; }}
img {{ max-width: 100%; }}
.kpi {{ display: inline-block; margin-right: 28px; font-size: 14px; }}
.kpi b {{ font-size: 22px; display: block; }}
</style></head><body>
<h1>Online/offline consistency: {html.escape(summary["join"])} on {html.escape(summary["date"])}
 <span class="status">{status}</span></h1>
<p>plan {html.escape(str(summary.get("plan_hash")))}; generated {
        html.escape(str(summary.get("generated_at")))
    }</p>
<div>
<span class="kpi"><b>{summary["rows"]:,}</b>logged rows</span>
<span class="kpi"><b>{summary.get("compared", 0):,}</b>cells compared</span>
<span class="kpi"><b>{summary.get("inconsistent", 0):,}</b>inconsistent</span>
<span class="kpi"><b>{100 * summary.get("mismatch_rate", 0.0):.3f} %</b>inconsistency rate</span>
<span class="kpi"><b id="unexplained">{unexplained:,}</b>unexplained</span>
</div>
<ul>{reasons}</ul>
<h2>Plots</h2>
{imgs}
<h2>Features with inconsistencies</h2>
{
        _table(
            feature_rows,
            [
                "feature",
                "op",
                "rows",
                "both null",
                "online-only null",
                "offline-only null",
                "mismatch",
                "rate",
                "SMAPE",
                "causes",
            ],
        )
        if feature_rows
        else "<p>none: every feature agrees.</p>"
    }
<h2>Examples</h2>
{_table(examples, ["log id", "column", "online", "offline", "cause"]) if examples else "<p>none</p>"}
</body></html>
"""


def write_report(summary: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``summary.json`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out / "report.html", out / "summary.json"
    html_path.write_text(render_html(summary))
    json_path.write_text(json.dumps(summary, indent=1, default=str, allow_nan=True))
    return html_path, json_path
