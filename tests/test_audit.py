"""The workshop's tags and the audit of what still runs (workshop/audit.py).

Endpoints, endpoint configs, models and their tags are real in moto_server. Moto marks every
training and transform job Completed at once and has no StopTrainingJob/StopTransformJob, so the
in-progress jobs and their stopping are answered by botocore's Stubber (checked against the real
SageMaker service model).
"""

import datetime
import io
from contextlib import redirect_stdout

import boto3
import pytest
from aws_fixtures import *  # noqa: F401,F403 - moto_server, sdk_offline
from botocore.stub import Stubber

from workshop import SRC_DIR, audit, budget, jobs

REGION = "us-east-1"
BUCKET = "workshop-audit-test"
ROLE = "arn:aws:iam::123456789012:role/SageMakerWorkshopRole"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-inference:2.19-cpu"
NOW = datetime.datetime(2026, 12, 4, 9, 0, tzinfo=datetime.timezone.utc)


@pytest.fixture(autouse=True)
def fresh_clients():
    budget.forget_clients()
    yield
    budget.forget_clients()


def printed(function, *args, **kwargs):
    out = io.StringIO()
    with redirect_stdout(out):
        result = function(*args, **kwargs)
    return result, out.getvalue()


def test_tags_name_the_workshop_the_notebook_and_this_kernels_run():
    tags = audit.tags_for("1.2")
    assert {t["Key"]: t["Value"] for t in tags} == {
        "workshop": audit.WORKSHOP_VALUE, "workshop-notebook": "1.2",
        "workshop-run": audit.RUN_ID}
    assert audit.tags_for("4.1") is not audit.tags_for("4.1")  # the SDK appends to its list
    assert audit.tags_for("4.1")[2] == tags[2]  # one run id per kernel process
    assert audit.is_workshop(tags) and not audit.is_workshop([{"Key": "workshop", "Value": "x"}])


def test_a_training_job_sends_the_tags_in_create_training_job(moto_server):
    """What the lead adds to the training notebooks: TensorFlow(..., tags=audit.tags_for(...))."""
    from sagemaker.tensorflow import TensorFlow

    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    session = jobs.session_for("host", bucket=BUCKET)
    sent = {}
    session.sagemaker_client.meta.events.register(
        "provide-client-params.sagemaker.CreateTrainingJob",
        lambda params, **_: sent.update(params))
    estimator = TensorFlow(
        entry_point="train_keras.py", source_dir=str(SRC_DIR), framework_version="2.19",
        py_version="py312", instance_type="ml.g5.xlarge", instance_count=1, role=ROLE,
        sagemaker_session=session, disable_profiler=True, tags=audit.tags_for("1.2"))
    estimator.fit({"train": f"s3://{BUCKET}/cifar10/train"}, wait=False)

    assert sent["Tags"] == audit.tags_for("1.2")
    arn = session.sagemaker_client.describe_training_job(
        TrainingJobName=estimator.latest_training_job.name)["TrainingJobArn"]
    stored = boto3.client("sagemaker", region_name=REGION).list_tags(ResourceArn=arn)["Tags"]
    assert audit.is_workshop(stored) and {"Key": "workshop-notebook", "Value": "1.2"} in stored


def make_endpoint(sm, stem, tags):
    model, config, endpoint = f"{stem}-model", f"{stem}-config", f"{stem}-endpoint"
    sm.create_model(ModelName=model, ExecutionRoleArn=ROLE, Tags=tags,
                    PrimaryContainer={"Image": IMAGE, "ModelDataUrl": "s3://b/model.tar.gz"})
    sm.create_endpoint_config(EndpointConfigName=config, Tags=tags, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": model, "InstanceType": "ml.m5.large",
         "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=config, Tags=tags)
    return {"model": model, "endpoint-config": config, "endpoint": endpoint}


def test_the_audit_lists_and_deletes_tagged_resources_and_leaves_untagged_ones(moto_server):
    sm = boto3.client("sagemaker", region_name=REGION)
    ours = make_endpoint(sm, "audit-tagged", audit.tags_for("4.1"))
    theirs = make_endpoint(sm, "audit-untagged", [{"Key": "team", "Value": "other"}])
    session = boto3.Session(region_name=REGION)

    found, table = printed(audit.list_running, session)

    by_name = {r.name: r for r in found}
    assert set(ours.values()) <= set(by_name) and not set(theirs.values()) & set(by_name)
    endpoint = by_name[ours["endpoint"]]
    assert (endpoint.kind, endpoint.status) == ("endpoint", "InService")
    assert (endpoint.instance_type, endpoint.instance_count) == ("ml.m5.large", 1)
    hosting = budget.table_price("ml.m5.large", "hosting", REGION).usd_per_hour
    assert endpoint.usd_per_hour == pytest.approx(hosting)
    assert (endpoint.notebook, endpoint.run) == ("4.1", audit.RUN_ID)
    assert by_name[ours["model"]].usd_per_hour == 0.0  # a model bills nothing itself
    _, text = printed(audit.print_table, found)
    assert ours["endpoint"] in text and "1 x ml.m5.large" in text and "total: $" in text

    done, _ = printed(audit.delete, [r for r in found if r.name in ours.values()], session)

    assert sorted(done) == sorted((kind, name, "deleted") for kind, name in ours.items())
    assert ours["endpoint"] not in [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]
    assert ours["model"] not in [m["ModelName"] for m in sm.list_models()["Models"]]
    left = [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]]
    assert ours["endpoint-config"] not in left and theirs["endpoint-config"] in left
    assert theirs["endpoint"] in [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]
    done, _ = printed(audit.delete, [r for r in found if r.name in ours.values()], session)
    assert {outcome for _, _, outcome in done} == {"gone"}  # a second run finds nothing to do


def job_arn(kind, name):
    return f"arn:aws:sagemaker:{REGION}:123456789012:{kind}/{name}"


def test_the_audit_lists_jobs_in_progress_with_their_cost_and_stops_them():
    session = boto3.Session(region_name=REGION, aws_access_key_id="testing",
                            aws_secret_access_key="testing")
    stub = Stubber(budget.client("sagemaker", REGION, session))
    for operation, key in (("list_endpoints", "Endpoints"),
                           ("list_endpoint_configs", "EndpointConfigs"), ("list_models", "Models")):
        stub.add_response(operation, {key: []}, {})
    training = {"ours": job_arn("training-job", "ours"), "other": job_arn("training-job", "other")}
    stub.add_response("list_training_jobs", {"TrainingJobSummaries": [
        {"TrainingJobName": name, "TrainingJobArn": arn, "CreationTime": NOW,
         "TrainingJobStatus": "InProgress"} for name, arn in training.items()]},
        {"StatusEquals": "InProgress"})
    stub.add_response("list_tags", {"Tags": audit.tags_for("3.1")},
                      {"ResourceArn": training["ours"]})
    stub.add_response("describe_training_job", {
        "TrainingJobName": "ours", "TrainingJobArn": training["ours"],
        "ModelArtifacts": {"S3ModelArtifacts": ""}, "TrainingJobStatus": "InProgress",
        "SecondaryStatus": "Training", "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": "ml.g5.12xlarge", "InstanceCount": 2,
                           "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600}, "CreationTime": NOW},
        {"TrainingJobName": "ours"})
    stub.add_response("list_tags", {"Tags": []}, {"ResourceArn": training["other"]})
    transform = job_arn("transform-job", "ours-transform")
    stub.add_response("list_transform_jobs", {"TransformJobSummaries": [
        {"TransformJobName": "ours-transform", "TransformJobArn": transform,
         "CreationTime": NOW, "TransformJobStatus": "InProgress"}]},
        {"StatusEquals": "InProgress"})
    stub.add_response("list_tags", {"Tags": audit.tags_for("4.1")}, {"ResourceArn": transform})
    stub.add_response("describe_transform_job", {
        "TransformJobName": "ours-transform", "TransformJobArn": transform,
        "TransformJobStatus": "InProgress", "ModelName": "m", "CreationTime": NOW,
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                            "S3Uri": "s3://b/in"}}},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1}},
        {"TransformJobName": "ours-transform"})
    stub.add_response("stop_training_job", {}, {"TrainingJobName": "ours"})
    stub.add_response("stop_transform_job", {}, {"TransformJobName": "ours-transform"})

    with stub:
        found, _ = printed(audit.list_running, session)
        done, _ = printed(audit.delete, found, session)
        stub.assert_no_pending_responses()

    assert [(r.kind, r.name, r.instance_count, r.instance_type) for r in found] == [
        ("training-job", "ours", 2, "ml.g5.12xlarge"),
        ("transform-job", "ours-transform", 1, "ml.m5.large")]
    training_price = budget.table_price("ml.g5.12xlarge", "training", REGION).usd_per_hour
    assert found[0].usd_per_hour == pytest.approx(2 * training_price)
    assert done == [("training-job", "ours", "stopped"),
                    ("transform-job", "ours-transform", "stopped")]


def test_outside_host_mode_the_closing_audit_asks_nothing():
    found, text = printed(audit.closing_audit, "process", True)
    assert found is None and "nothing of this workshop runs on AWS" in text
    assert not budget._CLIENTS


def test_the_closing_cell_in_host_mode_lists_then_deletes_on_request(moto_server):
    sm = boto3.client("sagemaker", region_name=REGION)
    ours = make_endpoint(sm, "closing-tagged", audit.tags_for("5.0"))
    session = boto3.Session(region_name=REGION)

    found, text = printed(audit.closing_audit, "host", False, session)
    assert set(ours.values()) <= {r.name for r in found}
    assert "Set DELETE_LEFTOVERS = True" in text

    left, text = printed(audit.closing_audit, "host", True, session)
    assert not set(ours.values()) & {r.name for r in left}
    assert f"endpoint {ours['endpoint']}: deleted" in text
