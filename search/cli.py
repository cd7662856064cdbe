"""Command-line interface: parse, build the config, run, print."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from core.errors import UsageError

if TYPE_CHECKING:
    from search.devices import DevicesOutcome
    from search.runner import RunOutcome


class _OneLineParser(argparse.ArgumentParser):
    """Reports argument errors as one line on stderr with exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message}; see --help\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The ``search.py`` argument parser; every flag defaults to None so a --config file can fill it."""
    parser = _OneLineParser(
        prog="search.py",
        description="Search per-layer pruning and quantization for Pareto-optimal compressed models under a budget.",
    )
    parser.add_argument("--budget-mb", help="size budget of the packed model: 5, 5MB, 512KB, 5MiB (bare = MB)")
    parser.add_argument("--target-latency", help="latency target on the device: 20ms, 0.02s, 500us (bare = ms)")
    parser.add_argument("--task", help="built-in task (resnet, mobilenet, mobilenet96, lenet5, lenet300, charlstm, "
                        "chartransformer; mimic students and their controls lenet300-mimic, lenet300-student, "
                        "lenet5-mimic, lenet5-student, resnet-mimic, resnet-student; hypernetworks lenet5-hyper, "
                        "resnet-hyper), or a task file FILE.py:factory returning envs.tasks.TaskDefinition")
    parser.add_argument("--model", help="your model: FILE.py:factory or package.module:factory")
    parser.add_argument("--weights", help="state_dict file for --model (loaded with weights_only=True)")
    parser.add_argument("--data", help="your data: FILE.py:factory returning (train, val, test) datasets")
    parser.add_argument("--metric", help="metric to score by: accuracy, bpc or mse (default: the task's)")
    parser.add_argument("--compute", help="where training, fine-tunes and metrics run: cpu (default), cuda, "
                        "cuda:N or mps; latency stays on --device")
    parser.add_argument("--searcher", help="random, tpe (= optuna), nsga2, rl, recipe or ray (default tpe)")
    parser.add_argument("--recipe", help="run a fixed policy from configs/recipes/ (e.g. deep-compression)")
    parser.add_argument("--learned", metavar="METHOD", help="learned sparsity before export: variational_dropout, "
                        "group_lasso, l0_gates, soft_sharing, bayesian, early_bird, lassonet or ofa (trained once "
                        "from the model; sets export.learned)")
    parser.add_argument("--ofa", action="store_true", help="once-for-all search: train one elastic supernet from "
                        "the model (cached), then score its sub-networks with no fine-tune")
    parser.add_argument("--trials", type=int, help="candidates to evaluate (default 40)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--device", help="device profile in configs/devices/ (default cpu-b32)")
    parser.add_argument("--devices", metavar="A,B", help="tune one Pareto set per device profile (a sub-folder each)")
    parser.add_argument("--workers", type=int, help="trials evaluated at once (--searcher ray; default 1)")
    parser.add_argument("--ray-address", metavar="HOST:PORT",
                        help="join this Ray cluster (--searcher ray); default: a local cluster on loopback")
    parser.add_argument("--out", type=Path, help="new run folder (default results/<time>-<task>-<searcher>)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")
    parser.add_argument("--config", type=Path, metavar="FILE.yaml", help="settings file; flags override it")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _settings(args: argparse.Namespace) -> dict[str, object]:
    from search.config import once_for_all, read_config_file

    values: dict[str, object] = read_config_file(args.config) if args.config else {}
    for name in ("budget_mb", "target_latency", "task", "model", "weights", "data", "metric", "compute", "searcher",
                 "trials", "seed", "device", "workers", "ray_address"):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    if args.devices is not None:
        if args.device is not None:
            raise UsageError("give either --device or --devices, not both")
        values["devices"] = [name.strip() for name in args.devices.split(",")]
    if args.learned is not None:
        export = values.get("export") or {}
        if not isinstance(export, dict):
            raise UsageError("config section 'export' must be a mapping")
        values["export"] = {**export, "learned": args.learned}
    if args.ofa:
        values = once_for_all(values)
    if args.recipe is not None:
        values.update(searcher="recipe", searcher_options={"name": args.recipe})
        values.setdefault("trials", 1)
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or an argument error already reported on one line
        return int(exc.code or 0)
    try:
        from search.api import run_search

        if args.resume is not None:
            allowed = ("resume", "trials", "quiet", "ray_address")
            given = [k for k, v in vars(args).items() if v not in (None, False) and k not in allowed]
            if given:
                raise UsageError(f"--resume uses the run's own config.yaml; drop --{given[0].replace('_', '-')}")
            outcome = run_search(resume=args.resume, progress=not args.quiet, trials=args.trials,
                                 ray_address=args.ray_address)
        else:
            outcome = run_search(out=args.out, progress=not args.quiet, **_settings(args))
    except UsageError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; continue with --resume RUN_DIR\n")
        return 130
    _print_outcome(outcome)
    return 0


def _print_outcome(outcome: RunOutcome | DevicesOutcome) -> None:
    from search.devices import DevicesOutcome, summary_table
    from search.report import pareto_table

    if isinstance(outcome, DevicesOutcome):
        print(f"\nPer-device summary ({len(outcome.outcomes)} devices):\n")
        print(summary_table(outcome.outcomes))
        print(f"\nresults: {outcome.run_dir} (summary.md, one run folder per device)")
        return
    print(f"\nPareto front ({len(outcome.models)} models, {len(outcome.trials)} trials):\n")
    print(pareto_table(outcome.models) if outcome.models else "no candidate met the budget")
    print(f"\nbaseline: {outcome.baseline.metric_text('test')}, "
          f"{outcome.baseline.size_bytes} B, {outcome.baseline.latency_ms:.2f} ms")
    print(f"results: {outcome.run_dir} (report.md, pareto.csv, trials.csv, pareto.png, models/)")
