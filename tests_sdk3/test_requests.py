"""What SDK v3 sends to SageMaker for 6.0's jobs, against a real moto_server: the notebook's own
cells build the ModelTrainer (MODE="host"), and each CreateTrainingJob request is captured as it
is sent (moto drops Environment and rewrites MetricDefinitions in what it stores). Requests go to
$SDK3_REQUESTS_OUT/<job>.json when set: tests/test_sdk3.py compares them with v2's."""

import json
import os
import re

import boto3
import pytest
from conftest import BUCKET, ROLE, run_cells

from workshop import PHASE0_DIR, jobs

REGISTRY = "763104351884.dkr.ecr.us-east-1.amazonaws.com/"
IMAGE_2_21_GPU = REGISTRY + "tensorflow-training:2.21-gpu-py312-cu129-amzn2023-sagemaker-v1"
IMAGE_2_12_GPU = "763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-training:2.12-gpu-py310"
SM_DRIVERS = "/opt/ml/input/data/sm_drivers"
HOST = {"MODE": "host", "ROLE_ARN": ROLE, "S3_BUCKET": BUCKET, "USE_SPOT": True,
        "MAX_RUN": 3600}


@pytest.fixture
def notebook(moto_server, host_data_dir, monkeypatch):
    """6.0's namespace after its setup cell, in host mode, in the notebooks' folder."""
    monkeypatch.chdir(PHASE0_DIR)  # SourceCode(source_dir="src") is relative, as in Jupyter
    return run_cells({}, "sdk_version.require(3)", DATA_DIR=str(host_data_dir), **HOST)


def submit(namespace, trainer_name):
    """trainer.train(inputs, wait=False) as 6.0's train cell calls it; the request as sent."""
    trainer = namespace[trainer_name]
    inputs = [namespace["InputData"](channel_name=split, data_source=source) for split, source
              in namespace["sdk3"].channels("host", namespace["data_dir"]).items()]
    sent = {}
    trainer.sagemaker_session.boto_session.events.register(
        "provide-client-params.sagemaker.CreateTrainingJob",
        lambda params, **_: sent.update(params))
    trainer.train(input_data_config=inputs, wait=False)
    if os.environ.get("SDK3_REQUESTS_OUT"):
        path = os.path.join(os.environ["SDK3_REQUESTS_OUT"], f"{trainer.base_job_name}.json")
        with open(path, "w") as f:
            json.dump(sent, f, indent=1, default=str)
    return sent


def channels(request):
    return {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
            for c in request["InputDataConfig"]}


def s3_files(uri):
    """{relative name: bytes} of the objects under an S3 prefix."""
    bucket, prefix = uri[len("s3://"):].split("/", 1)
    s3 = boto3.client("s3")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    return {o["Key"][len(prefix):].lstrip("/"): s3.get_object(Bucket=bucket, Key=o["Key"])[
        "Body"].read() for o in listed}


def test_1_2_job_request(notebook, host_data_dir):
    run_cells(notebook, "trainer = ModelTrainer(")
    request = submit(notebook, "trainer")

    spec = request["AlgorithmSpecification"]
    assert spec["TrainingImage"] == IMAGE_2_21_GPU  # INSTANCE_TYPE ml.g5.xlarge: one GPU
    assert spec["ContainerEntrypoint"] == ["/bin/bash"]
    assert spec["ContainerArguments"] == [
        "-c", f"chmod +x {SM_DRIVERS}/sm_train.sh && {SM_DRIVERS}/sm_train.sh"]
    assert spec["MetricDefinitions"] == jobs.METRIC_DEFINITIONS
    # the user's hyperparameters only, json.dumps'ed (strings would go as they are)
    assert request["HyperParameters"] == {"epochs": "15", "batch-size": "512",
                                          "learning-rate": "0.4"}
    assert request["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    assert {"Key": "workshop-notebook", "Value": "6.0"} in request["Tags"]  # 4.1's audit finds it
    assert request["ResourceConfig"]["InstanceCount"] == 1
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600,
                                            "MaxWaitTimeInSeconds": 7200}
    assert re.fullmatch(rf"s3://{BUCKET}/cifar10-train-keras-[\d-]+/checkpoints",
                        request["CheckpointConfig"]["S3Uri"])
    assert request["RoleArn"] == ROLE

    found = channels(request)
    job = request["TrainingJobName"]
    assert {k: found[k] for k in ("train", "validation", "eval")} == json.loads(
        (host_data_dir / "s3_channels.json").read_text())
    assert found["code"] == f"s3://{BUCKET}/cifar10-train-keras/{job}/input/code"
    assert found["sm_drivers"] == f"s3://{BUCKET}/cifar10-train-keras/{job}/input/sm_drivers"
    code = s3_files(found["code"])  # src/ as it is: the entry point and the cifar package
    assert {"train_keras.py", "cifar/data.py", "cifar/sagemaker_args.py"} <= set(code)
    drivers = s3_files(found["sm_drivers"])
    assert "basic_script_driver.py" in drivers["sm_train.sh"].decode()
    assert json.loads(drivers["sourcecode.json"])["entry_script"] == "train_keras.py"


def test_1_5_mpi_job_request(notebook):
    run_cells(notebook, "trainer = ModelTrainer(", "horovod = ModelTrainer(")
    request = submit(notebook, "horovod")

    assert request["AlgorithmSpecification"]["TrainingImage"] == IMAGE_2_12_GPU
    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert request["HyperParameters"] == {"epochs": "15", "batch-size": "512",
                                          "learning-rate": "0.4"}  # no sagemaker_mpi_*
    drivers = s3_files(channels(request)["sm_drivers"])
    assert "distributed_drivers/mpi_driver.py" in drivers["sm_train.sh"].decode()
    assert json.loads(drivers["distributed.json"])["process_count_per_node"] == 1
    # the driver builds `mpirun --host algo-1,algo-2 -np <process_count_per_node>`:
    driver = drivers["distributed_drivers/mpi_driver.py"].decode()
    assert "num_processes=process_count," in driver and "host_count" in driver


def test_3_2_mwms_job_request(notebook):
    run_cells(notebook, "trainer = ModelTrainer(", "mwms = ModelTrainer(")
    request = submit(notebook, "mwms")

    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert request["HyperParameters"] == {"epochs": "15", "batch-size": "512",
                                          "learning-rate": "0.4"}
    drivers = s3_files(channels(request)["sm_drivers"])
    assert "basic_script_driver.py" in drivers["sm_train.sh"].decode()  # on every host
    assert "TF_CONFIG" not in json.dumps(request) + "".join(
        d.decode(errors="ignore") for d in drivers.values())


def test_deploy_requests(notebook, moto_server, monkeypatch):
    """6.0's deploy cell, whole: Model, EndpointConfig, Endpoint, invoke, and all deleted."""
    run_cells(notebook, "trainer = ModelTrainer(")
    submit(notebook, "trainer")
    images = notebook["sdk3"].eval_images(notebook["data_dir"], count=16)[1]
    predictions = [{"class_id": int(label), "probabilities": [0.1] * 10} for label in images]
    seed_invoke_result(moto_server, {"predictions": predictions})
    sent = record_calls(monkeypatch)
    run_cells(notebook, "import inspect", 'name_from_base("cifar10-v3")')

    name = sent["CreateModel"]["ModelName"]
    assert name.startswith("cifar10-v3-")
    container = sent["CreateModel"]["PrimaryContainer"]
    assert container["Image"] == (
        REGISTRY + "tensorflow-inference:2.20-cpu-py312-amzn2023-sagemaker-v1")
    assert container["ModelDataUrl"] == notebook["trainer"]._latest_training_job.model_artifacts \
        .s3_model_artifacts
    assert sent["CreateModel"]["ExecutionRoleArn"] == ROLE
    assert sent["CreateEndpointConfig"]["ProductionVariants"] == [{
        "VariantName": "AllTraffic", "ModelName": name, "InstanceType": "ml.m5.large",
        "InitialInstanceCount": 1}]
    assert {k: sent["CreateEndpoint"][k] for k in ("EndpointName", "EndpointConfigName")} == {
        "EndpointName": name, "EndpointConfigName": name}
    for operation in ("CreateModel", "CreateEndpointConfig", "CreateEndpoint"):  # audit finds them
        assert {"Key": "workshop-notebook", "Value": "6.0"} in sent[operation]["Tags"], operation
    body = json.loads(sent["InvokeEndpoint"]["Body"])
    assert sent["InvokeEndpoint"]["ContentType"] == "application/json"
    assert len(body["instances"]) == 16 and len(body["instances"][0]) == 32  # 16 x 32x32x3
    assert {k: sent[k] for k in ("DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel")} == {
        "DeleteEndpoint": {"EndpointName": name}, "DeleteEndpointConfig": {
            "EndpointConfigName": name}, "DeleteModel": {"ModelName": name}}
    assert notebook["deployed"] == 1.0  # the seeded predictions are the labels


def record_calls(monkeypatch):
    """{operation: first params} of every AWS call from any client (v3's resources make their
    own boto3 session when given none). moto's Describe{Model,EndpointConfig,Endpoint} answer
    unset structures (VpcConfig, DataCaptureConfig) as {}, which real SageMaker omits and v3's
    resource classes refuse: they are dropped from moto's answers."""
    import botocore.client

    sent, make_call = {}, botocore.client.BaseClient._make_api_call

    def recording(client, operation, params):
        sent.setdefault(operation, params)
        response = make_call(client, operation, params)
        if operation in ("DescribeModel", "DescribeEndpointConfig", "DescribeEndpoint"):
            response = {key: value for key, value in response.items() if value != {}}
        return response

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    return sent


def seed_invoke_result(url, body):
    """moto answers InvokeEndpoint with results queued through its API."""
    import urllib.request

    payload = json.dumps({"account_id": "123456789012", "region": "us-east-1", "results": [
        {"Body": json.dumps(body), "ContentType": "application/json", "InvokedProductionVariant":
         "AllTraffic", "CustomAttributes": ""}]}).encode()
    request = urllib.request.Request(url + "/moto-api/static/sagemaker/endpoint-results",
                                     data=payload, headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request).close()


