"""SageMaker Python SDK v3 beside v2 (issue 11): the kernel guard, the entry points' v3 argument
and cluster forms, and the two things that need .venv-sdk3 (v2 and v3 cannot share a venv):
its own tests in tests_sdk3/ (CreateTrainingJob and deploy requests against moto_server, run
as a subprocess here, beside v2's request for the same job), and notebook 6.0 in local mode.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from workshop import sdk

ROOT = Path(__file__).resolve().parents[1]
SDK3_PYTHON = ROOT / ".venv-sdk3" / "bin" / "python"


# ------------------------------------------------------------------ the guard in each kernel


def test_this_kernel_has_sdk_v2_and_the_guard_lets_it_pass():
    assert sdk.installed_major() == 2
    assert sdk.require(2) == 2


def test_a_v2_kernel_stops_a_v3_notebook_naming_the_v3_kernel():
    with pytest.raises(sdk.WrongSDK) as stopped:
        sdk.require(3)
    message = str(stopped.value)
    assert "SDK v3" in message and "has v2 (2.257.7)" in message
    assert '"Python 3 (CIFAR-10 workshop, SageMaker SDK v3)" (cifar-workshop-sdk3' in message
    assert "requirements-sdk3.txt" in message


def test_a_kernel_without_sagemaker_is_told_what_to_install(monkeypatch):
    monkeypatch.setattr(sdk, "installed_major", lambda: None)
    with pytest.raises(sdk.WrongSDK, match="has no `sagemaker` package.*requirements.txt"):
        sdk.require(2)
    assert sdk.require(2, missing_ok=True) is None  # 0.0 with INSTALL = True installs it


def test_a_v3_kernel_stops_the_v2_notebooks_first_cell():
    """In .venv-sdk3, a training notebook's first cell (notebook.start) stops with the kernel to
    pick, before any `import sagemaker.tensorflow` could fail."""
    code = ("from workshop import notebook, sdk\n"
            "try:\n    notebook.start('local', 'data/cifar10')\n"
            "except sdk.WrongSDK as err:\n    print('STOPPED', err)\n")
    out = subprocess.run([str(SDK3_PYTHON), "-c", code], capture_output=True, text=True,
                         timeout=120, env=sdk3_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert "STOPPED This notebook is written for the SageMaker Python SDK v2, but this kernel " \
           "has v3 (3.27.0)" in out.stdout
    assert '"Python 3 (CIFAR-10 workshop, TF 2.15)" (cifar-workshop;' in out.stdout
    assert "pip uninstall -y sagemaker sagemaker-core" in out.stdout


def sdk3_env(**extra):
    """.venv-sdk3 imports this checkout's workshop package (its .pth may name another one)."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "code" / "phase0"), **extra}


# ------------------------------------------------------- the entry points under v3's driver


def test_parse_args_takes_v3s_arguments_without_model_dir(monkeypatch):
    """v3's basic driver passes only the hyperparameters (json.dumps'ed unless strings) and no
    --model_dir; channels and folders come from SM_* variables, as under v2."""
    from cifar import sagemaker_args

    for name, value in {"SM_CHANNEL_TRAIN": "/opt/ml/input/data/train",
                        "SM_CHANNEL_VALIDATION": "/opt/ml/input/data/validation",
                        "SM_CHANNEL_EVAL": "/opt/ml/input/data/eval",
                        "SM_MODEL_DIR": "/opt/ml/model",
                        "SM_OUTPUT_DATA_DIR": "/opt/ml/output/data"}.items():
        monkeypatch.setenv(name, value)
    args = sagemaker_args.parse_args("v3", ["--epochs", "2", "--batch-size", "32",
                                            "--learning-rate", "0.02"])
    assert (args.epochs, args.batch_size, args.learning_rate) == (2, 32, 0.02)
    assert args.model_dir is None and args.sm_model_dir == "/opt/ml/model"
    assert args.train == "/opt/ml/input/data/train"


def test_mwms_cluster_from_sm_hosts_when_tf_config_is_missing(monkeypatch):
    from cifar import distributed

    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setenv("SM_HOSTS", '["algo-1", "algo-2"]')
    monkeypatch.setenv("SM_CURRENT_HOST", "algo-2")
    distributed.tf_config_from_sm_hosts()
    assert json.loads(os.environ["TF_CONFIG"]) == {  # what v2's toolkit sets (port 8890)
        "cluster": {"worker": ["algo-1:8890", "algo-2:8890"]}, "environment": "cloud",
        "task": {"type": "worker", "index": 1}}
    assert distributed.mwms_worker() == (1, 2)

    given = '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}'
    monkeypatch.setenv("TF_CONFIG", given)  # set by v2's toolkit: kept
    distributed.tf_config_from_sm_hosts()
    assert os.environ["TF_CONFIG"] == given
    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.setenv("SM_HOSTS", '["algo-1"]')  # one host: no cluster
    distributed.tf_config_from_sm_hosts()
    assert "TF_CONFIG" not in os.environ
