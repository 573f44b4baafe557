"""Host-mode deployment through the real SageMaker SDK against a real moto_server: what 4.1 sends.

Moto accepts any image or instance type and its InvokeEndpoint only replays canned bodies, so
these tests assert on the requests as the SDK sent them (captured by a botocore event hook) and
on what is left afterwards, never on predictions.
"""

import tarfile

import boto3
import pytest
from aws_fixtures import *  # noqa: F401,F403 - moto_server, sdk_offline

from workshop import deploy, jobs

BUCKET = "workshop-deploy-test"
ROLE = "arn:aws:iam::123456789012:role/SageMakerWorkshopRole"
REGION = "us-east-1"
# 4.1 waits for the endpoint; moto reports it InService only on the second describe and the SDK
# polls every 30 s, so the tests don't wait (the requests sent are the same).
WAIT = False


@pytest.fixture(scope="module")
def artifact(moto_server, tmp_path_factory):
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    folder = tmp_path_factory.mktemp("artifact")
    (folder / "saved_model.pb").write_bytes(b"not read by moto")
    path = folder / "model.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder / "saved_model.pb", arcname="1/saved_model.pb")
    return path


def host_model(artifact):
    """4.1's model cell in host mode; returns (model, requests sent: [(operation, params)])."""
    from sagemaker.tensorflow import TensorFlowModel

    session = jobs.session_for("host", bucket=BUCKET)
    sent = []
    session.sagemaker_client.meta.events.register(
        "provide-client-params.sagemaker", lambda params, model, **_: sent.append(
            (model.name, params)))
    model = TensorFlowModel(model_data=deploy.model_data_for("host", artifact, session, BUCKET),
                            framework_version="2.19", role=ROLE, sagemaker_session=session)
    return model, sent


def inference_image(instance_type):
    from sagemaker import image_uris

    return image_uris.retrieve("tensorflow", region=REGION, version="2.19",
                               instance_type=instance_type, image_scope="inference")


def requests_named(sent, operation):
    return [params for name, params in sent if name == operation]


def test_model_data_is_uploaded_to_s3(artifact):
    session = jobs.session_for("host", bucket=BUCKET)
    uri = deploy.model_data_for("host", artifact, session, BUCKET)
    assert uri.startswith(f"s3://{BUCKET}/cifar10-model-") and uri.endswith("/model.tar.gz")
    key = uri[len(f"s3://{BUCKET}/"):]
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body == artifact.read_bytes()


def test_real_time_endpoint_requests_and_cleanup(artifact, capsys):
    model, sent = host_model(artifact)
    predictor = None
    try:
        predictor = model.deploy(initial_instance_count=1,
                                 instance_type=deploy.instance_type_for("host", "ml.m5.large"),
                                 serverless_inference_config=deploy.serverless_config(False),
                                 wait=WAIT)
    finally:
        deploy.shut_down("host", predictor, model)

    (create_model,) = requests_named(sent, "CreateModel")
    container = create_model["PrimaryContainer"]
    assert container["Image"] == inference_image("ml.m5.large")
    assert container["Image"].endswith("/tensorflow-inference:2.19-cpu")
    assert container["ModelDataUrl"] == model.model_data
    assert container["ModelDataUrl"].startswith(f"s3://{BUCKET}/")
    assert container["Environment"] == {}  # no entry point: the container's defaults
    assert create_model["ExecutionRoleArn"] == ROLE
    (config,) = requests_named(sent, "CreateEndpointConfig")
    (variant,) = config["ProductionVariants"]
    assert variant["ModelName"] == create_model["ModelName"]
    assert variant["InstanceType"] == "ml.m5.large" and variant["InitialInstanceCount"] == 1
    assert "ServerlessConfig" not in variant
    (endpoint,) = requests_named(sent, "CreateEndpoint")
    assert endpoint["EndpointConfigName"] == config["EndpointConfigName"]

    assert requests_named(sent, "DeleteEndpoint") == [{"EndpointName": endpoint["EndpointName"]}]
    assert requests_named(sent, "DeleteEndpointConfig") == [
        {"EndpointConfigName": config["EndpointConfigName"]}]
    assert requests_named(sent, "DeleteModel") == [{"ModelName": create_model["ModelName"]}]
    client = boto3.client("sagemaker")
    assert endpoint["EndpointName"] not in [
        e["EndpointName"] for e in client.list_endpoints()["Endpoints"]]
    assert create_model["ModelName"] not in [m["ModelName"] for m in client.list_models()["Models"]]
    printed = capsys.readouterr().out
    assert "endpoint cost: 1 x ml.m5.large for" in printed and "instance-hours" in printed


def test_serverless_endpoint_requests(artifact):
    model, sent = host_model(artifact)
    predictor = None
    try:
        predictor = model.deploy(
            initial_instance_count=1,
            instance_type=deploy.instance_type_for("host", "ml.m5.large", serverless=True),
            serverless_inference_config=deploy.serverless_config(True), wait=WAIT)
    finally:
        deploy.shut_down("host", predictor, model)

    (create_model,) = requests_named(sent, "CreateModel")
    assert create_model["PrimaryContainer"]["Image"].endswith("/tensorflow-inference:2.19-cpu")
    (config,) = requests_named(sent, "CreateEndpointConfig")
    (variant,) = config["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 2}
    assert "InstanceType" not in variant
    assert len(requests_named(sent, "DeleteEndpoint")) == 1
    assert len(requests_named(sent, "DeleteEndpointConfig")) == 1
    assert len(requests_named(sent, "DeleteModel")) == 1


def test_batch_transform_request(artifact, tmp_path):
    model, sent = host_model(artifact)
    source = tmp_path / "in"
    source.mkdir()
    (source / "eval.jsonl").write_text('{"instances": [[[[0, 0, 0]]]]}\n')
    session = model.sagemaker_session
    try:
        data, output_path = deploy.transform_locations("host", source, tmp_path / "out", session,
                                                       BUCKET)
        transformer = model.transformer(
            instance_count=1, instance_type=deploy.instance_type_for("host", "ml.m5.large"),
            strategy="SingleRecord", assemble_with="Line", accept="application/jsonlines",
            output_path=output_path)
        transformer.transform(data, content_type="application/jsonlines", split_type="Line",
                              wait=False)
    finally:
        deploy.shut_down("host", model=model)

    (job,) = requests_named(sent, "CreateTransformJob")
    assert job["ModelName"] == requests_named(sent, "CreateModel")[0]["ModelName"]
    assert job["BatchStrategy"] == "SingleRecord"
    assert job["TransformInput"] == {
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": data}},
        "ContentType": "application/jsonlines", "SplitType": "Line"}
    assert job["TransformOutput"] == {"S3OutputPath": output_path,
                                      "Accept": "application/jsonlines", "AssembleWith": "Line"}
    assert job["TransformResources"] == {"InstanceType": "ml.m5.large", "InstanceCount": 1}
    key = data[len(f"s3://{BUCKET}/"):] + "/eval.jsonl"
    assert boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read() == \
        (source / "eval.jsonl").read_bytes()
    assert len(requests_named(sent, "DeleteModel")) == 1
