"""``semconv <stage>|pipeline|refresh [--config FILE] [--on-change rebuild|error] [--verbose] [key.sub=value ...]``:
what every job runs. Stages come from the registry (:mod:`semconv.stages`). The console shows each
stage's progress bar and result; Ray's own logs go to ``<run_dir>/logs/`` (:mod:`semconv.console`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from semconv import console
from semconv.config import ConfigError, load_config
from semconv.lineage import StaleArtifactError
from semconv.pipeline import run_pipeline
from semconv.ray_env import init_ray
from semconv.stages import NAMES


def parse(argv: Sequence[str] | None, stage: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="semconv", description=__doc__)
    if stage is None:
        p.add_argument("stage", choices=[*NAMES, "pipeline", "refresh"])
    p.add_argument("--config", default=None, help="YAML config (default: built-in demo defaults)")
    p.add_argument("--stages", default=None, help="pipeline only: comma-separated subset")
    p.add_argument("--on-change", choices=["rebuild", "error"], default=None,
                   help="when the config changed what a complete stage depends on: rebuild it and "
                        "its downstream, or stop naming the key (default: config on_change, rebuild)")
    p.add_argument("--verbose", action="store_true",
                   help="print Ray's own logs as well (they always go to <run_dir>/logs/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = p.parse_intermixed_args(argv)  # overrides before and after --stages
    if stage is not None:
        args.stage = stage
    return args


def main(argv: Sequence[str] | None = None, stage: str | None = None) -> int:
    args = parse(argv, stage)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with console.session(cfg.run_dir, args.stage, args.verbose):
        init_ray(cfg.ray.address, cfg.ray.num_cpus)
        if args.stage == "refresh":  # not a pipeline stage: a new serving version of a finished run
            from semconv.refresh.stage import run_refresh

            version = run_refresh(cfg)["version"]
            print(f"Serve it: serve run --address local serve_app.app:app_builder run_dir={version}")
            return 0
        stages = [args.stage] if args.stage != "pipeline" else (args.stages.split(",") if args.stages else None)
        try:
            run_pipeline(cfg, stages, on_change=args.on_change)
        except StaleArtifactError as err:
            print(f"error: {err}", file=sys.stderr)
            return 3
        print_summary(cfg)
    return 0


def print_summary(cfg) -> None:
    """The end of a run: the metrics table, where the report is, how to serve the result."""
    from semconv.artifacts import RunDir

    run = RunDir(cfg.run_dir)
    if run.is_complete("report"):
        from semconv.evaluate.report import results_table

        metrics = json.loads((run.local("report") / "metrics.json").read_text())
        print(f"\nResults ({metrics['split']} split, {metrics['users']} users, all "
              f"{metrics['items']} items ranked):")
        print("\n".join(results_table(metrics["systems"], metrics["ks"])))
        print(f"\nReport: {run.path('report')}/report.md")
    if run.is_complete("precache"):
        print(f"Serve it: serve run --address local serve_app.app:app_builder run_dir={cfg.run_dir}")


if __name__ == "__main__":
    raise SystemExit(main())
