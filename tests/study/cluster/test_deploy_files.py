"""``deploy/``: the SLURM batch script and the KubeRay RayCluster manifest.

The batch script runs for real under bash with stand-ins for ``scontrol``, ``srun``, ``ray`` and ``python`` on
PATH that record their arguments: what it would start on which node, and the sweep command it runs. The
manifest is parsed and checked against the installed Ray and this project's pyproject.toml.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[3]
SBATCH = ROOT / "deploy" / "slurm-ray.sbatch"
KUBERAY = ROOT / "deploy" / "kuberay-raycluster.yaml"
BASH = shutil.which("bash")
NODES = ["gpu-a", "gpu-b", "gpu-c"]
HEAD_IP = "10.1.2.3"

needs_bash = pytest.mark.skipif(BASH is None, reason="bash not installed")

STUB = """#!/bin/bash
printf '%s\\n' "$(basename "$0") $*" >> "$STUB_LOG"
"""
STUBS = {
    "scontrol": STUB + 'printf "%s\\n" ' + " ".join(NODES) + "\n",
    "srun": STUB + f'for a in "$@"; do [[ $a == hostname ]] && echo "fe80::1 {HEAD_IP}"; done; exit 0\n',
    "ray": STUB,
    "python": STUB + "cat > /dev/null\n",  # the node-count check reads its program from stdin
}


def _run_sbatch(tmp_path: Path, nodes_start: bool = True, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, body in STUBS.items():
        (stubs / name).write_text(body)
        (stubs / name).chmod(0o755)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    log = tmp_path / "calls.log"
    full_env = {
        "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path), "STUB_LOG": str(log),
        "SLURM_JOB_NODELIST": "gpu-[a-c]", "SLURM_JOB_NUM_NODES": "3", "SLURM_CPUS_PER_TASK": "8",
        "SLURM_GPUS_PER_TASK": "2", "SLURM_SUBMIT_DIR": str(ROOT),
        "VAE_STUDY_VENV": str(venv), "VAE_STUDY_SHARED": str(tmp_path / "shared"), **env,
    }
    result = subprocess.run([BASH, str(SBATCH)], env=full_env, capture_output=True, text=True, timeout=30)
    # the Ray nodes start in background steps: give their stand-ins a moment to record themselves
    deadline = time.monotonic() + (5 if nodes_start else 0)
    while True:
        calls = log.read_text().splitlines() if log.exists() else []
        if sum(" ray start " in c for c in calls) >= len(NODES) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return result, calls


@needs_bash
def test_sbatch_script_is_valid_bash_following_rays_recipe():
    subprocess.run([BASH, "-n", str(SBATCH)], check=True, timeout=10)
    text = SBATCH.read_text()
    assert text.startswith("#!/bin/bash\n") and re.search(r"^#SBATCH --nodes=\d+$", text, re.M)
    commands = re.sub(r"\\\n\s*", " ", text)  # join continuation lines
    assert re.search(r"srun [^\n]*ray start --head [^\n]*--block &", commands)
    assert re.search(r"srun [^\n]*ray start --address \"\$ip_head\" [^\n]*--block &", commands)
    assert re.search(r"^python -u -m study\.run \"\$study\" --address \"\$ip_head\"", commands, re.M)
    assert 'VAE_STUDY_VENV:-' in text  # the virtualenv is the user's setting, with a default


@needs_bash
def test_sbatch_script_starts_head_workers_and_the_sweep(tmp_path):
    result, calls = _run_sbatch(tmp_path)
    assert result.returncode == 0, result.stderr
    shared = tmp_path / "shared"
    assert shared.is_dir()
    address = f"{HEAD_IP}:6379"  # the IPv4 one of the head's addresses
    starts = [c for c in calls if c.startswith("srun ") and " ray start " in c]
    head = [c for c in starts if "--head" in c]
    assert len(head) == 1 and f"-w {NODES[0]} " in head[0]
    assert f"--node-ip-address={HEAD_IP} --port=6379" in head[0]
    assert "--num-cpus 8 --num-gpus 2" in head[0] and "--dashboard-host=127.0.0.1" in head[0]
    assert head[0].endswith("--block")
    workers = sorted(c for c in starts if "--head" not in c)
    assert len(workers) == len(NODES) - 1
    for node, worker in zip(NODES[1:], workers, strict=True):
        assert f"-w {node} ray start --address {address} --num-cpus 8 --num-gpus 2" in worker
        assert worker.endswith("--block")
    sweep = [c for c in calls if "-m study.run" in c]
    assert sweep == [f"python -u -m study.run disentangle --address {address} --storage {shared}/ray_results "
                     f"--tracking-uri sqlite:///{shared}/mlflow.db --gpus-per-trial 1 --cpus-per-trial 4 "
                     "--experiment exp1"]
    # in the foreground, in this order: the head answers, every node is up, then the sweep
    foreground = [c for c in calls if not c.startswith("srun ") or "hostname" in c]
    assert foreground == [
        "scontrol show hostnames gpu-[a-c]",
        f"srun --nodes=1 --ntasks=1 -w {NODES[0]} hostname --ip-address",
        f"ray status --address {address}",
        f"python - {address} {len(NODES)}",
        sweep[0],
    ]


@needs_bash
def test_sbatch_script_resumes_and_takes_user_arguments(tmp_path):
    result, calls = _run_sbatch(tmp_path, VAE_STUDY_STUDY="anomaly",
                                VAE_STUDY_ARGS="--resume --name anomaly-mvtec", RAY_PORT="6380")
    assert result.returncode == 0, result.stderr
    (sweep,) = [c for c in calls if "-m study.run" in c]
    # --resume accepts only --name, --storage, --address, --debug: nothing else is added
    assert sweep == (f"python -u -m study.run anomaly --address {HEAD_IP}:6380 "
                     f"--storage {tmp_path}/shared/ray_results --resume --name anomaly-mvtec")


@needs_bash
def test_sbatch_script_refuses_a_missing_virtualenv(tmp_path):
    result, calls = _run_sbatch(tmp_path, nodes_start=False, VAE_STUDY_VENV=str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "VAE_STUDY_VENV" in result.stderr
    assert not calls


def _kuberay() -> dict:
    return yaml.safe_load(KUBERAY.read_text())


def _pyproject_dependencies() -> list[str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_kuberay_manifest_has_a_head_and_a_gpu_worker_group():
    manifest = _kuberay()
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    spec = manifest["spec"]
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the driver only, like cluster.yaml's head
    (head_container,) = head["template"]["spec"]["containers"]
    (group,) = spec["workerGroupSpecs"]
    assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    (worker,) = group["template"]["spec"]["containers"]
    limits, requests = worker["resources"]["limits"], worker["resources"]["requests"]
    assert int(limits["nvidia.com/gpu"]) >= 1 and requests == limits
    assert head_container["resources"]["requests"] == head_container["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]


def test_kuberay_image_is_rays_own_at_the_installed_version():
    spec = _kuberay()["spec"]
    containers = [*spec["headGroupSpec"]["template"]["spec"]["containers"],
                  *(c for g in spec["workerGroupSpecs"] for c in g["template"]["spec"]["containers"])]
    python = "py" + re.search(r"--python (\d)\.(\d+)", (ROOT / "cluster.yaml").read_text()).expand(r"\1\2")
    for container in containers:
        assert container["image"] == f"rayproject/ray:{ray.__version__}-{python}-gpu"


def test_kuberay_containers_install_the_project_dependencies_then_start_ray():
    manifest = _kuberay()
    assert manifest["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    spec = manifest["spec"]
    containers = [*spec["headGroupSpec"]["template"]["spec"]["containers"],
                  *(c for g in spec["workerGroupSpecs"] for c in g["template"]["spec"]["containers"])]
    wanted = sorted(d.replace(" ", "") for d in _pyproject_dependencies() if not re.match(r"ray\b", d))
    for container in containers:
        (script,) = container["args"]
        assert script.index("pip install") < script.index("$KUBERAY_GEN_RAY_START_CMD")
        if BASH:
            subprocess.run([BASH, "-n", "-c", script], check=True, timeout=10)
        env = {e["name"]: e["value"] for e in container["env"]}
        assert sorted(env["VAE_STUDY_REQUIREMENTS"].split()) == wanted  # pyproject's, less ray (the image's)
        assert container["startupProbe"]["exec"]["command"][-1] in script  # probes wait for the install


def test_kuberay_manifest_says_how_to_submit_a_sweep():
    header = KUBERAY.read_text().split("\napiVersion:", 1)[0]
    assert re.search(r"ray job submit --address http://127\.0\.0\.1:8265 --working-dir \.", header)
    assert "python -m study.run" in header and "--storage s3://" in header
    assert "kubectl exec" in header and "kubectl port-forward" in header


def test_readme_cluster_section_covers_the_deploy_files():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Run on a cluster\n"):]
    section = section[: section.index("\n## ", 3)]
    for heading in ("### What `ray up` needs on your machine", "### Ray's dashboard", "### SLURM",
                    "### Kubernetes (KubeRay)"):
        assert f"\n{heading}\n" in section
    assert "deploy/slurm-ray.sbatch" in section and "deploy/kuberay-raycluster.yaml" in section
    assert f'"ray[default]=={ray.__version__}" boto3' in section and "ray dashboard cluster.yaml" in section
    assert "8265" in section and "AMI id in it first" not in section
    images = set(re.findall(r"rayproject/ray:[\w.-]+", section))
    assert images == {_kuberay()["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]}
