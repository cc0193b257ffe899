"""The `ctkd-tune` command line: a routing table from subcommand to a few lines calling the public API.

    ctkd-tune distill --preset tiny --output runs/tiny     # one distillation run
    ctkd-tune teacher                                      # pre-train and cache the embedded teacher
    ctkd-tune search                                       # the main job (see `ctkd-tune search --help`)

Bad input ends with one line, `ctkd-tune: error: ...`, and exit code 2. Set CTKD_TUNE_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from ctkd_tune import __version__
from ctkd_tune.config import ConfigError, dump_yaml, load_config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (e.g. an exported best_config.yaml)")
    parser.add_argument("--recipe", help="a shipped recipe instead of --config (list them: ctkd-tune recipes)")
    parser.add_argument("--preset", help="named preset applied under the file: shakespeare (default data) or tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field, e.g. --set temperature.tau_max=4 (repeatable)")


def config_file(args: argparse.Namespace) -> str | Path | None:
    """--config, or the file of --recipe (not both)."""
    if getattr(args, "recipe", None) is None:
        return args.config
    if args.config:
        raise ConfigError("give --config or --recipe, not both")
    from ctkd_tune.inputs.recipes import recipe_file

    return recipe_file(args.recipe)


def cmd_distill(args: argparse.Namespace) -> int:
    """Run one CTKD distillation and write metrics.parquet, summary.json and the student to --output."""
    from ctkd_tune.run.folder import run_distill
    from ctkd_tune.run.summary import RunStatus

    output = Path(args.output)
    given = args.config or args.recipe or args.preset or args.overrides
    if args.resume and not given and (output / "config.yaml").is_file():
        cfg = load_config(output / "config.yaml")
    else:
        cfg = load_config(config_file(args), args.preset, args.overrides)
    summary = run_distill(cfg, output, resume=args.resume)
    print(f"{summary['stop_reason'] or summary['status']}: "
          f"val/ppl {_round(summary.get('student_val_ppl_start'), 2)} at step 0 → "
          f"{_round(summary['final_val_ppl'], 2)} (teacher {_round(summary.get('teacher_val_ppl'), 2)}), "
          f"τ {_round(summary['final_temperature'], 3)}, "
          f"checks {'passed' if summary['checks']['all_passed']['passed'] else 'FAILED'} → {output}")
    return 0 if summary["status"] == RunStatus.COMPLETED else 1


def _round(value, digits: int):
    return round(value, digits) if isinstance(value, float) else value


def cmd_teacher(args: argparse.Namespace) -> int:
    """Pre-train the embedded Shakespeare teacher (once; later calls reuse the cache)."""
    from ctkd_tune.inputs.embedded import build_teacher

    path = build_teacher(args.name, force=args.force)
    print(f"teacher ready: {path}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved configuration as YAML (validates it without loading any model)."""
    cfg = load_config(config_file(args), args.preset, args.overrides)
    print(dump_yaml(cfg, header="ctkd-tune distill --config THIS_FILE --output runs/NAME"), end="")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    """List the shipped recipes (real teacher/student pairs): name, hardware, what they distil."""
    from ctkd_tune.inputs.recipes import list_recipes

    for info in list_recipes():
        print(f"{info.name:24s} {info.hardware}\n{'':24s} {info.description}")
    print("\nrun one: ctkd-tune distill --recipe NAME --output runs/NAME   (show it: ctkd-tune config --recipe NAME)")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """Print continuations of --prompt from a trained student and its teacher, side by side."""
    from ctkd_tune.run.sample import sample_side_by_side

    print(sample_side_by_side(args.student, args.prompt, teacher=args.teacher, num=args.num,
                              max_new_tokens=args.max_new_tokens, seed=args.seed, chat=args.chat))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Search the CTKD knobs: Ray Tune trials of full distillations, Optuna TPE, ASHA; results in results/NAME/."""
    from ctkd_tune.search.cluster import client_auth_from_env

    if args.submit:  # the same command as a Ray Job on a running cluster; returns at once
        from ctkd_tune.search.submit import submit

        submit(args.argv, args.name, args.results_dir, args.address)
        return 0
    client_auth_from_env(args.address)  # before Ray is imported: a ray:// client must know to send its token
    from ctkd_tune.search.driver import SearchSettings, base_config, run_search  # imports Ray: only this command needs it

    given = args.config or args.recipe or args.preset or args.overrides  # none: the experiment's own config, or default
    if args.dry_run:
        return _dry_run(args, base_config(config_file(args), args.preset, args.overrides))
    if (args.resume or args.rebuild_tables) and given:
        raise ConfigError("--resume / --rebuild-tables use the search's own config: drop --config/--preset/--set")
    cfg = base_config(config_file(args), args.preset, args.overrides) if given else None
    settings = SearchSettings(name=args.name, space=args.space, num_samples=args.num_samples,
                              max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
                              gpus_per_trial=args.gpus_per_trial, address=args.address,
                              storage_path=args.storage_path, results_root=args.results_dir, seed=args.seed,
                              dashboard_host=args.dashboard_host, sampler=args.sampler, scheduler=args.scheduler)
    result = run_search(cfg, settings, resume=args.resume, rebuild_tables=args.rebuild_tables)
    return 130 if result.interrupted and not args.rebuild_tables else 0


def _dry_run(args: argparse.Namespace, cfg) -> int:
    from ctkd_tune.search.dryrun import default_concurrency, plan_text, teacher_missing, time_steps
    from ctkd_tune.search.settings import DEFAULT_NUM_SAMPLES

    missing = teacher_missing(cfg)
    print(plan_text(cfg, args.space, args.num_samples or DEFAULT_NUM_SAMPLES,
                    default_concurrency(args.cpus_per_trial, args.max_concurrent),
                    None if missing else time_steps(cfg), missing))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Re-run a search's best configs with several seeds next to the fallbacks; judge them and recommend one.

    Writes results/NAME/validation.parquet (one row per run) and validation.md (table and verdict). Exit code 0
    when an arm is recommended, 1 when none passes.
    """
    from ctkd_tune.search.cluster import client_auth_from_env

    client_auth_from_env(args.address)
    from ctkd_tune.validate.driver import run_validation  # imports Ray: only this command (and search) needs it

    result = run_validation(args.experiment, top_k=args.top_k, seeds=args.seeds, steps=args.steps,
                            rank_by=args.rank_by, ppl_target=args.ppl_target, target_vs=args.target_vs,
                            resume=args.resume, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                            address=args.address, resolve=args.resolve)
    return 0 if result.verdict.recommended else 1


def cmd_export(args: argparse.Namespace) -> int:
    """Write the recommended configuration with its provenance, runnable by `ctkd-tune distill --config`."""
    from ctkd_tune.validate.export import export

    export(args.experiment, args.format, args.output, args.with_student)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Plot a search and its validation: PNGs, report.md and a standalone report.html in results/NAME/."""
    from ctkd_tune.validate.report import build_report

    build_report(args.experiment)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show a search's trials as the live table does, from its files (study + tables); no Ray, any time."""
    from ctkd_tune.search.status import status_from_files

    print(status_from_files(args.experiment))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctkd-tune", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, configure) in COMMANDS.items():
        sub = commands.add_parser(name, help=func.__doc__.splitlines()[0], description=func.__doc__)
        configure(sub)
        sub.set_defaults(func=func)
    return parser


def _distill_args(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--output", required=True, help="run directory (metrics.parquet, summary.json, student/)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")


def _search_args(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--space", help="module:function, file.py:function or file.yaml (default: the plan's CTKD knobs)")
    p.add_argument("--num-samples", type=int, help="trials to run (default 8; again with the same --name: more)")
    p.add_argument("--name", default="ctkd-search", help="experiment: results/NAME/ and its Optuna study")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: what the resources allow)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (fractions allowed)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial (fractions allowed)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search --name")
    p.add_argument("--rebuild-tables", action="store_true",
                   help="rewrite trials.parquet and curves.parquet of --name from its study and trial folders")
    p.add_argument("--address",
                   help="existing Ray cluster: auto or ray://HOST:PORT (default: RAY_ADDRESS, else start one here)")
    p.add_argument("--storage-path", help="Ray's trial storage shared by all nodes: path, NFS or s3://")
    p.add_argument("--results-dir", default="results", help="where results/NAME/ goes")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    p.add_argument("--sampler", choices=["tpe", "random"], default="tpe", help="Optuna sampler (default tpe)")
    p.add_argument("--scheduler", choices=["asha", "none"], default="asha",
                   help="early stopping: asha (default) or none (every trial runs to the end unless it diverges)")
    p.add_argument("--submit", action="store_true",
                   help="run the search as a Ray Job on the cluster at --address (http://HOST:8265) and return")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, the space, the budget and an estimated wall time; start nothing")
    p.add_argument("--dashboard-host", default="127.0.0.1",
                   help="dashboard bind address; 0.0.0.0 exposes it (with token auth) to the network")


def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", required=True, help="results/NAME folder of `ctkd-tune search`")
    p.add_argument("--top-k", type=int, help="completed trials to re-run (default 3)")
    p.add_argument("--seeds", type=int, metavar="K",
                   help="seeds per arm, the same for every arm (default 3); with --resume: extend to K seeds")
    p.add_argument("--steps", type=int, help="steps per run (default: the search's full budget, train.steps)")
    p.add_argument("--rank-by", choices=["final", "best"], help="rank trials by final or best val/ppl (default final)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--ppl-target", type=float, help="pass if mean final val/ppl <= X (default checks.ppl_target)")
    target.add_argument("--target-vs", choices=["fixed"], help="pass if mean final val/ppl <= fallback A's (fixed T)")
    p.add_argument("--resume", action="store_true", help="run only the (arm, seed) runs missing from the validation")
    p.add_argument("--resolve", metavar="D", help="difference the verdict sizes the seeds needed for: a share of "
                   "fallback A's mean val/ppl (2%%) or a val/ppl value (5); default 2%%")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs per run (runs go in parallel on Ray)")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs per run (fractions allowed)")
    p.add_argument("--address", help="existing Ray cluster: auto or ray://HOST:PORT (default: RAY_ADDRESS, else a "
                   "local Ray); results/NAME must be on storage the workers share")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", required=True, help="results/NAME folder of `ctkd-tune search`")
    p.add_argument("--format", choices=["yaml", "json"], default="yaml", help="file format (default yaml)")
    p.add_argument("--output", help="file to write (default results/NAME/recommended.FORMAT)")
    p.add_argument("--with-student", metavar="DIR", help="also copy the validated student (Hugging Face dir) to DIR")


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", required=True, help="results/NAME folder of `ctkd-tune search`")


def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--student", required=True, help="a student folder (RUN/student, or one written by export)")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--teacher", help="teacher to compare with (default: model.teacher of the run's config.yaml)")
    p.add_argument("--num", type=int, default=2, help="continuations per model (default 2)")
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens per continuation (default 40)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the chat template")


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", required=True, help="results/NAME folder of `ctkd-tune search`")


def _teacher_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="shakespeare", choices=["shakespeare", "tiny"], help="embedded teacher")
    p.add_argument("--force", action="store_true", help="train again even if cached")


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]] = {
    "distill": (cmd_distill, _distill_args),
    "teacher": (cmd_teacher, _teacher_args),
    "config": (cmd_config, add_config_args),
    "recipes": (cmd_recipes, lambda p: None),
    "sample": (cmd_sample, _sample_args),
    "search": (cmd_search, _search_args),
    "validate": (cmd_validate, _validate_args),
    "export": (cmd_export, _export_args),
    "report": (cmd_report, _report_args),
    "status": (cmd_status, _status_args),
}
LIGHT_COMMANDS = ("config", "status")  # never import torch/transformers (nor, with --help/--version, does any)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `search --submit` sends the command line on
    if args.command not in LIGHT_COMMANDS:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # weight-loading bars drown the run's own progress
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        if os.environ.get("CTKD_TUNE_DEBUG"):
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"ctkd-tune: error: {message}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only folder: name the path; what was written before is intact
        if os.environ.get("CTKD_TUNE_DEBUG"):
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"ctkd-tune: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ctkd-tune: interrupted (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
