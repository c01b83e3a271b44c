"""``trainables.export``: the module the MLflow callback logs as a trial's model, for the anomaly study's models (the
disentangle one is round-tripped through MLflow on the session's quick sweep in tests/study/test_mlflow_forms.py)."""

import torch

from search_spaces.anomaly import get_study, trial_config
from trainables.export import served_model
from vae_attention.training.anomaly.state import build_model


def _served(dataset: str, overrides: dict):
    """The served module of ``dataset``'s first quick trial, and the model whose weights it was given."""
    params = {**get_study(dataset).trials(quick=True)[0], **overrides, "data_dir": "/data"}
    trained = build_model(trial_config(params), torch.Generator().manual_seed(3))  # stands for the final weights
    served = served_model("anomaly", params, trained.state_dict())
    for name, value in trained.state_dict().items():
        assert torch.equal(served.module.vae.state_dict()[name], value)
    return trained, served


def test_the_served_module_is_the_trials_vae_returning_its_reconstruction():
    trained, served = _served("mnist", {})
    assert served.input_example.shape == (1, 1, 28, 28) and served.input_example.dtype == "float32"
    assert served.module.recon_is_logits is True and not served.module.training
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        decoded = trained.eval()(x).recon_logits  # eval mode: z = μ
        assert torch.equal(served.module(x), torch.sigmoid(decoded))
        served.module.recon_is_logits = False  # the MSE-trained MVTec model's form (its ResNet-18 is slow to build)
        assert torch.equal(served.module(x), decoded)


def test_studies_without_a_vae_model_log_none():
    assert served_model("rbm", {}, {}) is None and served_model(None, {}, {}) is None
