"""``--search optuna``: seeds as replicates with seed means told to a persisted Optuna study, the reconciliation of
that study with Ray's restored searcher, the flags' one-line errors, and plans saved before ``--search`` existed.

The real kill + resume sweep is ``tests/study/test_scheduling.py::test_optuna_search_is_seeded_and_survives_resume``.
"""

from __future__ import annotations

import json

import optuna
import pytest
from ray.tune.search.search_generator import SearchGenerator

from analysis.optuna_plots import study_items
from study.plan import SWEEP_FILE, load_plan
from study.run import main
from study.search import (
    REPLICATES,
    SearchSettings,
    SeedReplicates,
    optuna_storage_url,
    persistent_optuna_search,
    searched_space,
)

SEEDS = [3, 8]
TOTAL = 10  # iterations a replicate must reach to count
SPACE = {"gamma": ("loguniform", 5.0, 100.0), "model": ("choice", ["factorvae"]), "iterations": TOTAL,
         "seed": (REPLICATES, SEEDS)}


def _searcher(url: str) -> SearchGenerator:
    """What ``study.search.tune_setup`` builds, set up as Tune sets it up at the start of a (resumed) fit."""
    inner = persistent_optuna_search("params", metric="disentanglement", mode="max", seed=7, study_name="s",
                                     storage=optuna.storages.RDBStorage(url))
    generator = SearchGenerator(SeedReplicates(inner, SEEDS, "params", TOTAL, "iteration"))
    assert generator.searcher.set_search_properties("disentanglement", "max", searched_space(SPACE, "params"))
    return generator


def _finish(generator, trial_id: str, value: float, iteration: int = TOTAL) -> None:
    generator.searcher.on_trial_complete(trial_id, {"disentanglement": value, "iteration": iteration})


def test_replicates_run_each_configuration_once_per_seed_and_optuna_stores_the_seed_mean(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    generator = _searcher(url)
    configs = {t: generator.searcher.suggest(t) for t in ("a0", "a1", "b0", "b1")}
    assert [c["params"]["seed"] for c in configs.values()] == [3, 8, 3, 8]
    assert configs["a0"]["params"]["gamma"] == configs["a1"]["params"]["gamma"] != configs["b0"]["params"]["gamma"]
    _finish(generator, "a0", 0.25)
    assert optuna.load_study(study_name="s", storage=url).trials[0].state.name == "RUNNING"  # waits for seed 8
    _finish(generator, "a1", 0.75)
    _finish(generator, "b0", 0.5)
    _finish(generator, "b1", 0.4, iteration=4)  # stopped early (ASHA): no seed mean exists
    a, b = optuna.load_study(study_name="s", storage=url).trials
    assert (a.state.name, a.value, a.params["gamma"]) == ("COMPLETE", 0.5, configs["a0"]["params"]["gamma"])
    assert a.user_attrs == {"seeds": SEEDS, "disentanglement_per_seed": [0.25, 0.75]}
    assert b.state.name == "PRUNED" and b.value is None
    assert b.user_attrs["disentanglement_per_seed"] == [0.5, None]


def test_restore_adopts_configurations_asked_after_the_snapshot_and_never_retells(tmp_path):
    """Ray's snapshot (the searcher's state) lags the database: the restored searcher must agree with it."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    before = _searcher(url)
    first = before.searcher.suggest("a0")
    before.searcher.suggest("a1")
    before.save_to_dir(str(tmp_path), session_str="snap")  # Ray's last snapshot before the kill
    _finish(before, "a0", 0.2)
    _finish(before, "a1", 0.6)  # told after the snapshot
    orphan = before.searcher.suggest("b0")  # asked after the snapshot: RUNNING, owned by no restored trial
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 2

    after = _searcher(url)  # the tuner's pickled searcher, then Ray's snapshot, as Tuner.restore does
    after.restore_from_dir(str(tmp_path))
    _finish(after, "a0", 0.9)  # the replicates rerun from their checkpoints and complete again
    _finish(after, "a1", 0.9)
    assert after.searcher.suggest("b0'")["params"] == orphan["params"]  # adopted, not asked again
    assert after.searcher.suggest("b1'")["params"] == {**orphan["params"], "seed": 8}
    fresh = after.searcher.suggest("c0")["params"]["gamma"]
    assert fresh not in (first["params"]["gamma"], orphan["params"]["gamma"])  # the reseeded sampler moved on
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert [t.number for t in trials] == [0, 1, 2] and trials[0].value == pytest.approx(0.4)  # the first tell stays


def _one_line_error(capsys, argv) -> str:
    import ray

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert not ray.is_initialized()
    return err


@pytest.mark.parametrize("flags, says", [
    (["--scheduler", "optuna"], "--scheduler optuna is now --search optuna"),
    (["--objective", "single"], "--objective needs --search optuna"),
    (["--num-samples", "3", "--search-seed", "1"], "--num-samples, --search-seed need --search optuna"),
    (["--search", "optuna", "--scheduler", "asha", "--seeds", "1", "2"], "--search optuna --scheduler asha takes one "
                                                                           "seed, got 2"),
])
def test_search_flags_fail_in_one_line_before_ray(capsys, tmp_path, monkeypatch, flags, says):
    monkeypatch.chdir(tmp_path)
    assert says in _one_line_error(capsys, ["disentangle", "--quick", *flags])


def test_optuna_under_asha_with_one_seed_plans_both(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["disentangle", "--quick", "--search", "optuna", "--scheduler", "asha", "--num-samples", "4",
                 "--metric", "eval_recon_loss", "--mode", "min", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 configurations × 1 seeds [1] = 4 trials, optimising the seed mean of eval_recon_loss (min)" in out
    assert f"study in sqlite:///{tmp_path.resolve()}/ray_results/disentangle-exp1-quick/optuna.db" in out
    assert "scheduler: ASHA on recon_loss (min)" in out  # ASHA keeps the study's every-report metric


def test_a_plan_saved_before_search_existed_resumes_as_optuna_search(tmp_path):
    """``sweep.json`` as the previous version wrote it: ``scheduler="optuna"``, seeds as a choice."""
    old = {"kind": "disentangle", "study": "exp1-quick", "name": "old", "preset": "quick", "storage": str(tmp_path),
           "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "cpus_per_trial": 1.0, "gpus_per_trial": 0.0,
           "max_concurrent": 0, "max_failures": 2, "data_source": "generated", "trials": [{"iterations": 30}],
           "search": {"scheduler": "optuna", "metric": None, "mode": None, "grace_period": 1, "reduction_factor": 3,
                      "num_samples": 3, "objective": "single", "seed": 7},
           "space": {"gamma": ["loguniform", 5.0, 100.0], "seed": ["choice", [1, 2]], "iterations": 30}}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / SWEEP_FILE).write_text(json.dumps(old))
    plan = load_plan(str(tmp_path), "old")
    assert plan.search == SearchSettings(scheduler="fifo", algorithm="optuna", num_samples=3, seed=7)
    assert plan.space["gamma"] == ("loguniform", 5.0, 100.0) and plan.space["seed"] == ("choice", [1, 2])


def test_the_report_notes_an_absent_optuna_study_instead_of_failing(tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere' / 'optuna.db'}"
    assert study_items("sweep", url, tmp_path, "png") == ([], f"sweep: no Optuna study at {url} (the file is absent "
                                                              "here); no importance or contour plots.")
    assert study_items("sweep", None, tmp_path, "png")[1].startswith("sweep: an Optuna sweep of an earlier version")


def test_the_study_lives_in_the_sweep_folder_or_beside_mlflow_for_object_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert optuna_storage_url(str(tmp_path / "rr"), "s", "http://h:5000") == f"sqlite:///{tmp_path}/rr/s/optuna.db"
    assert optuna_storage_url("s3://bucket/rr", "s", "sqlite:////data/mlflow.db") == "sqlite:////data/s.optuna.db"
    assert optuna_storage_url("s3://bucket/rr", "s", "http://h:5000") == f"sqlite:///{tmp_path}/s.optuna.db"
