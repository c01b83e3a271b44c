"""What ``python -m study.run`` needs of a study, declared once: each study module exports one ``DEFINITION``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from study.launch import StudyHooks
from study.plan import SweepPlan


@dataclass(frozen=True)
class StudyDefinition:
    """A study as the command line sees it.

    ``name`` is the subcommand (and the plan's ``kind``); ``add_parser(subparsers)`` adds it with its own
    flags; ``build_plan(args)`` turns parsed options (defaults applied) into a validated plan without Ray;
    ``dry_run(plan)`` is the text ``--dry-run`` prints; ``resolve_data_source(plan)`` opens the data once on
    the driver and names it (the ``data_source`` tag); ``hooks`` is what the shared sweep machinery calls;
    ``sweep_name(args)`` is the sweep's name without ``--name`` (a fresh start and ``--resume`` alike), made of
    the ``naming_options`` (e.g. ``experiment``, ``quick``), which ``--resume`` therefore accepts.
    """

    name: str
    sweep_name: Callable[[argparse.Namespace], str]
    naming_options: tuple[str, ...]
    add_parser: Callable[[argparse._SubParsersAction], None]
    build_plan: Callable[[argparse.Namespace], SweepPlan]
    dry_run: Callable[[SweepPlan], str]
    resolve_data_source: Callable[[SweepPlan], str]
    hooks: StudyHooks
