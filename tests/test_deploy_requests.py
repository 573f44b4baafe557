"""Host-mode deployment through the real SageMaker SDK against a real moto_server: what 4.1 sends.

Moto accepts any image or instance type and its InvokeEndpoint only replays canned bodies, so
these tests assert on the requests as the SDK sent them (captured by a botocore event hook) and
on what is left afterwards, never on predictions.
"""

import datetime
import tarfile

import boto3
import pytest
from aws_fixtures import *  # noqa: F401,F403 - moto_server, sdk_offline

from workshop import jobs
from workshop.serving import deploy

BUCKET = "workshop-deploy-test"
ROLE = "arn:aws:iam::123456789012:role/SageMakerWorkshopRole"
REGION = "us-east-1"
# 4.1 waits for the endpoint; moto reports it InService only on the second describe and the SDK
# polls every 30 s, so the tests don't wait (the requests sent are the same).
WAIT = False
NOW = datetime.datetime(2026, 12, 4, 9, 0, tzinfo=datetime.timezone.utc)


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
                                 instance_type=deploy.serving_instance_type_for("host",
                                                                                "ml.m5.large"),
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
            instance_type=deploy.serving_instance_type_for("host", "ml.m5.large", serverless=True),
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
            instance_count=1, instance_type=deploy.serving_instance_type_for("host", "ml.m5.large"),
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


# ------------------------------------- 4.1's own cells in host mode: guard, tags, cleanup by name

MODEL_FROM = "host-test"  # a results record of our own, so no training notebook's is touched


@pytest.fixture
def notebook_4_1(artifact, cifar_data_dir, monkeypatch):
    """Runs 4.1's code cells in host mode against moto: ``run(*needles, **parameters)`` executes
    the cells up to the model cell (the first time, with those parameters), then each cell that
    contains one of ``needles``. Yields (run, namespace)."""
    import nbformat

    from workshop import PHASE0_DIR, RUNS_DIR, run_notebooks
    from workshop.files import write_json_atomic

    monkeypatch.chdir(PHASE0_DIR)
    (RUNS_DIR / "results").mkdir(parents=True, exist_ok=True)
    write_json_atomic(RUNS_DIR / "results" / f"{MODEL_FROM}.json",
                      {"notebook": MODEL_FROM, "eval_accuracy": 0.5,
                       "model_artifact": str(artifact)})
    (path,) = run_notebooks.notebooks(only=["4.1"])
    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    (model_cell,) = [i for i, source in enumerate(cells) if "TensorFlowModel(" in source]
    namespace = {}
    parameters = {"MODE": "host", "DATA_DIR": str(cifar_data_dir), "MODEL_FROM": MODEL_FROM,
                  "ROLE_ARN": ROLE, "S3_BUCKET": BUCKET}

    def run(*needles, **overrides):
        if "model" not in namespace:  # the first call only
            for index, source in enumerate(cells[:model_cell + 1]):
                exec(compile(source, f"4.1[{index}]", "exec"), namespace)
                if index == 0:
                    namespace.update(parameters, **overrides)
        for needle in needles:
            (source,) = [s for s in cells if needle in s]
            exec(compile(source, f"4.1[{needle}]", "exec"), namespace)
        return namespace

    yield run, namespace


def capture_requests(namespace):
    sent = []
    namespace["session"].sagemaker_client.meta.events.register(
        "provide-client-params.sagemaker", lambda params, model, **_: sent.append(
            (model.name, params)))
    return sent


def stop_with_keyboard_interrupt(namespace, operation):
    """What a learner pressing Stop does while `operation`'s call is being answered."""
    def interrupt(**_):
        raise KeyboardInterrupt

    namespace["session"].sagemaker_client.meta.events.register(
        f"after-call.sagemaker.{operation}", interrupt)


def names_left():
    client = boto3.client("sagemaker", region_name=REGION)
    return ({e["EndpointName"] for e in client.list_endpoints()["Endpoints"]},
            {c["EndpointConfigName"] for c in client.list_endpoint_configs()["EndpointConfigs"]},
            {m["ModelName"] for m in client.list_models()["Models"]})


def test_4_1_stopped_while_the_endpoint_is_creating_leaves_nothing_behind(notebook_4_1, capsys):
    from workshop import audit

    run, namespace = notebook_4_1
    run()  # up to the model cell: nothing created yet, the names are chosen
    sent = capture_requests(namespace)
    stop_with_keyboard_interrupt(namespace, "CreateEndpoint")
    with pytest.raises(KeyboardInterrupt):
        run("model.deploy(")

    names = namespace["names"]
    for operation in ("CreateModel", "CreateEndpointConfig", "CreateEndpoint"):
        (request,) = requests_named(sent, operation)
        assert request["Tags"] == audit.tags_for("4.1"), operation
    assert requests_named(sent, "CreateEndpoint")[0]["EndpointName"] == names.endpoint
    assert requests_named(sent, "CreateModel")[0]["ModelName"] == names.model
    assert requests_named(sent, "DeleteEndpoint") == [{"EndpointName": names.endpoint}]
    assert requests_named(sent, "DeleteEndpointConfig") == [{"EndpointConfigName": names.endpoint}]
    assert requests_named(sent, "DeleteModel") == [{"ModelName": names.model}]
    endpoints, configs, models = names_left()
    assert names.endpoint not in endpoints and names.endpoint not in configs
    assert names.model not in models
    printed = capsys.readouterr().out
    assert "endpoint: 1 x ml.m5.large in us-east-1, worst case 1 x 1 h" in printed  # the guard
    assert f"deleted endpoint {names.endpoint}" in printed


def test_4_1_refuses_an_endpoint_over_max_cost_before_any_create_call(notebook_4_1):
    from workshop import budget

    run, namespace = notebook_4_1
    run(MAX_COST_USD=0.01)
    sent = capture_requests(namespace)
    with pytest.raises(budget.BudgetExceeded, match="over MAX_COST_USD=0.01"):
        run("model.deploy(")
    assert not [name for name, _ in sent if name.startswith("Create")]


def test_4_1_stopped_during_batch_transform_deletes_its_model_by_name(notebook_4_1):
    from workshop import audit

    run, namespace = notebook_4_1
    run()
    sent = capture_requests(namespace)
    stop_with_keyboard_interrupt(namespace, "CreateTransformJob")
    with pytest.raises(KeyboardInterrupt):
        run("model.transformer(")

    names = namespace["names"]
    (job,) = requests_named(sent, "CreateTransformJob")
    assert job["TransformJobName"] == names.transform_job
    assert job["Tags"] == audit.tags_for("4.1")
    assert requests_named(sent, "CreateModel")[0]["Tags"] == audit.tags_for("4.1")
    # moto reports every transform job Completed at once: asked by name, nothing to stop
    assert requests_named(sent, "DescribeTransformJob") == [
        {"TransformJobName": names.transform_job}]
    assert requests_named(sent, "DeleteModel") == [{"ModelName": names.model}]
    assert names.model not in names_left()[2]


# ----------------------------- cleanup by name where moto cannot answer: botocore's Stubber


def stubbed_client():
    from botocore.stub import Stubber

    session = boto3.Session(region_name=REGION, aws_access_key_id="testing",
                            aws_secret_access_key="testing")
    client = session.client("sagemaker")
    return client, Stubber(client)


def test_cleanup_stops_a_transform_job_still_in_progress(capsys):
    client, stub = stubbed_client()
    stub.add_response("describe_transform_job", {
        "TransformJobName": "t", "TransformJobArn": "arn:aws:sagemaker:us-east-1:1:transform-job/t",
        "TransformJobStatus": "InProgress", "ModelName": "m", "CreationTime": NOW,
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                            "S3Uri": "s3://b/in"}}},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1}},
        {"TransformJobName": "t"})
    stub.add_response("stop_transform_job", {}, {"TransformJobName": "t"})
    stub.add_response("delete_model", {}, {"ModelName": "m"})
    with stub:
        deploy.delete_by_name(client, model_name="m", transform_job_name="t")
        stub.assert_no_pending_responses()
    assert "stopped transform job t (it was InProgress)" in capsys.readouterr().out


def test_cleanup_waits_while_sagemaker_refuses_to_delete_an_endpoint_being_created(capsys):
    client, stub = stubbed_client()
    endpoint = {"EndpointName": "e", "EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/e",
                "EndpointConfigName": "e", "EndpointStatus": "Creating", "CreationTime": NOW,
                "LastModifiedTime": NOW}
    stub.add_response("describe_endpoint", endpoint, {"EndpointName": "e"})
    stub.add_response("describe_endpoint_config", {
        "EndpointConfigName": "e", "EndpointConfigArn": "arn:aws:sagemaker:us-east-1:1:e",
        "CreationTime": NOW, "ProductionVariants": [
            {"VariantName": "AllTraffic", "ModelName": "m", "InstanceType": "ml.m5.large",
             "InitialInstanceCount": 1}]}, {"EndpointConfigName": "e"})
    stub.add_client_error("delete_endpoint", "ValidationException",
                          "Cannot delete endpoint in status Creating", 400,
                          expected_params={"EndpointName": "e"})
    stub.add_response("describe_endpoint", {**endpoint, "EndpointStatus": "InService"},
                      {"EndpointName": "e"})
    stub.add_response("delete_endpoint", {}, {"EndpointName": "e"})
    stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "e"})
    stub.add_client_error("delete_model", "ValidationException", 'Could not find model "m".',
                          400, expected_params={"ModelName": "m"})
    with stub:
        billed = deploy.delete_by_name(client, endpoint_name="e", model_name="m", poll_seconds=0)
        stub.assert_no_pending_responses()
    printed = capsys.readouterr().out
    assert "SageMaker refused to delete it yet" in printed and "deleted endpoint e" in printed
    assert "deleted model" not in printed  # it was already gone: skipped
    assert billed["instance_hours"] > 0 and "x $0.115 =" in billed["text"]


def test_a_failing_cleanup_step_does_not_stop_the_others_and_says_what_is_left():
    client, stub = stubbed_client()
    stub.add_client_error("describe_endpoint", "AccessDeniedException", "not authorized", 400,
                          expected_params={"EndpointName": "e"})
    stub.add_response("delete_endpoint", {}, {"EndpointName": "e"})
    stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "e"})
    stub.add_response("delete_model", {}, {"ModelName": "m"})
    with stub, pytest.raises(RuntimeError, match="aws sagemaker describe-endpoint "
                                                 "--endpoint-name e"):
        deploy.delete_by_name(client, endpoint_name="e", model_name="m")
    stub.assert_no_pending_responses()  # endpoint, config and model still deleted
