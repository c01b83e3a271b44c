"""Smoke runs of ``python -m benchmarks.step --quick`` and ``python -m benchmarks.packing --quick``, and the
Table 1 projection's arithmetic against a hand computation."""

from __future__ import annotations

import re

import pytest

from benchmarks import packing, step


def test_step_quick_prints_both_sides_with_flops_gemm_fraction_and_ratio(capsys):
    step.main(["--quick", "--batch", "4", "--threads", "1"])
    out = capsys.readouterr().out
    assert re.search(r"fp32 GEMM 512³ on cpu: [\d.]+ GFLOP/s", out)
    for label in ("factorvae", "ad_factorvae consecutive_dims", "ad_factorvae random_pair"):
        ours = next(line for line in out.splitlines() if line.startswith(f"{label} [ours]"))
        textbook = next(line for line in out.splitlines() if line.startswith(f"{label} [textbook]"))
        it_s, gflop, gflops, percent, ratio = map(float, re.findall(r"[\d.]+", ours.split("]")[-1]))
        assert min(it_s, gflop, gflops, percent, ratio) > 0
        assert gflops == pytest.approx(it_s * gflop, rel=0.01)
        assert float(re.findall(r"[\d.]+", textbook.split("]")[-1])[0]) > 0


def test_projection_and_mix_match_table_1():
    # 10 FactorVAE + 40 AD-FactorVAE runs of 150k iterations; at 10 and 5 it/s on 2 slots:
    # (1.5e6 / 10 + 6e6 / 5) / 2 s = 675,000 s = 187.5 h
    assert packing.projected_hours({"factorvae": 10.0, "ad_factorvae": 5.0}, 2) == pytest.approx(187.5)
    assert packing.pack_models(2) == ["factorvae", "ad_factorvae"]
    assert packing.pack_models(16).count("factorvae") == 3


def test_packing_quick_runs_trial_processes(capsys):
    packing.main(["--quick", "--threads", "1"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s*2 ", line)]
    assert [row[:2] for row in rows] == [["2", "1+1"]]
    assert all(float(value) > 0 for row in rows for value in row[-4:])
    assert "best packing: K=" in out
