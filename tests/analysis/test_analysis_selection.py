"""Which runs a report may use, and the one-line errors when there is nothing (right) to use."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from analysis import AnalysisError
from analysis.cli import main
from analysis.selection import select
from analysis.store import load_sweep, open_store
from analysis.synthetic import disentangle_trial, log_trial

FINAL = {"disentanglement": 0.5, "disentanglement_seed": 0.25, "eval_recon_loss": 40.0, "recon_loss": 40.0,
         "tc": 0.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Sweeps: 'mixed' (full + quick runs), 'only-quick', 'running' (none finished), 'other-data' (npz:other)."""
    root = tmp_path_factory.mktemp("analysis_selection")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    for name in ("mixed", "only-quick", "running", "other-data"):
        client.create_experiment(name, artifact_location=str(root / "artifacts" / name))

    def trial(seed, **kwargs):
        return disentangle_trial("factorvae", seed, FINAL, gamma=10, figure=False, **kwargs)

    for seed in (1, 2):
        log_trial(client, "mixed", trial(seed))
        log_trial(client, "other-data", trial(seed), data_source="npz:other")
    log_trial(client, "mixed", trial(1, iterations=20, report_every=5, eval_every=20), preset="quick")
    log_trial(client, "only-quick", trial(1), preset="quick")
    running = trial(1)
    running.status = "RUNNING"
    log_trial(client, "running", running)
    return uri


def _error(capsys, args) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err  # one line
    return err


def test_quick_runs_are_left_out_unless_asked(store):
    client = open_store(store)
    sweep = load_sweep(client, "mixed")
    without = select([sweep])
    assert len(without.runs) == 2 and set(without.runs["preset"]) == {"full"}
    assert any("1 quick-preset run(s) left out" in note for note in without.notes)
    both = select([sweep], include_quick=True)
    assert len(both.runs) == 3 and set(both.runs["preset"]) == {"full", "quick"}
    # quick and full runs never share a configuration's mean
    assert both.runs.groupby(["config_key", "preset", "data_source"]).ngroups == 2


def test_a_sweep_of_only_quick_runs_is_reported_with_a_note(store, capsys, tmp_path):
    client = open_store(store)
    alone = select([load_sweep(client, "only-quick")])  # the user named it: its quick runs are used, said so
    assert len(alone.runs) == 1 and alone.quick_only and "Quick-preset runs only" in alone.notes[0]
    # beside a sweep with full runs, mixing quick and full still needs --include-quick
    err = _error(capsys, ["report", "--tracking-uri", store, "--sweep", "mixed", "--sweep", "only-quick",
                          "--out", str(tmp_path), "--no-log"])
    assert "only quick-preset runs" in err and "--include-quick" in err
    mixed = select([load_sweep(client, "mixed"), load_sweep(client, "only-quick")], include_quick=True)
    assert len(mixed.runs) == 4 and not mixed.quick_only


def test_mixed_data_sources_are_refused_in_one_line(store, capsys, tmp_path):
    err = _error(capsys, ["report", "--tracking-uri", store, "--sweep", "mixed", "--sweep", "other-data",
                          "--out", str(tmp_path)])
    assert "npz:other" in err and "npz:synthetic" in err and "--allow-mixed-data" in err
    client = open_store(store)
    allowed = select([load_sweep(client, "mixed"), load_sweep(client, "other-data")], allow_mixed_data=True)
    assert len(allowed.runs) == 4
    assert allowed.runs.groupby(["config_key", "preset", "data_source"]).ngroups == 2


def test_unknown_sweep_unfinished_sweep_and_missing_store(store, capsys, tmp_path):
    err = _error(capsys, ["report", "--tracking-uri", store, "--sweep", "nope", "--out", str(tmp_path)])
    assert "no sweep named 'nope'" in err and "mixed" in err  # names the sweeps that do exist
    err = _error(capsys, ["report", "--tracking-uri", store, "--sweep", "running", "--out", str(tmp_path)])
    assert "has no finished trial runs (1 RUNNING)" in err
    missing = tmp_path / "absent.db"
    err = _error(capsys, ["report", "--tracking-uri", f"sqlite:///{missing}", "--sweep", "x", "--out", str(tmp_path)])
    assert "no MLflow store" in err and not missing.exists()  # not created as a side effect


def test_usage_errors_are_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--sweep" in err


def test_analysis_error_is_an_exception_users_can_catch():
    with pytest.raises(AnalysisError):
        select([])


def test_out_dir_must_be_new_empty_or_an_earlier_report(store, capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    err = _error(capsys, ["report", "--tracking-uri", store, "--sweep", "mixed", "--out", str(tmp_path), "--no-log"])
    assert "not empty" in err and (tmp_path / "notes.txt").read_text() == "mine"
    out = tmp_path / "report"
    for _ in range(2):  # the second report replaces the first one's outputs
        assert main(["report", "--tracking-uri", store, "--sweep", "mixed", "--out", str(out), "--no-log"]) == 0
    assert "2 finished trial runs" in (out / "report.md").read_text()
