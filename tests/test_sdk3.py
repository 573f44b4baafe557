"""SageMaker Python SDK v3 beside v2 (issue 11): the kernel guard, the entry points' v3 argument
and cluster forms, and the two things that need .venv-sdk3 (v2 and v3 cannot share a venv):
its own tests in tests_sdk3/, run as subprocesses here (CreateTrainingJob and deploy requests
against moto_server, beside v2's request for the same job; train_tf.py under v3's driver in its
image), and notebook 6.0 in local mode (train_keras.py, train_tf_mwms.py under v3's driver).
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from aws_fixtures import moto_server, sdk_offline  # noqa: F401  (moto_server on loopback)
from helpers import LOCAL_RUN, output_text, run_notebook, served_accuracy

from workshop import sdk_version

ROOT = Path(__file__).resolve().parents[1]
SDK3_PYTHON = ROOT / ".venv-sdk3" / "bin" / "python"


# ------------------------------------------------------------------ the guard in each kernel


def test_this_kernel_has_sdk_v2_and_the_guard_lets_it_pass():
    assert sdk_version.installed_major() == 2
    assert sdk_version.require(2) == 2


def test_a_v2_kernel_stops_a_v3_notebook_naming_the_v3_kernel():
    with pytest.raises(sdk_version.WrongSDK) as stopped:
        sdk_version.require(3)
    message = str(stopped.value)
    assert "SDK v3" in message and "has v2 (2.257.7)" in message
    assert '"Python 3 (CIFAR-10 workshop, SageMaker SDK v3)" (cifar-workshop-sdk3' in message
    assert "requirements-sdk3.txt" in message


def test_a_kernel_without_sagemaker_is_told_what_to_install(monkeypatch):
    monkeypatch.setattr(sdk_version, "installed_major", lambda: None)
    with pytest.raises(sdk_version.WrongSDK, match="has no `sagemaker` package.*requirements.txt"):
        sdk_version.require(2)
    assert sdk_version.require(2, missing_ok=True) is None  # 0.0 with INSTALL = True installs it


def test_a_v3_kernel_stops_the_v2_notebooks_first_cell():
    """In .venv-sdk3, a training notebook's first cell (notebook.start) stops with the kernel to
    pick, before any `import sagemaker.tensorflow` could fail."""
    code = ("from workshop import notebook, sdk_version\n"
            "try:\n    notebook.start('local', 'data/cifar10')\n"
            "except sdk_version.WrongSDK as err:\n    print('STOPPED', err)\n")
    out = subprocess.run([str(SDK3_PYTHON), "-c", code], capture_output=True, text=True,
                         timeout=120, env=sdk3_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert "STOPPED This notebook is written for the SageMaker Python SDK v2, but this kernel " \
           "has v3 (3.27.0)" in out.stdout
    assert '"Python 3 (CIFAR-10 workshop, TF 2.15)" (cifar-workshop;' in out.stdout
    assert "pip uninstall -y sagemaker sagemaker-core" in out.stdout


def test_notebook_runs_pick_the_kernel_of_the_notebooks_sdk():
    from workshop import run_notebooks

    kernels = {p.name[:3]: run_notebooks.kernel_for(p) for p in run_notebooks.notebooks()}
    assert kernels.pop("6.0") == "cifar-workshop-sdk3"
    assert set(kernels.values()) == {"cifar-workshop"}
    assert (run_notebooks.SDK3_KERNELS / "kernels" / "cifar-workshop-sdk3" / "kernel.json").exists()


def sdk3_env(**extra):
    """.venv-sdk3 imports this checkout's workshop package (its .pth may name another one)."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "code" / "phase0"), **extra}


def pytest_in_sdk3(test_file, tmp_path, passed, timeout, **env):
    """Run tests_sdk3/<test_file> in .venv-sdk3; it must pass ``passed`` tests, none skipped."""
    out = subprocess.run(
        [str(SDK3_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--basetemp={tmp_path / 'sdk3'}", f"tests_sdk3/{test_file}"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=sdk3_env(**env))
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert summary.startswith(f"{passed} passed") and "skipped" not in summary, summary


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

    # setenv first, so that teardown removes what the function writes into os.environ (a bare
    # delenv of an absent variable records nothing, and TF_CONFIG leaked into later tests).
    monkeypatch.setenv("TF_CONFIG", "")
    monkeypatch.delenv("TF_CONFIG")
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


def test_train_tf_runs_unchanged_under_v3s_driver_in_its_image(sdk_offline,  # noqa: F811
                                                                 cifar_data_dir, tmp_path):
    """tests_sdk3/test_local_container.py trains 2.1's script with ModelTrainer in local
    container mode; here, with TensorFlow, its model.tar.gz is opened and served."""

    pytest_in_sdk3("test_local_container.py", tmp_path, passed=1, timeout=900,
                   SDK3_DATA_DIR=str(cifar_data_dir), SDK3_RESULT_OUT=str(tmp_path / "result.json"))
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["mode"], result["epochs"], result["workers"]) == ("local", 2, 1)
    assert result["eval_accuracy"] > 0.3  # 10 classes: chance is 0.1
    served = served_accuracy(result["model_artifact"], cifar_data_dir)  # checks 1/saved_model.pb
    assert served == pytest.approx(result["eval_accuracy"], abs=0.01)


# ------------------------------------------ v3's requests (tests_sdk3/) beside v2's, via moto

BUCKET = "workshop-sdk3-requests"
ROLE = "arn:aws:iam::123456789012:role/SageMakerWorkshopRole"
HYPERPARAMETERS = {"epochs": 15, "batch-size": 512, "learning-rate": 0.4}  # 6.0's defaults


def v2_request_for_1_2(channels):
    """What SDK v2 sends for 1.2's job (jobs.workshop_estimator builds the notebook's call)."""
    from workshop import jobs

    estimator = jobs.workshop_estimator("host", "train_keras.py", HYPERPARAMETERS, role_arn=ROLE,
                                        bucket=BUCKET, use_spot=True, max_run=3600)
    sent = {}
    estimator.sagemaker_session.sagemaker_client.meta.events.register(
        "provide-client-params.sagemaker.CreateTrainingJob",
        lambda params, **_: sent.update(params))
    estimator.fit(channels, wait=False)
    return sent


def test_v3_requests_pass_in_its_venv_and_differ_from_v2s_as_stated(moto_server,  # noqa: F811
                                                                     tmp_path):
    """tests_sdk3/ in .venv-sdk3 (its own moto_server); then 1.2's v3 request beside v2's."""
    pytest_in_sdk3("test_requests.py", tmp_path, passed=4, timeout=600,
                   SDK3_REQUESTS_OUT=str(tmp_path))
    v3 = json.loads((tmp_path / "cifar10-train-keras.json").read_text())

    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    channels = {split: f"s3://{BUCKET}/cifar10/{split}" for split in ("train", "validation",
                                                                     "eval")}
    v2 = v2_request_for_1_2(channels)

    # The same job: image, instances, spot, time limits, metrics, data, the user's hyperparameters.
    for key in ("ResourceConfig", "EnableManagedSpotTraining", "StoppingCondition", "RoleArn"):
        assert v3[key] == v2[key], key
    for key in ("TrainingImage", "MetricDefinitions", "TrainingInputMode"):
        assert v3["AlgorithmSpecification"][key] == v2["AlgorithmSpecification"][key], key
    assert {k: v3["HyperParameters"][k] for k in HYPERPARAMETERS} == \
        {k: v2["HyperParameters"][k] for k in HYPERPARAMETERS} == \
        {"epochs": "15", "batch-size": "512", "learning-rate": "0.4"}
    for request in (v2, v3):
        assert request["CheckpointConfig"]["S3Uri"].startswith(f"s3://{BUCKET}/cifar10-train-keras-")

    # The differences, all of them.
    assert set(v2["HyperParameters"]) - set(v3["HyperParameters"]) == {
        "sagemaker_program", "sagemaker_submit_directory", "sagemaker_container_log_level",
        "sagemaker_job_name", "sagemaker_region", "model_dir"}
    assert set(v3["HyperParameters"]) == set(HYPERPARAMETERS)
    assert v2["HyperParameters"]["sagemaker_program"] == '"train_keras.py"'
    assert "ContainerEntrypoint" not in v2["AlgorithmSpecification"]
    assert v3["AlgorithmSpecification"]["ContainerEntrypoint"] == ["/bin/bash"]
    v2_channels = {c["ChannelName"] for c in v2["InputDataConfig"]}
    v3_channels = {c["ChannelName"] for c in v3["InputDataConfig"]}
    assert v2_channels == {"train", "validation", "eval"}
    assert v3_channels - v2_channels == {"code", "sm_drivers"}  # v2: sourcedir.tar.gz in an HP
    assert set(v2) - set(v3) == {"ProfilerConfig", "DebugHookConfig"}  # v3: no profiler
    assert set(v3) - set(v2) == set()
    # Both carry the workshop's tags (4.1's audit finds either); each names its own notebook.
    assert [tag["Key"] for tag in v3["Tags"]] == [tag["Key"] for tag in v2["Tags"]]
    assert {"Key": "workshop-notebook", "Value": "1.2"} in v2["Tags"]
    assert {"Key": "workshop-notebook", "Value": "6.0"} in v3["Tags"]
    assert set(v2["AlgorithmSpecification"]) ^ set(v3["AlgorithmSpecification"]) == {
        "EnableSageMakerMetricsTimeSeries", "ContainerEntrypoint", "ContainerArguments"}
    assert v2["OutputDataConfig"] == {"S3OutputPath": f"s3://{BUCKET}/"}
    assert v3["OutputDataConfig"] == {"S3OutputPath": f"s3://{BUCKET}/cifar10-train-keras",
                                      "CompressionType": "GZIP"}


# ------------------------------------------------------- notebook 6.0 in local mode (papermill)



def test_6_0_runs_the_jobs_with_v3_in_local_mode(local_1_2, cifar_data_dir, tmp_path):
    """train_keras.py and train_tf_mwms.py under v3's driver in their images, unchanged but for
    the TF_CONFIG fallback; train_keras_horovod.py's MPI job fails as v3's local mode makes it."""
    from workshop import RUNS_DIR

    result, notebook = run_notebook(tmp_path, "6.0", {"MODE": "local",
                                                      "DATA_DIR": str(cifar_data_dir), **LOCAL_RUN})
    text = output_text(notebook)

    # 1.2's job under v3: trained, evaluated, served, and as accurate as v2's run of it.
    v3 = result["v3"]
    assert (v3["mode"], v3["epochs"], v3["workers"]) == ("local", 2, 1)
    assert v3["eval_accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert result["v2"]["job_name"] == local_1_2[0]["job_name"]
    assert abs(v3["eval_accuracy"] - result["v2"]["eval_accuracy"]) <= 0.05
    served = served_accuracy(RUNS_DIR / v3["job_name"] / "model.tar.gz", cifar_data_dir)
    assert served == pytest.approx(v3["eval_accuracy"], abs=0.01)
    assert "train_keras.py --epochs 2 --batch-size 32 --learning-rate 0.02'" in text  # no model_dir
    assert "TF_CONFIG in the job's environment: False" in text

    # 1.5's job: v3 runs -np <per node> over both hosts; local mode names interface ethwe.
    assert result["mpi"] == {
        "instances": 2, "process_count_per_node": 1, "mpirun_hosts": "algo-1,algo-2",
        "mpirun_np": 1, "v2_np": 2, "interface": "ethwe", "interface_refused": "ethwe",
        "ranks_finished": 0, "job_failed": True}

    # 3.2's job: two workers from SM_HOSTS, in step (one weights fingerprint).
    mwms = result["mwms"]
    assert (mwms["workers"], mwms["epochs"]) == (2, 2) and mwms["eval_accuracy"] > 0.3
    assert [rank[:2] for rank in mwms["ranks"]] == [[0, 2], [1, 2]]
    assert len({rank[2] for rank in mwms["ranks"]}) == 1

    # The gaps the notebook shows by running them.
    assert result["deployed_accuracy"] is None  # no local endpoint for v3's resources
    assert re.search(r"^v3: .*sagemaker\.tensorflow", text, re.M)  # the import fails
    assert "v3's distributions: ['MPI', 'Torchrun']" in text  # no MWMS, no smdistributed
    assert "tensorflow-training:2.12-gpu-py310" in text  # image_uris for "local_cpu"
    assert "only supported for mlflow models" in text
    print(f"v2 1.2 local: {result['v2']['wall_seconds']} s, v3: {v3['wall_seconds']} s")
