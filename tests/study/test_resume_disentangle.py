"""Kill a running sweep's driver with SIGKILL, `--resume` it, and check nothing was lost or duplicated."""

import json

import torch
from helpers.processes import TINY_SWEEP, kill_after_first_checkpoint, run_cli
from mlflow import MlflowClient

from search_spaces.disentangle import trial_configs
from study.trial_artifacts import logged_model_ids
from vae_attention.data import DSprites
from vae_attention.training import DisentangleState

# The kill comes at the first checkpoint Ray registers (iteration 20: num_to_keep = 2 checkpoints force a state
# sync); a trial cannot run ahead of the driver by more than one report, so 60 leaves it far from the end.
ITERATIONS = 60


def _uninterrupted_weights(params):
    """The same trial run straight through in this process: the oracle for bit-identical resume."""
    science, _ = trial_configs(params)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the trial ran with 1 CPU = 1 torch thread; sums depend on the thread count
    try:
        state = DisentangleState(science, DSprites(science.data_dir), device="cpu")
        while state.iteration < ITERATIONS:
            state.step()
    finally:
        torch.set_num_threads(threads)
    return state.models.vae.state_dict()


def test_sigkilled_sweep_resumes_to_the_same_result(ray_address, mlflow_db, tmp_path):
    name, storage = "resume-test", tmp_path / "ray_results"
    args = ["disentangle", "--quick", "--iterations", ITERATIONS, *TINY_SWEEP, "--set", f"eval_every={ITERATIONS}",
            "--address", ray_address, "--storage", storage, "--name", name]
    kill_after_first_checkpoint(args, cwd=tmp_path, experiment_dir=storage / name)

    client = MlflowClient(mlflow_db)
    experiment = client.get_experiment_by_name(name)
    interrupted = client.search_runs([experiment.experiment_id], "tags.run_kind = 'trial'")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.run_kind = 'sweep'")
    assert parent.info.status == "RUNNING"  # the sweep's run, made before Ray started; the kill left it open
    last_steps = [max((m.step for m in client.get_metric_history(r.info.run_id, "recon_loss")), default=0)
                  for r in interrupted]
    assert min(last_steps) < ITERATIONS, last_steps  # the kill really cut a trial short
    assert any(r.info.status == "RUNNING" for r in interrupted)

    resumed = run_cli(["disentangle", "--resume", "--name", name, "--storage", storage, "--address", ray_address],
                      cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "2 of 2 trials finished" in resumed.stdout

    runs = client.search_runs([experiment.experiment_id], "tags.run_kind != 'sweep'")
    assert len(runs) == 2  # exactly one run per trial across the kill and the resume
    # one parent across the kill and the resume (--resume found it by its tags), every trial nested under it
    (resumed_parent,) = client.search_runs([experiment.experiment_id], "tags.run_kind = 'sweep'")
    assert resumed_parent.info.run_id == parent.info.run_id and resumed_parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["run_kind"] == "trial"
        for key in ("recon_loss", "tc"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == list(range(5, ITERATIONS + 1, 5)), (key, steps)
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
        # the final figures (attention, traversal, reconstruction) as MLflow images, once however often it ran
        assert len(images) == 3, images
        assert len(logged_model_ids(client, run.info.run_id)) == 1  # the final weights as one MLflow model
        local = client.download_artifacts(run.info.run_id, "model/vae.pt", str(tmp_path))
        logged = torch.load(local, weights_only=True)
        expected = _uninterrupted_weights(_logged_config(client, run, tmp_path))
        assert logged.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(logged[key], value), key


def _logged_config(client, run, tmp_path):
    path = client.download_artifacts(run.info.run_id, "config.json", str(tmp_path / run.info.run_id))
    return json.loads(open(path).read())
