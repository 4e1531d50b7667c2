"""Writers for one benchmark run: JSON, a Markdown table with the ratios, and a PNG chart."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

Column = tuple[str, str, str]  # (key in the row, header, format spec)

NOT_INSTALLED = "not installed"
"""Prefix of an unavailability reason that means "absent here", not "installed but broken"."""

# Contenders that come with asyncjsoc itself (raw aiohttp is a dependency): never skippable.
ALWAYS_AVAILABLE = frozenset({"asyncjsoc", "asyncjsoc-cli", "asyncjsoc-plan", "raw-aiohttp"})

# Row statuses that mean the run did what it should (``_scenarios.derive``).
HEALTHY = frozenset({"ok", "FAILED (expected)"})


def _fmt(value: Any, spec: str) -> str:
    """Format one table cell; missing values print as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and spec:
        return format(value, spec)
    return str(value)


def problems(results: dict[str, Any]) -> list[str]:
    """Why the run is broken (empty: every run completed, or failed as expected).

    Broken means: a scenario crashed; a row FAILED that is not marked as failing by design
    (``FAILED (expected)``, with the error it was expected to fail with); or a contender was
    skipped although it is installed (its probe failed) or comes with asyncjsoc itself.
    Performance targets play no part here.
    """
    unavailable = results.get("meta", {}).get("unavailable", {})
    found: list[str] = []
    for sc in results.get("scenarios", []):
        name = sc.get("name", "?")
        if sc.get("error"):
            found.append(f"[{name}] scenario crashed: {sc['error']}")
        for row in sc.get("rows", []):
            status = row.get("status")
            if status in HEALTHY:
                continue
            contender = row.get("contender", "")
            if status == "skipped":
                why = unavailable.get(contender, "")
                if contender not in ALWAYS_AVAILABLE and why.startswith(NOT_INSTALLED):
                    continue
                found.append(f"[{name}] {row.get('label')}: skipped although installed: {why}")
                continue
            error = str(row.get("error") or "no error recorded").replace("\n", " ")[:300]
            found.append(f"[{name}] {row.get('label')}: {status}: {error}")
    return found


def markdown(results: dict[str, Any]) -> str:
    """The whole run as Markdown: a table per scenario, its notes and its PASS/FAIL checks."""
    meta = results["meta"]
    lines = [
        f"# asyncjsoc benchmarks — {meta['started']} ({'quick' if meta['quick'] else 'full'})",
        "",
        f"Machine: {meta['machine']}. Python {meta['python']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + ".",
        "",
        meta["method_note"],
        "",
    ]
    if meta["quick"]:
        lines += [
            "**Quick (smoke) run.** Every scenario at a tiny size: the numbers and the PASS/FAIL "
            "of the targets are indicative only, and are not the measurement (run without "
            "`--quick` for that). A quick run fails only when a run is broken (see Run health).",
            "",
        ]
    all_checks: list[tuple[str, dict[str, Any]]] = []
    for sc in results["scenarios"]:
        lines += [f"## {sc['title']}", ""]
        if sc.get("params"):
            lines += ["Parameters: " + ", ".join(f"{k}={v}" for k, v in sc["params"].items()), ""]
        if sc.get("error"):
            lines += [f"**Scenario error:** `{sc['error']}`", ""]
        columns: list[Column] = [tuple(c) for c in sc.get("columns", [])]
        rows = sc.get("rows", [])
        if rows and columns:
            lines.append("| " + " | ".join(h for _, h, _ in columns) + " |")
            lines.append("|" + "|".join("---" for _ in columns) + "|")
            for row in rows:
                cells = [_fmt(row.get(k), f).replace("|", "\\|") for k, _, f in columns]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        for note in sc.get("notes", []):
            lines.append(f"- {note}")
        if sc.get("notes"):
            lines.append("")
        for check in sc.get("checks", []):
            all_checks.append((sc["name"], check))
            lines.append(f"- **{'PASS' if check['pass'] else 'FAIL'}** {check['text']}")
        lines.append("")
    passed = sum(1 for _, c in all_checks if c["pass"])
    indicative = " (indicative at quick size)" if meta["quick"] else ""
    lines += [f"## Targets{indicative}: {passed}/{len(all_checks)} pass", ""]
    for name, check in all_checks:
        lines.append(f"- {'PASS' if check['pass'] else 'FAIL'} [{name}] {check['text']}")
    lines.append("")
    broken = problems(results)
    lines += ["## Run health", ""]
    if broken:
        lines += [f"- BROKEN {p}" for p in broken]
    else:
        lines.append("- every run completed (or failed as expected, by design)")
    lines.append("")
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    """Makespan per contender per scenario, plus throughput against connections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [s for s in results["scenarios"] if s.get("rows")]
    sweeps = [s for s in results["scenarios"] if s.get("sweep")]
    panels = len(scenarios) + len(sweeps)
    if panels == 0:
        return
    cols = 2
    nrows = math.ceil(panels / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(13, 3.6 * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    i = 0
    for sc in scenarios:
        ax = flat[i]
        i += 1
        rows = [r for r in sc["rows"]
                if r.get("wall_s") is not None and r.get("chart", True)]
        labels = [r["label"] for r in rows]
        values = [r["wall_s"] for r in rows]
        colours = ["tab:green" if r["label"].startswith("asyncjsoc") else
                   ("tab:grey" if not r.get("ok", True) else "tab:blue") for r in rows]
        ax.barh(labels, values, color=colours)
        ax.invert_yaxis()
        ax.set_xlabel("makespan (s)  [grey = failed]")
        ax.set_title(sc["title"], fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        if sc.get("ideal_s"):
            ax.axvline(sc["ideal_s"], color="tab:red", ls="--", lw=1, label="ideal")
            ax.legend(fontsize=7)
    for sc in sweeps:
        ax = flat[i]
        i += 1
        for series_label, points in sc["sweep"].items():
            pts = sorted(points)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=series_label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("connections")
        ax.set_ylabel("MB/s")
        ax.set_title(f"{sc['title']}: throughput vs connections", fontsize=9)
        # Headroom above the highest point for the legend, so it covers none.
        top = max((p[1] for points in sc["sweep"].values() for p in points), default=1.0)
        ax.set_ylim(0, top * 1.4)
        ax.legend(fontsize=7, loc="upper center", ncol=2)
    for ax in flat[i:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(results: dict[str, Any], out_dir: Path, stamp: str | None) -> list[Path]:
    """Write ``<stamp>.json/.md/.png`` and ``latest.*`` copies; returns the written paths.

    With ``stamp=None`` only ``latest.*`` is written (quick runs keep no history).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    text_json = json.dumps(results, indent=1, default=str)
    text_md = markdown(results)
    stems = [stamp, "latest"] if stamp else ["latest"]
    written: list[Path] = []
    for stem in stems:
        (out_dir / f"{stem}.json").write_text(text_json)
        (out_dir / f"{stem}.md").write_text(text_md)
        written += [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    try:
        chart(results, out_dir / f"{stems[0]}.png")
        written.append(out_dir / f"{stems[0]}.png")
        if stamp:
            (out_dir / "latest.png").write_bytes((out_dir / f"{stamp}.png").read_bytes())
            written.append(out_dir / "latest.png")
    except Exception as exc:  # a missing matplotlib must not lose the numbers
        print(f"chart not written: {exc!r}")
    return written
