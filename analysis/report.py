"""Build a report: read the sweeps, select the runs, lay out every section, write the files, log the run.

The report run goes into the experiment of the first sweep named, tagged ``run_kind=report`` (with ``sweeps``
listing every sweep it covers). Beside the trials it summarises, it is found where a reader of that sweep
looks, and the study's own queries (``run_kind = 'trial'``) never see it. Each new report is a new run, so
reports of a sweep at different times stay side by side.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from analysis import (
    AnalysisError,
    ablations,
    anomaly,
    claims,
    disentangle,
    optuna_plots,
    overview,
    plotting,
    rbm,
    reference,
)
from analysis.document import Section, TableItem, write_document
from analysis.selection import Selection, select, short
from analysis.store import Histories, load_sweep, open_store

FORMATS = ("png", "pdf")
OUTPUTS = ("figures", "tables", "report.md", "report.html", "claims.md")  # everything a report writes into DIR
MARKER = ".analysis_report"  # says a directory holds a report whose outputs may be replaced


@dataclass
class Result:
    out: Path
    run_id: str | None
    experiment: str
    runs: int


def _prepare(out: Path) -> None:
    """Make ``out`` ready: new or empty, or holding an earlier report, whose outputs (ours only) are removed so
    no stale figure is logged with the new one. Anything else in a non-empty directory is left alone: refused."""
    if out.exists() and not out.is_dir():
        raise AnalysisError(f"--out {out} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER
    if any(out.iterdir()) and not marker.exists():
        raise AnalysisError(f"--out {out} is not empty and holds no earlier report; choose a new or empty directory")
    for name in OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    marker.write_text("written by python -m analysis report; its outputs here are replaced by the next report\n")


def preamble(uri: str, names: list[str], selection: Selection) -> str:
    runs = selection.runs
    counts = "; ".join(f"{group}: {len(part)}" for group, part in runs.groupby("group"))
    presets = ", ".join(sorted(runs["preset"].fillna("unknown").unique()))
    quick = ("quick-preset runs included (--include-quick)" if selection.include_quick
             else "quick-preset runs only (the sweeps hold no others)" if selection.quick_only
             else "quick-preset runs excluded (pass --include-quick to include them)")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"Tracking store {uri}; sweeps {', '.join(names)}; generated {stamp}.",
             "",
             f"Runs used: {len(runs)} finished trial runs ({counts}); presets used: {presets}; {quick}. "
             f"Data sources: {', '.join(short(s) for s in sorted(runs['data_source'].fillna('unknown').unique()))}"
             + (" (mixed on request: --allow-mixed-data)" if selection.allow_mixed_data else "") + ". "
             f"Devices: {', '.join(sorted(runs['device'].fillna('unknown').unique()))}; code commits: "
             f"{', '.join(sorted(runs['git_commit'].fillna('unknown').str[:10].unique()))}."]
    if selection.notes:
        lines += ["", *(f"- {note}" for note in selection.notes)]
    return "\n".join(lines)


def figure_sections(runs, histories, client, out: Path, fmt: str) -> list[Section]:
    sections = []
    dis = runs[runs["group"] == "disentangle"]
    if not dis.empty:
        sections.append(disentangle.section(dis, histories, client, out, fmt)[0])
    # the seed's order: MNIST, UCSD, MVTec
    order = {"anomaly:mnist": 0, "anomaly:ucsd": 1, "anomaly:mvtec": 2}
    groups = [g for g in runs["group"].unique() if g.startswith("anomaly:")]
    for group in sorted(groups, key=lambda g: (order.get(g, len(order)), g)):
        sections.append(anomaly.section(runs[runs["group"] == group], histories, client, out, fmt))
    if (runs["group"] == "rbm").any():
        sections.append(rbm.section(runs[runs["group"] == "rbm"], histories, client, out, fmt))
    every = overview.section(runs, out, fmt)
    if every is not None:
        sections.append(every)
    return sections


def claims_section(found: list[claims.Claim]) -> Section:
    table = claims.summary_table(found)
    return Section("Claims (i)–(v)", "Details, numbers and rules are in claims.md.",
                   [TableItem("claims", table, table, "Verdicts", claims.NO_GRAD_NOTE)])


def differences_section() -> Section:
    """The "what differs" table (``analysis/what_differs.csv``): how the paper, the authors' code and the report's
    code differ, the config fields or metrics that carry each difference, and which protocol reproduces which."""
    table = reference.differences()
    display = table.rename(columns={"paper": "paper (Liu et al. 2020)", "authors": "authors' code (expVAE)",
                                    "seed": "report's code (FACT-2021)", "settings": "our setting / metric",
                                    "reproduced_by": "reproduced by"})
    return Section("Protocols: what differs between the sources",
                   "Run a sweep with --protocol paper|authors|seed to reproduce one source; a run whose protocol "
                   "values were overridden is labelled '<name>+custom' and never set beside a published number.",
                   [TableItem("what_differs", display, table, "What differs, and which protocol reproduces it",
                              "Sources: the paper's sections, liuem607/expVAE code/, Carmoondedraak/FACT-2021.")])


def build(tracking_uri: str, sweep_names: list[str], out: Path, fmt: str = "png", include_quick: bool = False,
          allow_mixed_data: bool = False, log_run: bool = True) -> Result:
    client = open_store(tracking_uri)
    names = list(dict.fromkeys(sweep_names))
    sweeps = [load_sweep(client, name) for name in names]
    selection = select(sweeps, include_quick=include_quick, allow_mixed_data=allow_mixed_data)
    runs = selection.runs
    out = Path(out)
    _prepare(out)
    histories = Histories(client)
    with plotting.style():
        sections = figure_sections(runs, histories, client, out, fmt)
        searched = optuna_plots.section(client, sweeps, out, fmt)  # None unless a sweep searched with Optuna
    sections += [searched] if searched is not None else []
    ablation = ablations.section(client, runs, [sweep.experiment_id for sweep in sweeps])
    if ablation is not None:  # only when some selected trial was re-scored (python -m study.evaluate)
        sections.append(ablation)
    found = claims.evaluate(runs, histories)
    sections.append(claims_section(found))
    sections.append(differences_section())
    intro = preamble(tracking_uri, names, selection)
    write_document(out, f"Report: {', '.join(names)}", intro, sections)
    (out / "claims.md").write_text(claims.render(found, intro))
    run_id = log_report(client, sweeps[0].experiment_id, out, names, selection, fmt) if log_run else None
    return Result(out, run_id, names[0], len(runs))


def log_report(client, experiment_id: str, out: Path, names: list[str], selection: Selection, fmt: str) -> str:
    tags = {"run_kind": "report", "sweep": names[0], "sweeps": ",".join(names),
            "mlflow.runName": f"report-{time.strftime('%Y%m%d-%H%M%S')}"}
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    try:
        for key, value in (("sweeps", ",".join(names)), ("include_quick", selection.include_quick),
                           ("allow_mixed_data", selection.allow_mixed_data), ("format", fmt),
                           ("trial_runs", len(selection.runs))):
            client.log_param(run_id, key, str(value)[:6000])
        for name in OUTPUTS:
            path = out / name
            if path.is_dir():
                client.log_artifacts(run_id, str(path), name)
            elif path.is_file():
                client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def summary_lines(result: Result) -> list[str]:
    lines = [f"report of {result.runs} trial runs: {result.out / 'report.md'}, {result.out / 'report.html'}, "
             f"{result.out / 'claims.md'}"]
    if result.run_id:
        lines.append(f"logged as MLflow run {result.run_id} (run_kind=report) in experiment {result.experiment!r}")
    return lines
