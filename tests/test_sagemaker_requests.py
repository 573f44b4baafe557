"""Host mode through the real SageMaker SDK against a real moto_server: what the SDK sends.

Moto accepts any image, instance type or role and invents job status and metrics, so these tests
assert on the CreateTrainingJob request as stored (describe_training_job) and on the S3 objects
the SDK uploaded, never on the job's status. Moto replaces MetricDefinitions with its own, so
those are read from the request itself, captured by a botocore event hook as it is sent.
"""

import io
import json
import re
import shutil
import tarfile

import boto3
import pytest
from aws_fixtures import *  # noqa: F401,F403 - moto_server, sdk_offline

from workshop import dataset, jobs

BUCKET = "workshop-requests-test"
ROLE = "arn:aws:iam::123456789012:role/SageMakerWorkshopRole"
REGION = "us-east-1"
HYPERPARAMETERS = {"epochs": 20, "batch-size": 128, "learning-rate": 0.05}

@pytest.fixture(scope="module")
def s3_channels(moto_server, cifar_data_dir, tmp_path_factory):
    """The fixture data uploaded as 1.0 does in host mode: {split: s3 URI}."""
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    data_dir = tmp_path_factory.mktemp("host-data") / "cifar10"
    shutil.copytree(cifar_data_dir, data_dir)
    channels = dataset.upload_channels(data_dir, jobs.make_session("host", bucket=BUCKET), BUCKET)
    assert dataset.read_channels(data_dir) == channels  # recorded for the training notebooks
    assert jobs.data_channels("host", data_dir) == channels
    return channels


def test_data_upload_puts_every_shard_and_manifest_in_s3(s3_channels, cifar_data_dir):
    s3 = boto3.client("s3")
    for split, uri in s3_channels.items():
        assert uri == f"s3://{BUCKET}/cifar10/{split}"
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"cifar10/{split}/")["Contents"]
        uploaded = {o["Key"].rsplit("/", 1)[1]: o["Size"] for o in listed}
        local = {p.name: p.stat().st_size for p in (cifar_data_dir / split).iterdir()}
        assert uploaded == local


def submit(s3_channels, sent=None, **kwargs):
    """make_estimator('host', ...) + run(wait=False); returns describe_training_job.

    ``sent``, if a dict, receives the CreateTrainingJob parameters as the SDK sent them.
    """
    sent = {} if sent is None else sent
    kwargs.setdefault("framework_version", "2.19")
    kwargs.setdefault("py_version", "py312")
    estimator = jobs.make_estimator("host", "train_keras.py", HYPERPARAMETERS, role=ROLE,
                                    bucket=BUCKET, **kwargs)
    client = estimator.sagemaker_session.sagemaker_client
    client.meta.events.register("provide-client-params.sagemaker.CreateTrainingJob",
                                lambda params, **_: sent.update(params))
    result = jobs.run(estimator, s3_channels, "host", wait=False)
    assert result.mode == "host" and result.model_artifact is None
    return client.describe_training_job(TrainingJobName=result.job_name)


def image_for(version, py_version, instance_type):
    from sagemaker import image_uris

    return image_uris.retrieve("tensorflow", region=REGION, version=version,
                               py_version=py_version, instance_type=instance_type,
                               image_scope="training")


def s3_object(uri):
    bucket, key = uri[len("s3://"):].split("/", 1)
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def test_host_job_request(s3_channels):
    sent = {}
    job = submit(s3_channels, sent, use_spot=True, max_run=3600, max_wait=7200)

    assert job["AlgorithmSpecification"]["TrainingImage"] == \
        image_for("2.19", "py312", "ml.p3.2xlarge")
    assert job["ResourceConfig"]["InstanceType"] == "ml.p3.2xlarge"
    assert job["ResourceConfig"]["InstanceCount"] == 1
    assert job["RoleArn"] == ROLE
    hps = job["HyperParameters"]
    assert hps["sagemaker_program"] == '"train_keras.py"'
    assert {k: json.loads(hps[k]) for k in HYPERPARAMETERS} == HYPERPARAMETERS
    assert hps["epochs"] == "20" and hps["learning-rate"] == "0.05"  # JSON-encoded strings
    assert sent["AlgorithmSpecification"]["MetricDefinitions"] == jobs.METRIC_DEFINITIONS
    assert sent["ProfilerConfig"] == {"DisableProfiler": True}
    assert re.fullmatch(rf"s3://{BUCKET}/cifar10-train-keras-[\d-]+/checkpoints",
                        job["CheckpointConfig"]["S3Uri"])
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
                for c in job["InputDataConfig"]}
    assert channels == s3_channels

    source = json.loads(hps["sagemaker_submit_directory"])
    assert source.startswith(f"s3://{BUCKET}/") and source.endswith("sourcedir.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(s3_object(source))) as tar:
        names = tar.getnames()
    assert "train_keras.py" in names and "cifar/data.py" in names


def test_mpi_request(s3_channels):
    job = submit(s3_channels, framework_version="2.12", py_version="py310", instance_count=2,
                 distribution={"mpi": {"enabled": True, "processes_per_host": 4}})

    hps = job["HyperParameters"]
    assert job["AlgorithmSpecification"]["TrainingImage"] == \
        image_for("2.12", "py310", "ml.p3.2xlarge")
    assert job["ResourceConfig"]["InstanceCount"] == 2
    assert hps["sagemaker_mpi_enabled"] == "true"
    assert hps["sagemaker_mpi_num_of_processes_per_host"] == "4"
    assert hps["model_dir"] == '"/opt/ml/model"'  # the SDK's choice under MPI


def test_smdistributed_dataparallel_request(s3_channels):
    job = submit(s3_channels, framework_version="2.11", py_version="py39", instance_count=2,
                 instance_type="ml.p3.16xlarge",
                 distribution={"smdistributed": {"dataparallel": {"enabled": True}}})

    hps = job["HyperParameters"]
    assert job["AlgorithmSpecification"]["TrainingImage"] == \
        image_for("2.11", "py39", "ml.p3.16xlarge")
    assert job["ResourceConfig"]["InstanceType"] == "ml.p3.16xlarge"
    assert hps["sagemaker_distributed_dataparallel_enabled"] == "true"
    assert hps["sagemaker_instance_type"] == '"ml.p3.16xlarge"'


def test_multi_worker_mirrored_strategy_request(s3_channels):
    job = submit(s3_channels, instance_count=2,
                 distribution={"multi_worker_mirrored_strategy": {"enabled": True}})

    assert job["HyperParameters"]["sagemaker_multi_worker_mirrored_strategy_enabled"] == "true"
    assert job["ResourceConfig"]["InstanceCount"] == 2


def test_smdistributed_refuses_tf_2_12_with_the_sdks_message(moto_server):
    with pytest.raises(ValueError, match="not supported by smdataparallel"):
        jobs.make_estimator("host", "train_keras.py", HYPERPARAMETERS, framework_version="2.12",
                            py_version="py310", instance_type="ml.p3.16xlarge", role=ROLE,
                            bucket=BUCKET, distribution={"smdistributed": {
                                "dataparallel": {"enabled": True}}})


def test_spot_needs_max_wait_at_least_max_run(moto_server):
    with pytest.raises(ValueError, match="max_wait .* must be >= max_run"):
        jobs.make_estimator("host", "train_keras.py", HYPERPARAMETERS, role=ROLE, bucket=BUCKET,
                            use_spot=True, max_run=3600, max_wait=600)


# --------------------------------------------------------------------- channels and modes


def test_host_data_channels_need_the_uploaded_uris(tmp_path):
    with pytest.raises(FileNotFoundError, match="run 1.0 with MODE='host' first"):
        jobs.data_channels("host", tmp_path)
    uris = {split: f"s3://b/cifar10/{split}" for split in ("eval", "train", "validation")}
    (tmp_path / "s3_channels.json").write_text(json.dumps(uris))
    assert jobs.data_channels("host", tmp_path) == uris


def test_local_data_channels_are_file_uris(tmp_path):
    with pytest.raises(FileNotFoundError, match="run 1.0 first"):
        jobs.data_channels("process", tmp_path)
    for split in ("train", "validation", "eval"):
        (tmp_path / split).mkdir()
    assert jobs.data_channels("local", tmp_path)["train"] == f"file://{tmp_path / 'train'}"


def test_local_mode_without_docker_says_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker on it
    with pytest.raises(jobs.ModeUnavailable, match="needs Docker.*MODE='process'"):
        jobs.check_mode_available("local")


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="MODE must be one of"):
        jobs.make_estimator("cloud", "train_keras.py", {})


# ------------------------------------------------------------------------ metric regexes

EPOCH_LINE = ("epoch 3/20 - loss: 1.2345 - accuracy: 0.5678 - val_loss: 1.1111 - "
              "val_accuracy: 0.6000 - lr: 0.050000 - time: 12.3s - images/s: 3250.1")
EVAL_LINE = "eval - loss: 0.4567 - accuracy: 0.8512"


def metric(name, line):
    (definition,) = [d for d in jobs.METRIC_DEFINITIONS if d["Name"] == name]
    found = re.search(definition["Regex"], line)
    return float(found.group(1)) if found else None


@pytest.mark.parametrize("name, value", [
    ("train:loss", 1.2345), ("train:accuracy", 0.5678), ("validation:loss", 1.1111),
    ("validation:accuracy", 0.6), ("train:epoch_seconds", 12.3),
    ("train:images_per_sec", 3250.1)])
def test_epoch_metrics(name, value):
    assert metric(name, EPOCH_LINE) == value
    assert metric(name, "[algo-1,rank 0] " + EPOCH_LINE) == value  # process-mode prefix
    assert metric(name, EVAL_LINE) is None


@pytest.mark.parametrize("name, value", [("eval:loss", 0.4567), ("eval:accuracy", 0.8512)])
def test_eval_metrics(name, value):
    assert metric(name, EVAL_LINE) == value
    assert metric(name, EPOCH_LINE) is None


def test_train_metrics_do_not_read_validation_values():
    line = "epoch 1/2 - val_loss: 9.0 - val_accuracy: 0.9"  # no training values on it
    assert metric("train:loss", line) is None and metric("train:accuracy", line) is None


def test_metric_names_are_the_documented_ones():
    assert [d["Name"] for d in jobs.METRIC_DEFINITIONS] == [
        "train:loss", "train:accuracy", "validation:loss", "validation:accuracy",
        "train:images_per_sec", "train:epoch_seconds", "eval:loss", "eval:accuracy"]


def test_resume_from_a_host_job_reuses_its_checkpoint_location(s3_channels):
    from workshop import resume

    with_checkpoints = submit(s3_channels)
    session = jobs.make_session("host", bucket=BUCKET)
    uri = resume.checkpoint_to_resume("host", with_checkpoints["TrainingJobName"], session)
    assert uri == with_checkpoints["CheckpointConfig"]["S3Uri"]
    assert uri.startswith(f"s3://{BUCKET}/") and uri.endswith("/checkpoints")

    without = submit(s3_channels, checkpoint=False)
    with pytest.raises(resume.CannotResume, match="had no CheckpointConfig"):
        resume.checkpoint_to_resume("host", without["TrainingJobName"], session)


def test_local_mode_says_it_cannot_resume():
    from workshop import resume

    with pytest.raises(resume.CannotResume, match="refuses checkpoint_s3_uri in local mode"):
        resume.checkpoint_to_resume("local", "any-job")
