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
from notebook_cells import run_up_to_estimator

from workshop import (
    PHASE0_DIR,
    SRC_DIR,
    budget,
    compare_runs,
    dataset,
    environment,
    images,
    instances,
    jobs,
    records,
)
from workshop.entry_points import ENTRY_POINTS

BUCKET = "workshop-requests-test"
ROLE = "arn:aws:iam::123456789012:role/SageMakerWorkshopRole"
REGION = "us-east-1"
HYPERPARAMETERS = {"epochs": 15, "batch-size": 512, "learning-rate": 0.4}

@pytest.fixture(scope="module")
def s3_channels(moto_server, cifar_data_dir, tmp_path_factory):
    """The fixture data uploaded as 1.0 does in host mode: {split: s3 URI}."""
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    data_dir = tmp_path_factory.mktemp("host-data") / "cifar10"
    shutil.copytree(cifar_data_dir, data_dir)
    channels = dataset.upload_channels(data_dir, jobs.session_for("host", bucket=BUCKET), BUCKET)
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


def submit(s3_channels, script="train_keras.py", sent=None, estimator=None, **kwargs):
    """estimator (default: jobs.workshop_estimator('host', script, ...)).fit(wait=False);
    returns describe_training_job.

    ``sent``, if a dict, receives the CreateTrainingJob parameters as the SDK sent them.
    """
    sent = {} if sent is None else sent
    kwargs.setdefault("hyperparameters", HYPERPARAMETERS)
    estimator = estimator or jobs.workshop_estimator("host", script, role_arn=ROLE, bucket=BUCKET,
                                                     **kwargs)
    client = estimator.sagemaker_session.sagemaker_client
    client.meta.events.register("provide-client-params.sagemaker.CreateTrainingJob",
                                lambda params, **_: sent.update(params))
    estimator.fit(s3_channels, wait=False)
    return client.describe_training_job(TrainingJobName=estimator.latest_training_job.name)


def image_for(version, py_version, instance_type):
    """The image a job of that TF version should name: the SDK's own for the versions it knows;
    for 2.21, which it does not, AWS's tag (GPU build on a GPU type) in the region's registry."""
    from sagemaker import image_uris

    if version == "2.21":
        gpu = instances.gpus(instance_type, REGION) > 0
        return images.uri(images.TRAINING_2_21_GPU if gpu else images.TRAINING_2_21_CPU, REGION)
    return image_uris.retrieve("tensorflow", region=REGION, version=version,
                               py_version=py_version, instance_type=instance_type,
                               image_scope="training")


def s3_object(uri):
    bucket, key = uri[len("s3://"):].split("/", 1)
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def test_host_job_request(s3_channels):
    sent = {}
    job = submit(s3_channels, sent=sent, use_spot=True, max_run=3600)

    assert job["AlgorithmSpecification"]["TrainingImage"] == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/"
        "tensorflow-training:2.21-gpu-py312-cu129-amzn2023-sagemaker-v1")  # the default: a GPU
    assert job["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    assert job["ResourceConfig"]["InstanceCount"] == 1
    assert job["RoleArn"] == ROLE
    hps = job["HyperParameters"]
    assert hps["sagemaker_program"] == '"train_keras.py"'
    assert {k: json.loads(hps[k]) for k in HYPERPARAMETERS} == HYPERPARAMETERS
    assert hps["epochs"] == "15" and hps["learning-rate"] == "0.4"  # JSON-encoded strings
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
    job = submit(s3_channels, "train_keras_horovod.py", instance_count=2, processes_per_host=4)

    hps = job["HyperParameters"]
    assert job["AlgorithmSpecification"]["TrainingImage"] == \
        image_for("2.12", "py310", "ml.g5.xlarge")
    assert job["ResourceConfig"]["InstanceCount"] == 2
    assert hps["sagemaker_mpi_enabled"] == "true"
    assert hps["sagemaker_mpi_num_of_processes_per_host"] == "4"
    assert hps["model_dir"] == '"/opt/ml/model"'  # the SDK's choice under MPI


def test_smdistributed_dataparallel_request(s3_channels):
    job = submit(s3_channels, "train_tf_ddp.py", instance_count=2,
                 instance_type="ml.p4d.24xlarge")

    hps = job["HyperParameters"]
    assert job["AlgorithmSpecification"]["TrainingImage"] == \
        image_for("2.11", "py39", "ml.p4d.24xlarge")
    assert job["ResourceConfig"]["InstanceType"] == "ml.p4d.24xlarge"
    assert hps["sagemaker_distributed_dataparallel_enabled"] == "true"
    assert hps["sagemaker_instance_type"] == '"ml.p4d.24xlarge"'


def test_multi_worker_mirrored_strategy_request(s3_channels):
    job = submit(s3_channels, "train_tf_mwms.py", instance_count=2)

    assert job["HyperParameters"]["sagemaker_multi_worker_mirrored_strategy_enabled"] == "true"
    assert job["ResourceConfig"]["InstanceCount"] == 2


def test_smdistributed_refuses_tf_2_12_with_the_sdks_message(moto_server):
    from sagemaker.tensorflow import TensorFlow

    with pytest.raises(ValueError, match="not supported by smdataparallel"):
        TensorFlow(entry_point="train_tf_ddp.py", source_dir=str(SRC_DIR),
                   framework_version="2.12", py_version="py310",
                   instance_type="ml.p4d.24xlarge", instance_count=2, role=ROLE,
                   sagemaker_session=jobs.session_for("host", BUCKET),
                   distribution={"smdistributed": {"dataparallel": {"enabled": True}}})


def test_spot_and_checkpoints_are_host_mode_only(moto_server):
    """Local mode refuses both (the SDK raises); process mode ignores spot."""
    session = jobs.session_for("local")
    assert jobs.spot_for("host", True) and not jobs.spot_for("host", False)
    assert not jobs.spot_for("local", True) and not jobs.spot_for("process", True)
    assert jobs.checkpoint_uri_for("local", session, BUCKET, "cifar10-train-keras") is None
    assert jobs.checkpoint_uri_for("process", session, "", "x").startswith("file://")


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
    with pytest.raises(environment.ModeUnavailable, match="needs Docker.*MODE='process'"):
        environment.check_mode_available("local")


@pytest.mark.parametrize("helper, arguments", [
    (jobs.session_for, ()), (jobs.instance_type_for, ("ml.g5.xlarge",)),
    (jobs.output_path_for, ("",)), (jobs.spot_for, (True,))])
def test_unknown_mode_is_refused(helper, arguments):
    with pytest.raises(ValueError, match="MODE must be one of"):
        helper("cloud", *arguments)


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


# ------------------------------------------------- the notebooks' literal Estimator cells

JOB_TIME = re.compile(r"(cifar10-[a-z-]+?)-\d{4}(-\d{2}){5}-\d{3}")


def comparable(request):
    """A CreateTrainingJob request with its per-job timestamps taken out."""
    return json.loads(JOB_TIME.sub(r"\1-<time>", json.dumps(request, sort_keys=True,
                                                            default=str)))


@pytest.mark.parametrize("use_spot", [False, True], ids=["on-demand", "spot"])
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e.notebook)
def test_notebook_estimator_cell_sends_the_workshop_request(entry, use_spot, s3_channels,
                                                            monkeypatch):
    """The notebook's Estimator cell, run as written in host mode, sends what the tests above
    assert of jobs.workshop_estimator: image, instances, hyperparameters, source, metrics,
    checkpoint, spot, channels, distribution."""
    monkeypatch.chdir(PHASE0_DIR)  # source_dir="src" is relative to the notebooks' folder
    cell = run_up_to_estimator(entry.notebook, MODE="host", ROLE_ARN=ROLE, S3_BUCKET=BUCKET,
                               USE_SPOT=use_spot)
    from_notebook, from_workshop = {}, {}
    job = submit(s3_channels, sent=from_notebook, estimator=cell["estimator"])
    submit(s3_channels, entry.script, sent=from_workshop,
           hyperparameters={"epochs": cell["EPOCHS"], "batch-size": cell["BATCH_SIZE"],
                            "learning-rate": cell["LEARNING_RATE"]},
           instance_type=cell["INSTANCE_TYPE"], instance_count=cell["INSTANCE_COUNT"],
           processes_per_host=cell.get("PROCESSES_PER_HOST", 0), use_spot=use_spot,
           max_run=cell["MAX_RUN"])

    assert comparable(from_notebook) == comparable(from_workshop)
    assert job["AlgorithmSpecification"]["TrainingImage"] == image_for(
        entry.framework_version, entry.py_version, cell["INSTANCE_TYPE"])
    assert job["HyperParameters"]["sagemaker_program"] == f'"{entry.script}"'
    assert from_notebook["AlgorithmSpecification"]["MetricDefinitions"] == jobs.METRIC_DEFINITIONS
    assert job.get("EnableManagedSpotTraining", False) is use_spot
    assert job["CheckpointConfig"]["S3Uri"].startswith(f"s3://{BUCKET}/{entry.base_job_name}-")
    flags = {"mpi": "sagemaker_mpi_enabled",
             "smdistributed": "sagemaker_distributed_dataparallel_enabled",
             "multi_worker_mirrored_strategy": "sagemaker_multi_worker_mirrored_strategy_enabled"}
    for kind, flag in flags.items():
        assert (job["HyperParameters"].get(flag) == "true") is (entry.distribution == kind)


# ------------------------------------------- a host job's result, its record and its cost


def tar_gz(files):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_host_result_is_collected_recorded_and_costed(s3_channels, tmp_path):
    """result_of() on a host job: artifacts from the job's S3 output, metrics.json, SageMaker's
    times; save_result() records the run; 5.0's cost arithmetic on that record.

    Moto's DescribeTrainingJob has no TrainingTimeInSeconds/BillableTimeInSeconds, so a hook adds
    what a spot job that trained 1000 s and was billed 300 s would report.
    """
    estimator = jobs.workshop_estimator("host", "train_tf_ddp.py", HYPERPARAMETERS,
                                        instance_type="ml.p4d.24xlarge", instance_count=2,
                                        role_arn=ROLE, bucket=BUCKET, use_spot=True)
    client = estimator.sagemaker_session.sagemaker_client
    client.meta.events.register(
        "after-call.sagemaker.DescribeTrainingJob",
        lambda parsed, **_: parsed.update(TrainingTimeInSeconds=1000, BillableTimeInSeconds=300))
    estimator.fit(s3_channels, wait=False)
    metrics = {"eval_accuracy": 0.5, "epochs": 2, "workers": 16, "images_per_sec": 900.0,
               "epoch_seconds": 3.0, "history": [{"epoch": 1, "loss": 2.0}]}
    bucket, key = estimator.model_data[len("s3://"):].split("/", 1)
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key=key, Body=tar_gz({"1/saved_model.pb": b"model"}))
    s3.put_object(Bucket=bucket, Key=key.replace("model.tar.gz", "output.tar.gz"),
                  Body=tar_gz({"metrics.json": json.dumps(metrics).encode()}))

    result = jobs.result_of(estimator, runs_dir=tmp_path)

    job_dir = tmp_path / result.job_name
    assert result.mode == "host" and result.model_artifact == job_dir / "model.tar.gz"
    assert result.model_artifact.exists() and result.output_dir == job_dir / "output"
    assert result.metrics == metrics and result.history == metrics["history"]
    assert (result.instance_type, result.instance_count, result.spot) == (
        "ml.p4d.24xlarge", 2, True)
    assert (result.training_seconds, result.billable_seconds) == (1000, 300)

    records.save_result("3.1", result, runs_dir=tmp_path)
    (record,) = records.load_runs(tmp_path)
    assert record["notebook"] == "3.1" and record["job_name"] == result.job_name
    prices = {"region": REGION, "spot": "test", "prices": [
        {"instance_type": "ml.p4d.24xlarge", "usage": "training", "usd_per_hour": 36.0,
         "source": "test", "source_date": "2026-11-30", "confidence": "test"}]}
    # 1000 s x 2 instances x $36/h = $20 on demand; billed 300 s x 2 x $36/h = $6
    assert compare_runs.cost_estimate(record, prices) == {
        "usd_per_hour": 36.0, "on_demand_usd": 20.0, "billed_usd": 6.0}
    assert compare_runs.table([record], prices).iloc[0]["billed_usd"] == 6.0
    assert compare_runs.cost_estimate(record, {**prices, "prices": []}) is None
    assert compare_runs.cost_estimate({**record, "mode": "process"}, prices) is None


def test_a_price_table_needs_its_date_and_source(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"region": REGION, "spot": "x", "prices": [
        {"instance_type": "ml.g5.xlarge", "usage": "training", "usd_per_hour": 1.0}]}))
    with pytest.raises(ValueError, match="needs its source and the date"):
        budget.load_prices(path)
    shipped = budget.load_prices()
    assert shipped["region"] == REGION
    assert all(e["source"] and e["source_date"] for e in shipped["prices"] if e["usd_per_hour"])


def test_resume_from_a_host_job_reuses_its_checkpoint_location(s3_channels):
    from workshop import resume

    with_checkpoints = submit(s3_channels)
    session = jobs.session_for("host", bucket=BUCKET)
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
