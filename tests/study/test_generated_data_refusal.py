"""A full disentangle sweep refuses the generated dSprites stand-in unless asked, in one line, before Ray starts."""

from __future__ import annotations

import pytest
from helpers.datasets import DSPRITES_NPZ_NAME

from study.options import with_defaults
from study.run import STUDIES, build_parser, main

DOWNLOAD = "python -m vae_attention.data download dsprites --to DIR"


def plan_of(argv: list[str]):
    args = with_defaults(build_parser().parse_args(argv))
    return STUDIES[args.handler].build_plan(args)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("data_dir", [None, "empty"])
def test_full_sweep_without_the_npz_is_refused_in_one_line(in_tmp, capsys, data_dir):
    import ray

    argv = ["disentangle", "--experiment", "exp2", "--iterations", "10"]
    if data_dir:
        (in_tmp / data_dir).mkdir()
        argv += ["--data-dir", str(in_tmp / data_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0
    expected = f"{in_tmp / data_dir}/{DSPRITES_NPZ_NAME}" if data_dir else f"DIR/{DSPRITES_NPZ_NAME}"
    assert expected in err and DOWNLOAD in err and "--allow-generated-data" in err
    assert not ray.is_initialized()


def test_the_stand_in_runs_when_asked_for_quick_or_dry_run(in_tmp, capsys):
    assert plan_of(["disentangle", "--iterations", "10", "--allow-generated-data"]).trials
    assert plan_of(["disentangle", "--quick"]).preset == "quick"
    assert main(["disentangle", "--dry-run"]) == 0  # a dry run trains nothing
    assert "refuses" not in capsys.readouterr().err


def test_full_sweep_with_the_official_file_is_not_refused(in_tmp, dsprites_npz):
    plan = plan_of(["disentangle", "--iterations", "10", "--data-dir", str(dsprites_npz)])
    assert {t["data_dir"] for t in plan.trials} == {str(dsprites_npz)}
