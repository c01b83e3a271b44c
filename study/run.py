"""``python -m study.run <study> [options]``: run, dry-run or resume a hyperparameter sweep.

Everything that can be checked is checked before Ray starts; a user error prints one line and exits 2.
The exit code is 0 only if every trial finished.
"""

from __future__ import annotations

import argparse

from study import anomaly, disentangle, rbm
from study.definition import StudyDefinition
from study.launch import launch
from study.options import check_resume_options, exit_process, resolve_storage, run_command, with_defaults
from study.plan import SweepPlan, load_plan, ray_state_saved, sweep_exists
from vae_attention.errors import StudyError

STUDIES: dict[str, StudyDefinition] = {d.name: d for d in (disentangle.DEFINITION, anomaly.DEFINITION,
                                                            rbm.DEFINITION)}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (the full usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m study.run",
        description="Hyperparameter sweeps of the VAE-attention study on Ray Tune, one MLflow run per trial. "
                    "Browse runs with: mlflow ui --backend-store-uri sqlite:///mlflow.db",
    )
    subparsers = parser.add_subparsers(dest="study", required=True, metavar="STUDY")
    for study in STUDIES.values():
        study.add_parser(subparsers)
    return parser


def run(args: argparse.Namespace) -> int:
    study = STUDIES[args.handler]
    if args.resume:
        plan = resume_plan(study, args)
        # imported here (and below): study.tracking imports mlflow (seconds), which usage errors and dry runs
        # never need
        from study.tracking import discard_orphan_runs, sweep_tags

        if not ray_state_saved(plan.path):
            # stopped before Ray saved any state: no trial has progress to keep, so start the plan afresh
            print(f"sweep {plan.name!r} stopped before Ray saved its state: starting it from the beginning")
            discard_orphan_runs(plan)
            return launch(plan, study.hooks, resume=False, sweep_tags=sweep_tags(plan), debug=bool(args.debug))
        return launch(plan, study.hooks, resume=True, sweep_tags={}, debug=bool(args.debug))

    args = with_defaults(args)
    plan = study.build_plan(args)
    if args.dry_run:
        print(study.dry_run(plan))
        return 0
    from study.tracking import sweep_tags

    taken = sweep_exists(plan)
    if taken:
        raise StudyError(f"sweep {plan.name!r} already exists ({taken}); pass --resume to continue it or "
                         "--name to start another")
    plan.data_source = study.resolve_data_source(plan)
    return launch(plan, study.hooks, resume=False, sweep_tags=sweep_tags(plan), debug=bool(args.debug))


def resume_plan(study: StudyDefinition, args: argparse.Namespace) -> SweepPlan:
    """The saved plan of the sweep to resume: ``--name``, else the name a fresh start with the same naming
    options (``--experiment``, ``--quick``, …) would have used."""
    check_resume_options(args, study.naming_options)
    storage = resolve_storage(with_defaults(args).storage)
    name = args.name or study.sweep_name(args)
    try:
        plan = load_plan(storage, name)
    except StudyError as err:
        if args.name:
            raise
        raise StudyError(f"{err}; {name!r} is the name {study.name} gives these options, pass --name NAME to "
                         "resume another sweep") from None
    plan.address = args.address
    return plan


def main(argv: list[str] | None = None) -> int:
    return run_command(run, build_parser().parse_args(argv), "continue with --resume")


if __name__ == "__main__":
    exit_process(main())
