"""The report on the store of a real quick sweep (Ray + the trainable), with --include-quick."""

from __future__ import annotations

import shutil

from analysis.cli import main


def test_report_on_a_real_quick_sweep(quick_sweep, tmp_path, capsys):
    assert quick_sweep["proc"].returncode == 0, quick_sweep["proc"].stderr[-2000:]
    # a copy of the store: the report run it logs stays out of the shared fixture's database
    store = tmp_path / "mlflow.db"
    shutil.copyfile(quick_sweep["workdir"] / "mlflow.db", store)
    uri = f"sqlite:///{store}"
    out = tmp_path / "report"
    # a sweep of only quick runs is reported without --include-quick, with a note saying so
    assert main(["report", "--tracking-uri", uri, "--sweep", quick_sweep["name"], "--out", str(out), "--no-log"]) == 0
    assert "Quick-preset runs only" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["report", "--tracking-uri", uri, "--sweep", quick_sweep["name"], "--out", str(out),
                 "--include-quick"]) == 0
    assert "report of 2 trial runs" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "2 finished trial runs" in md and "preset quick" in md and "quick-preset runs included" in md
    table = (out / "tables" / "disentangle_configs.csv").read_text()
    assert "factorvae" in table and "ad_factorvae" in table
    assert (out / "figures" / "curves.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "figures" / "artifacts").glob("attention_*.png")) == [
        "attention_ad_factorvae_g10_l1_s1.png", "attention_factorvae_g10_s1.png"]  # exp1's first γ
