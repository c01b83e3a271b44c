"""`python -m analysis report` on a synthetic disentangle sweep whose every final value is known.

2 models (FactorVAE, AD-FactorVAE) × γ ∈ {10, 20, 30} × seeds {1, 2} finished runs, plus a quick-preset run
and a failed run that must stay out of the numbers. Values are dyadic fractions, so means and sds computed
by hand (``statistics``) and by the report agree to the last bit.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

import matplotlib.image
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from analysis.cli import main
from analysis.synthetic import disentangle_trial, log_trial

SWEEP = "synthetic-exp1"
GAMMAS = (10, 20, 30)
SEEDS = (1, 2)
MODELS = ("factorvae", "ad_factorvae")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def finals(model: str, gamma: int, seed: int) -> dict[str, float]:
    g, ad, s2 = gamma // 10, model == "ad_factorvae", seed == 2
    values = {
        "disentanglement": 0.5 + 0.0625 * g + 0.25 * ad + 0.125 * s2,
        "disentanglement_seed": 0.25 + 0.125 * g + 0.125 * ad - 0.0625 * s2,
        "eval_recon_loss": 40.0 + 2.0 * g + 1.5 * s2 - 1.0 * ad,
        "recon_loss": 40.5 + 2.0 * g + 1.5 * s2 - 1.0 * ad,
        "tc": -0.25 + 0.125 * g * seed,
        "kld": 20.0 + g,
    }
    if ad:
        values["ad_loss"] = 0.5 - 0.03125 * g - 0.015625 * seed
    return values


def hand(model: str, gamma: int, metric: str) -> tuple[float, float]:
    values = [finals(model, gamma, seed)[metric] for seed in SEEDS]
    return statistics.mean(values), statistics.stdev(values)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis_disentangle")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment(SWEEP, artifact_location=str(root / "artifacts"))
    for model in MODELS:
        for gamma in GAMMAS:
            for seed in SEEDS:
                run = disentangle_trial(model, seed, finals(model, gamma, seed), gamma=gamma,
                                        lambda_ad=1.0 if model == "ad_factorvae" else 0.0)
                log_trial(client, SWEEP, run, study="exp1")
    quick = disentangle_trial("factorvae", 1, {**finals("factorvae", 40, 1), "disentanglement": 0.0078125},
                              gamma=40, iterations=20, report_every=5, eval_every=20)
    log_trial(client, SWEEP, quick, preset="quick", study="exp1-quick")
    failed = disentangle_trial("factorvae", 3, finals("factorvae", 10, 1), gamma=10)
    failed.status = "FAILED"
    log_trial(client, SWEEP, failed, study="exp1")
    return {"uri": uri, "root": root}


@pytest.fixture(scope="module")
def report(store):
    out = store["root"] / "report"
    assert main(["report", "--tracking-uri", store["uri"], "--sweep", SWEEP, "--out", str(out)]) == 0
    return out


def test_config_table_numbers_are_exact_and_state_n(report):
    table = pd.read_csv(report / "tables" / "disentangle_configs.csv")
    assert len(table) == len(MODELS) * len(GAMMAS)  # the quick and the failed run are not in it
    for model in MODELS:
        for gamma in GAMMAS:
            row = table[(table["model"] == model) & (table["gamma"] == gamma)]
            assert len(row) == 1
            row = row.iloc[0]
            assert row["n"] == 2 and row["seeds"] == "1, 2"
            for metric in ("disentanglement", "disentanglement_seed", "eval_recon_loss", "recon_loss", "tc"):
                mean, sd = hand(model, gamma, metric)
                assert row[f"{metric}_mean"] == mean, (model, gamma, metric)
                assert row[f"{metric}_sd"] == sd, (model, gamma, metric)
                assert row[f"{metric}_n"] == 2
    best = table[table["best"] == "best overall"].iloc[0]
    assert (best["model"], best["gamma"]) == ("ad_factorvae", 30)
    markdown = (report / "tables" / "disentangle_configs.md").read_text()
    mean, sd = hand("factorvae", 10, "disentanglement")
    assert f"{mean:.3f} ± {sd:.3f} (n=2)" in markdown


def test_figures_are_valid_pngs(report):
    figures = sorted((report / "figures").rglob("*.png"))
    names = {p.name for p in figures}
    assert {"tradeoff_disentanglement.png", "tradeoff_disentanglement_seed.png", "curves.png",
            "parallel_disentangle.png", "pareto_disentangle.png"} <= names
    assert any(n.startswith("attention_") for n in names)  # the best configurations' logged figures
    for path in figures:
        data = path.read_bytes()
        assert len(data) > 100 and data.startswith(PNG_SIGNATURE), path
        with Image.open(path) as image:
            image.verify()
        assert matplotlib.image.imread(path).size > 0


def test_report_documents_mention_what_was_run(report):
    md = (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    claims = (report / "claims.md").read_text()
    for text in (md, html, claims):
        assert "12 finished trial runs" in text
    assert "1 quick-preset run(s) left out" in md and "1 unfinished trial run(s) left out (1 FAILED)" in md
    assert "6 configurations; seeds 1, 2" in md and "preset full" in md
    assert "data:image/png;base64," in html and "<table" in html
    assert "![" in md and "figures/curves.png" in md
    # claims: the disentangle ones judged, the anomaly ones not run
    assert "(iv)" in claims and "Verdict: **supported** — rule: AD-FactorVAE beats" in claims
    assert claims.count("Verdict: **not run**") == 3
    assert "no_grad" in claims


def test_report_run_holds_every_output(store, report):
    client = MlflowClient(store["uri"])
    experiment = client.get_experiment_by_name(SWEEP)
    runs = client.search_runs([experiment.experiment_id], "tags.run_kind = 'report'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["sweeps"] == SWEEP
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"report.md", "report.html", "claims.md", "figures", "tables"} <= logged
    tables = {a.path for a in client.list_artifacts(runs[0].info.run_id, "tables")}
    assert "tables/disentangle_configs.csv" in tables


def test_module_cli_as_a_subprocess(store, tmp_path):
    # torch and ray that cannot be imported: the whole report must run without either
    for name in ("torch", "ray"):
        (tmp_path / "poison" / name).mkdir(parents=True)
        (tmp_path / "poison" / name / "__init__.py").write_text(f"raise ImportError('analysis imported {name}')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "poison"), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", "--tracking-uri", store["uri"], "--sweep",
                           SWEEP, "--out", str(out), "--format", "pdf", "--no-log"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "report of 12 trial runs" in proc.stdout
    assert (out / "figures" / "curves.pdf").read_bytes().startswith(b"%PDF")
    assert (out / "report.md").is_file() and (out / "report.html").is_file() and (out / "claims.md").is_file()
