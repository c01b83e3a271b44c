"""CLI habits (issue 13): the ``vae-study`` console script, ``--quick`` shrinking the chosen experiment, grid flags,
``--resume`` naming the sweep as a fresh start does, and MVTec-layout folders under names of one's own.

Everything here runs without Ray: plans are built and dry-run in process; the one real β-VAE step runs the config
the trainable would receive.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess

import pytest
import torch
from helpers.datasets import write_mvtec_category

from search_spaces.common import PARAMS_KEY, trial_params
from search_spaces.disentangle import QUICK_LOOP, STUDIES, trial_configs
from study import console
from study.options import with_defaults
from study.plan import save_plan
from study.run import STUDIES as RUN_STUDIES
from study.run import build_parser, main, resume_plan
from vae_attention.data import DSprites, MVTecAD
from vae_attention.errors import DataError
from vae_attention.training.disentangle import DisentangleState


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # storage and the MLflow file resolve in the working directory
    return tmp_path


def plan_of(argv: list[str]):
    args = with_defaults(build_parser().parse_args(argv))
    return RUN_STUDIES[args.handler].build_plan(args)


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def dry_run_rows(out: str, columns: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The dry run's trial table, each row cut to ``columns`` (read by the header's column names)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[-1:] == ["config_key"])
    header = lines[start].split()
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("resources:"):  # the line after the table
            break
        cells = line.split()
        assert len(cells) == len(header), line
        rows.append(tuple(cells[header.index(c)] for c in columns))
    return rows


# -- vae-study ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command, prog", [
    (["run"], "python -m study.run"),
    (["resume", "disentangle"], "python -m study.run disentangle"),
    (["evaluate"], "python -m study.evaluate"),
    (["report"], "python -m analysis report"),
    (["download"], "python -m vae_attention.data download"),
])
def test_each_console_command_is_its_python_m_form(command, prog, capsys):
    with pytest.raises(SystemExit) as stop:
        console.main([*command, "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {prog} ")


def test_console_passes_arguments_through_and_resume_adds_resume(in_tmp, capsys):
    assert console.main(["run", "disentangle", "--experiment", "betavae", "--quick", "--dry-run"]) == 0
    assert "sweep 'disentangle-betavae-quick'" in capsys.readouterr().out
    # resume = study.run … --resume: it names the sweep it looked for, from --experiment
    assert console.main(["resume", "disentangle", "--experiment", "exp2"]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and str(in_tmp / "ray_results" / "disentangle-exp2") in err
    assert console.main(["train"]) == 2 and "unknown command 'train'" in capsys.readouterr().err


def test_vae_study_script_is_installed():
    script = shutil.which("vae-study")
    assert script, "vae-study is not on PATH: pip install -e . (pyproject.toml [project.scripts])"
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert all(f"vae-study {name}" in proc.stdout for name in ("run", "resume", "evaluate", "report", "download"))


# -- --quick shrinks the experiment --------------------------------------------------------------------------
@pytest.mark.parametrize("experiment", [name for name in STUDIES if name != "all"] + ["all"])
def test_quick_keeps_the_experiments_models_at_their_first_values(experiment, in_tmp):
    study = STUDIES[experiment]
    plan = plan_of(["disentangle", "--experiment", experiment, "--quick", "--dry-run"])
    # oracle: each arm at its first γ/λ/β (the keys its model uses), each further axis at its first value
    expected = set()
    for arm in study.arms:
        gamma = arm.gammas[0] if arm.model != "betavae" else 0.0
        lam = arm.lambdas[0] if arm.model == "ad_factorvae" else 0.0
        beta = arm.betas[0] if arm.model == "betavae" else 1.0
        expected.add((arm.model, gamma, lam, beta, *(values[0] for values in study.axes.values())))
    got = {(t["model"], t["gamma"], t["lambda_ad"], t["beta"], *(t[k] for k in study.axes)) for t in plan.trials}
    assert got == expected and len(plan.trials) == len(expected)
    assert {t["seed"] for t in plan.trials} == {study.seeds[0]}
    assert all(t["iterations"] == QUICK_LOOP["iterations"] for t in plan.trials)
    assert plan.name == f"disentangle-{experiment}-quick" and plan.preset == "quick"


def test_quick_betavae_trains_a_beta_vae(in_tmp, dsprites_npz):
    """``--experiment betavae --quick`` hands the trainable a β-VAE config (the first β, the quick loop); one step
    of it is the β-VAE objective, recon + β·KL with no discriminator and no TC (checked at ``--beta 4``, where
    β shows in the loss)."""
    configs = {}
    for extra in ([], ["--beta", "4"]):
        plan = plan_of(["disentangle", "--experiment", "betavae", "--quick", "--data-dir", str(dsprites_npz),
                        "--set", "batch_size=8", *extra])
        assert len(plan.trials) == 1
        configs[tuple(extra)] = trial_configs(trial_params({PARAMS_KEY: plan.trials[0]}))  # as the trainable does
    config, schedule = configs[()]
    assert (config.model, config.beta, schedule.total) == ("betavae", STUDIES["betavae"].arms[0].betas[0],
                                                           QUICK_LOOP["iterations"])
    config, _ = configs[("--beta", "4")]
    assert (config.model, config.beta) == ("betavae", 4.0)
    state = DisentangleState(config, DSprites(config.data_dir), device="cpu")
    assert state.models.discriminator is None
    metrics = state.step()
    assert set(metrics) == {"recon_loss", "kld", "vae_loss"}
    torch.testing.assert_close(metrics["vae_loss"], metrics["recon_loss"] + 4.0 * metrics["kld"])


def test_quick_shrinks_anomaly_and_rbm_grids_but_keeps_given_axes(in_tmp):
    mnist = plan_of(["anomaly", "--dataset", "mnist", "--data-dir", str(in_tmp), "--quick", "--dry-run"])
    assert [(t["digit"], t["seed"], t["epochs"]) for t in mnist.trials] == [(1, 1, 2)]
    both = plan_of(["anomaly", "--dataset", "mnist", "--data-dir", str(in_tmp), "--quick", "--digit", "1", "3",
                    "--lr", "1e-3", "1e-4"])
    assert sorted((t["digit"], t["lr"]) for t in both.trials) == sorted(itertools.product((1, 3), (1e-3, 1e-4)))
    rbm = plan_of(["rbm", "--data-dir", str(in_tmp), "--quick", "--digit", "1", "3"])
    assert sorted(t["digit"] for t in rbm.trials) == [1, 3]  # the protocol's other axes at their first values
    assert len({(t["k"], t["lr"], t["temperature"], t["hidden"]) for t in rbm.trials}) == 1


# -- grid flags ------------------------------------------------------------------------------------------------
def test_grid_flags_give_the_product_of_their_values(in_tmp, capsys):
    argv = ["disentangle", "--experiment", "all", "--gamma", "10", "20", "--lambda-ad", "1", "40", "--beta", "4",
            "--lr", "1e-4", "5e-4", "--seeds", "1", "2", "--dry-run"]
    assert main(argv) == 0
    rows = dry_run_rows(capsys.readouterr().out, ("model", "gamma", "lambda_ad", "beta", "lr", "seed"))
    gammas, lambdas, betas, lrs, seeds = (10.0, 20.0), (1.0, 40.0), (4.0,), (1e-4, 5e-4), (1, 2)
    expected = ([("factorvae", g, 0.0, 1.0, lr, s) for g, lr, s in itertools.product(gammas, lrs, seeds)]
                + [("ad_factorvae", g, lam, 1.0, lr, s)
                   for g, lam, lr, s in itertools.product(gammas, lambdas, lrs, seeds)]
                + [("betavae", 0.0, 0.0, b, lr, s) for b, lr, s in itertools.product(betas, lrs, seeds)])
    got = [(m, float(g), float(lam), float(b), float(lr), int(s)) for m, g, lam, b, lr, s in rows]
    assert len(got) == len(expected) == 28 and sorted(got) == sorted(expected)


def test_generic_grid_replaces_the_experiments_axis(in_tmp):
    plan = plan_of(["disentangle", "--experiment", "adlayer", "--grid", "attention_layer=encoder.2",
                    "--grid", "pairs=all_pairs,random_pair", "--grid", "z_dim=8,10", "--grid", "gamma=30,30.0",
                    "--dry-run"])
    study = STUDIES["adlayer"]
    expected = set(itertools.product((30.0,), study.arms[0].lambdas, ("encoder.2",), ("all_pairs", "random_pair"),
                                     (8, 10), study.seeds))
    got = [(t["gamma"], t["lambda_ad"], t["attention_layer"], t["pairs"], t["z_dim"], t["seed"]) for t in plan.trials]
    assert len(got) == len(expected) and set(got) == expected  # typed: 30 and 30.0 are one value


@pytest.mark.parametrize("argv, message", [
    (["--grid", "gama=1,2"], "--grid gama: not a config field"),
    (["--grid", "seed=1,2"], "--grid seed: seeds are given with --seeds"),
    (["--grid", "lr=fast"], "lr='fast' is not a valid float"),
    (["--gamma", "10", "--grid", "gamma=20"], "--gamma and --grid gamma both give gamma"),
    (["--lr", "1e-4", "--set", "lr=1e-3"], "lr: given as a grid axis and as one value"),
    (["--beta", "4"], "beta applies to betavae, which experiment exp1 does not train"),
])
def test_bad_grid_options_fail_in_one_line(argv, message, in_tmp, capsys):
    assert message in one_line_error(capsys, ["disentangle", "--dry-run", *argv])


# -- --resume names the sweep as a fresh start does -----------------------------------------------------------
def test_resume_without_name_finds_the_experiments_sweep(in_tmp, capsys):
    started = plan_of(["disentangle", "--experiment", "exp2", "--allow-generated-data"])
    save_plan(started)  # what a fresh start writes before Ray runs
    args = build_parser().parse_args(["disentangle", "--resume", "--experiment", "exp2"])
    resumed = resume_plan(RUN_STUDIES["disentangle"], args)
    assert resumed.name == "disentangle-exp2" and resumed.trials == started.trials
    err = one_line_error(capsys, ["disentangle", "--resume", "--experiment", "exp2", "--quick"])
    assert "disentangle-exp2-quick" in err and "--name" in err
    err = one_line_error(capsys, ["disentangle", "--resume", "--experiment", "exp2", "--gamma", "5"])
    assert "drop --gamma" in err


# -- a folder in the MVTec layout under a name of one's own ------------------------------------------------------
def test_custom_mvtec_category_is_read_and_noted_once(tmp_path, capsys, monkeypatch):
    written = write_mvtec_category(tmp_path, "my_parts", n_train=3, n_good=1, defects=(("dent", 2),))
    train = MVTecAD(tmp_path, "my_parts", split="train", image_size=16)
    test = MVTecAD(tmp_path, "my_parts", split="test", image_size=16)
    assert len(train) == 3 and sorted(test.defects) == ["dent", "dent", "good"]
    assert len(written) == 6
    monkeypatch.chdir(tmp_path)
    assert main(["anomaly", "--dataset", "mvtec", "--category", "my_parts", "--data-dir", str(tmp_path), "--quick",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "'my_parts' is not one of MVTec AD's 15" in notes[0]
    assert dry_run_rows(out, ("dataset", "category")) == [("mvtec", "my_parts")]
    with pytest.raises(DataError, match="not a folder name"):
        MVTecAD(tmp_path, "../my_parts")
