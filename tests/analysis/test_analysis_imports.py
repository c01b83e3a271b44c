"""The analysis reads MLflow only: importing every module of it loads neither torch nor Ray nor the project's
training packages, so a report can be made where only the tracking store is."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import pkgutil, importlib, sys
import analysis
for module in pkgutil.iter_modules(analysis.__path__):
    if module.name != "__main__":
        importlib.import_module(f"analysis.{module.name}")
banned = [m for m in ("torch", "ray", "vae_attention", "study", "trainables", "search_spaces") if m in sys.modules]
print("loaded:", banned)
"""


def test_analysis_imports_no_torch_ray_or_project_packages():
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "loaded: []" in proc.stdout, proc.stdout
