"""``report/``: ``metrics.json`` (every number), ``report.md`` (one page) and PNG plots.

The Markdown lays results out like the paper's Table 1 (rows = systems, columns = HR@K then
NDCG@K; NDCG@1 equals HR@1 and is left out), then where each system's lists hold the target's
code prefixes, level by level, and the codebook figures and the training curve when those
artifacts exist. Sections whose inputs are missing are left out; nothing is filled in.
Plots use matplotlib's object API on an Agg canvas (:mod:`semconv.plots`), so no global pyplot state
is touched.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from semconv.artifacts import RunDir
from semconv.codes import level_letter
from semconv.plots import curve, figure, plot_training

SYSTEM_ORDER = ("semconv", "cf", "sasrec", "popularity")
SYSTEM_LABELS = {"semconv": "Ours (semconv)", "cf": "CF (stage-1 LightGCN)", "sasrec": "SASRec",
                 "popularity": "Most popular", "scratch": "Ours without the LLM (random-init decoder)"}


def fmt(x: Any) -> str:
    """Four decimals for metrics, the way the table prints them (and tests read them back)."""
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.4f}"
    return str(x)


def metric_columns(ks: list[int]) -> list[str]:
    return [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks if k > 1]


def ordered_systems(systems: dict[str, Any]) -> list[str]:
    return [s for s in SYSTEM_ORDER if s in systems] + sorted(s for s in systems if s not in SYSTEM_ORDER)


def results_table(systems: dict[str, dict[str, float]], ks: list[int]) -> list[str]:
    """Markdown rows; the best value of each column is bold."""
    cols = metric_columns(ks)
    best = {c: max((m[c] for m in systems.values() if c in m), default=None) for c in cols}
    lines = ["| system | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for name in ordered_systems(systems):
        cells = []
        for c in cols:
            v = systems[name].get(c)
            cell = fmt(v) if v is not None else "-"
            cells.append(f"**{cell}**" if v is not None and v == best[c] and v > 0 else cell)
        lines.append(f"| {SYSTEM_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return lines


def relative_line(systems: dict[str, dict[str, float]], ks: list[int]) -> list[str]:
    """Ours divided by each baseline at the largest K (the paper's headline comparison)."""
    ours = systems.get("semconv")
    k = max(ks)
    hr, nd = f"HR@{k}", f"NDCG@{k}"
    if not ours or len(systems) < 2:
        return []
    parts = []
    for name in ordered_systems(systems):
        base = systems[name]
        if name == "semconv" or not base.get(hr) or not base.get(nd):
            continue
        parts.append(f"{SYSTEM_LABELS.get(name, name)} {ours[hr] / base[hr]:.2f}x / {ours[nd] / base[nd]:.2f}x")
    return [f"- Ours relative to each baseline ({hr} / {nd}): " + ", ".join(parts) + "."] if parts else []


def prefix_section(hits: dict[str, Any]) -> list[str]:
    """The code-prefix hit rates (:func:`semconv.metrics.prefix_hit_rates`), a row per system."""
    k, systems = hits["k"], hits["systems"]
    levels = len(next(iter(systems.values())))
    lines = [f"## Code prefixes in the top {k}", "",
             f"The share of test users whose target's first l codes are those of at least one item in the "
             f"system's top {k}. Ours decodes an item code by code, so a row falling from level to level shows "
             f"where its lists lose the target; level {levels} is HR@{k} where every item has its own codes.", "",
             "| system | " + " | ".join(f"level {l + 1}" for l in range(levels)) + " |",
             "| --- |" + " ---: |" * levels]
    lines += [f"| {SYSTEM_LABELS.get(name, name)} | " + " | ".join(fmt(x) for x in systems[name]) + " |"
              for name in ordered_systems(systems)]
    return lines


def training_summary(train: dict[str, Any]) -> dict[str, Any]:
    """Final and best losses from ``model/train_metrics.json`` (kept in ``metrics.json``)."""
    out: dict[str, Any] = {}
    for key in ("train_loss", "eval_loss"):
        values = [v for v in curve(train, key)[1] if v is not None]
        if values:
            out[f"{key}_first"], out[f"{key}_last"], out[f"{key}_min"] = values[0], values[-1], min(values)
    for key in ("steps", "epochs", "train_time_s", "samples_per_s", "tokens_per_s", "workers"):
        if isinstance(train.get(key), (int, float)):
            out[key] = train[key]
    return out


def plot_metric_bars(systems: dict[str, dict[str, float]], ks: list[int], path: Path) -> None:
    cols = metric_columns(ks)
    names = ordered_systems(systems)
    fig = figure(7.5, 3.8)
    ax = fig.add_subplot()
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(cols))]
        ax.bar(xs, [systems[name].get(c, 0.0) for c in cols], width, label=SYSTEM_LABELS.get(name, name))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols)
    ax.set_ylabel("test metric")
    ax.set_title("Test metrics per system (all items ranked)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_codebook(codebook: dict[str, Any], path: Path) -> bool:
    util = codebook.get("utilisation")
    if not isinstance(util, list) or not util:
        return False
    fig = figure(5.0, 3.2)
    ax = fig.add_subplot()
    ax.bar([level_letter(i) for i in range(len(util))], util)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("level")
    ax.set_ylabel("share of codes used")
    ax.set_title("Codebook utilisation per level")
    fig.tight_layout()
    fig.savefig(path)
    return True


def codebook_section(codebook: dict[str, Any]) -> list[str]:
    lines = ["## Codebook (Alignment Tokenization)", ""]
    per_level = {k: v for k, v in codebook.items() if isinstance(v, list) and v and
                 all(isinstance(x, (int, float)) for x in v)}
    scalars = {k: v for k, v in codebook.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if scalars:
        lines += ["| figure | value |", "| --- | ---: |"]
        lines += [f"| {k} | {fmt(v)} |" for k, v in sorted(scalars.items())]
        lines.append("")
    if per_level:
        n = max(len(v) for v in per_level.values())
        lines += ["| per level | " + " | ".join(level_letter(i) for i in range(n)) + " |",
                  "| --- |" + " ---: |" * n]
        for k, v in sorted(per_level.items()):
            lines.append(f"| {k} | " + " | ".join(fmt(x) for x in v) + " |")
        lines.append("")
    return lines


def render_markdown(metrics: dict[str, Any], images: dict[str, str]) -> str:
    ks = metrics["ks"]
    lines = ["# semconv evaluation report", "",
             f"Config hash `{metrics['config_hash']}`. Split **{metrics['split']}**: "
             f"{metrics['users']} users, {metrics['items']} items; leave-last-out, every system ranks "
             f"all items{' (history excluded)' if metrics['protocol']['exclude_history'] else ''}.", "",
             f"## Results ({metrics['split']})", ""]
    lines += results_table(metrics["systems"], ks) + [""]
    lines += relative_line(metrics["systems"], ks)
    for name, n in metrics.get("missing_users", {}).items():
        if n:
            lines.append(f"- {SYSTEM_LABELS.get(name, name)}: {n} test users had no cached "
                         f"ranking and count as misses.")
    for name, why in metrics.get("skipped", {}).items():
        lines.append(f"- {SYSTEM_LABELS.get(name, name)} not evaluated: {why}")
    if "metrics" in images:
        lines += ["", f"![metrics per system]({images['metrics']})"]
    lines = [ln for i, ln in enumerate(lines) if ln or i == 0 or lines[i - 1]]  # no double blanks
    if metrics.get("code_prefix_hits", {}).get("systems"):
        lines += [""] + prefix_section(metrics["code_prefix_hits"])
    if "valid" in metrics:
        lines += ["", f"## Validation split ({metrics['valid']['users']} users)", ""]
        lines += results_table(metrics["valid"]["systems"], ks)
    if "codebook" in metrics:
        lines += [""] + codebook_section(metrics["codebook"])
        if "codebook" in images:
            lines.append(f"![codebook utilisation]({images['codebook']})")
    if "training" in metrics:
        lines += ["", "## Fine-tuning", "", "| figure | value |", "| --- | ---: |"]
        lines += [f"| {k} | {fmt(v)} |" for k, v in metrics["training"].items()]
        if "training" in images:
            lines += ["", f"![training curve]({images['training']})"]
    sas = metrics.get("baselines", {}).get("sasrec")
    if sas:
        lines += ["", "## SASRec baseline", "",
                  f"{sas['epochs_run']} epochs ({sas['stopped']}), best valid NDCG@10 "
                  f"{fmt(sas['best_valid']['NDCG@10'])} at epoch {sas['best_epoch']}, "
                  f"{sas['train_seconds']:.1f} s training."]
    scratch = metrics.get("baselines", {}).get("scratch")
    if scratch:
        lines += ["", "## Without the LLM (scratch baseline)", "",
                  f"The same codes, sft/ rows, loop and constrained decoding as ours, with a random-init "
                  f"decoder ({scratch['layers']} layers, hidden {scratch['hidden']}, "
                  f"{scratch['parameters']:,} parameters): {scratch['steps']} steps in "
                  f"{scratch['train_seconds']:.0f} s of training, final train loss "
                  f"{fmt(scratch['final_train_loss'])}."]
    return "\n".join(lines) + "\n"


def write_report(run: RunDir, payload: dict[str, Any], upstream: dict[str, Any], plots: bool = True) -> str:
    """Publish ``report/`` atomically; returns its path. ``upstream`` holds optional inputs."""
    metrics = dict(payload)
    if "codebook" in upstream:
        metrics["codebook"] = upstream["codebook"]
    if "training" in upstream:
        metrics["training"] = training_summary(upstream["training"])
    manifest = {"config_hash": payload["config_hash"], "split": payload["split"],
                "users": payload["users"], "systems": sorted(payload["systems"])}
    with run.writing("report", manifest) as tmp:
        images: dict[str, str] = {}
        if plots:
            if metrics["systems"]:
                plot_metric_bars(metrics["systems"], metrics["ks"], tmp / "metrics.png")
                images["metrics"] = "metrics.png"
            if "training" in upstream and plot_training(upstream["training"], tmp / "training_curve.png"):
                images["training"] = "training_curve.png"
            if "codebook" in upstream and plot_codebook(upstream["codebook"], tmp / "codebook_utilisation.png"):
                images["codebook"] = "codebook_utilisation.png"
        metrics["images"] = images
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str))
        (tmp / "report.md").write_text(render_markdown(metrics, images))
    return run.path("report")
