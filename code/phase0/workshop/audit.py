"""What of the workshop is still on SageMaker, and what it costs an hour: tags and an audit.

    TensorFlow(..., tags=audit.tags_for("1.2"))      # every host-mode resource carries them
    model.deploy(..., tags=audit.tags_for("4.1"))
    found = audit.list_running(region_or_boto_session)  # tagged endpoints, configs, models,
    audit.print_table(found)                            # InProgress training/transform jobs
    audit.delete(found)                                 # delete / stop them

The tags: ``workshop`` (the same for every resource of this workshop), ``workshop-notebook`` (the
notebook that made it) and ``workshop-run`` (one value per kernel process: its start time and a
random suffix), so a leftover says where it came from. Untagged resources are never touched.
Hourly costs come from ``prices.json`` (budget.table_price); configurations and models bill
nothing themselves, and a stopped or finished job bills nothing, so only InProgress jobs are listed.
"""

import secrets
import time
from dataclasses import dataclass, field
from typing import Optional

from . import budget

WORKSHOP_KEY = "workshop"
WORKSHOP_VALUE = "cifar10-tensorflow-sagemaker"
NOTEBOOK_KEY = "workshop-notebook"
RUN_KEY = "workshop-run"
# One per kernel process: UTC start time plus a random suffix (tag values allow [\w.:/=+@-]).
RUN_ID = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
BILLING_ENDPOINT_STATES = {"Creating", "Updating", "SystemUpdating", "RollingBack", "InService",
                           "Deleting", "UpdateRollbackFailed"}
KINDS = ("endpoint", "endpoint-config", "model", "training-job", "transform-job")


def tags_for(notebook):
    """The SageMaker tags of every host-mode resource a notebook creates (a new list each call:
    the SDK appends to the list it is given)."""
    return [{"Key": WORKSHOP_KEY, "Value": WORKSHOP_VALUE},
            {"Key": NOTEBOOK_KEY, "Value": str(notebook)},
            {"Key": RUN_KEY, "Value": RUN_ID}]


def is_workshop(tags):
    return any(t.get("Key") == WORKSHOP_KEY and t.get("Value") == WORKSHOP_VALUE for t in tags)


@dataclass
class Resource:
    kind: str
    name: str
    arn: str
    status: str
    instance_type: str = ""
    instance_count: int = 0
    usd_per_hour: Optional[float] = 0.0   # None: it bills, but no price is known
    tags: dict = field(default_factory=dict)

    @property
    def notebook(self):
        return self.tags.get(NOTEBOOK_KEY, "")

    @property
    def run(self):
        return self.tags.get(RUN_KEY, "")


def _session(where):
    import boto3

    if where is None or isinstance(where, str):
        session = boto3.Session(region_name=where) if where else boto3.Session()
    else:
        session = where
    if not session.region_name:
        raise ValueError("audit needs a region: pass one (e.g. 'us-east-1') or set "
                         "AWS_DEFAULT_REGION.")
    return session


def _tags(sm, arn):
    tags = []
    for page in sm.get_paginator("list_tags").paginate(ResourceArn=arn):
        tags += page.get("Tags", [])
    return tags


def _hourly(instance_type, count, usage, region):
    if not instance_type or not count:
        return 0.0
    price = budget.table_price(instance_type, usage, region).usd_per_hour
    return None if price is None else round(price * count, 4)


def list_running(where=None):
    """The workshop-tagged endpoints, endpoint configs, models and InProgress training and
    transform jobs in the region of ``where`` (a boto3 Session or a region name), each with its
    status, instance type x count and hourly cost (prices.json)."""
    session = _session(where)
    region = session.region_name
    sm = budget.client("sagemaker", region, session)
    found = []

    def listed(operation, key, **kwargs):
        for page in sm.get_paginator(operation).paginate(**kwargs):
            yield from page.get(key, [])

    for item in listed("list_endpoints", "Endpoints"):
        tags = _tags(sm, item["EndpointArn"])
        if is_workshop(tags):
            found.append(_endpoint(sm, item, tags, region))
    for item in listed("list_endpoint_configs", "EndpointConfigs"):
        tags = _tags(sm, item["EndpointConfigArn"])
        if is_workshop(tags):
            found.append(Resource("endpoint-config", item["EndpointConfigName"],
                                  item["EndpointConfigArn"], "-", tags=_as_dict(tags)))
    for item in listed("list_models", "Models"):
        tags = _tags(sm, item["ModelArn"])
        if is_workshop(tags):
            found.append(Resource("model", item["ModelName"], item["ModelArn"], "-",
                                  tags=_as_dict(tags)))
    for item in listed("list_training_jobs", "TrainingJobSummaries", StatusEquals="InProgress"):
        tags = _tags(sm, item["TrainingJobArn"])
        if is_workshop(tags):
            job = sm.describe_training_job(TrainingJobName=item["TrainingJobName"])
            resources = job.get("ResourceConfig", {})
            kind, count = resources.get("InstanceType", ""), resources.get("InstanceCount", 0)
            found.append(Resource("training-job", item["TrainingJobName"], item["TrainingJobArn"],
                                  job.get("TrainingJobStatus", "InProgress"), kind, count,
                                  _hourly(kind, count, "training", region), _as_dict(tags)))
    for item in listed("list_transform_jobs", "TransformJobSummaries", StatusEquals="InProgress"):
        tags = _tags(sm, item["TransformJobArn"])
        if is_workshop(tags):
            job = sm.describe_transform_job(TransformJobName=item["TransformJobName"])
            resources = job.get("TransformResources", {})
            kind, count = resources.get("InstanceType", ""), resources.get("InstanceCount", 0)
            found.append(Resource("transform-job", item["TransformJobName"],
                                  item["TransformJobArn"],
                                  job.get("TransformJobStatus", "InProgress"), kind, count,
                                  _hourly(kind, count, "transform", region), _as_dict(tags)))
    return found


def _as_dict(tags):
    return {t["Key"]: t.get("Value", "") for t in tags}


def _endpoint(sm, item, tags, region):
    from botocore.exceptions import ClientError

    name, status = item["EndpointName"], item.get("EndpointStatus", "")
    kind, count, serverless = "", 0, False
    try:
        described = sm.describe_endpoint(EndpointName=name)
        status = described.get("EndpointStatus", status)
        config = sm.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
        variant = config["ProductionVariants"][0]
        running = (described.get("ProductionVariants") or [{}])[0]
        kind = variant.get("InstanceType", "")
        count = running.get("CurrentInstanceCount", variant.get("InitialInstanceCount", 0))
        serverless = "ServerlessConfig" in variant
    except ClientError:  # its configuration is gone: the endpoint is still listed, unpriced
        pass
    hourly = (0.0 if serverless or status not in BILLING_ENDPOINT_STATES
              else _hourly(kind, count, "hosting", region))
    return Resource("endpoint", name, item["EndpointArn"], status,
                    "serverless" if serverless else kind, count, hourly, _as_dict(tags))


def print_table(found):
    """One row per resource and the total per hour."""
    if not found:
        print("Nothing of this workshop is on SageMaker in this region (tagged "
              f"{WORKSHOP_KEY}={WORKSHOP_VALUE}).")
        return
    print(f"{'kind':<15} {'name':<48} {'status':<11} {'instances':<22} {'USD/h':>8}  "
          f"notebook  run")
    for r in found:
        instances = f"{r.instance_count} x {r.instance_type}" if r.instance_type else "-"
        hourly = "?" if r.usd_per_hour is None else f"{r.usd_per_hour:.3f}"
        print(f"{r.kind:<15} {r.name:<48} {r.status:<11} {instances:<22} {hourly:>8}  "
              f"{r.notebook:<8}  {r.run}")
    known = sum(r.usd_per_hour or 0 for r in found)
    unknown = sum(r.usd_per_hour is None for r in found)
    print(f"total: ${known:.3f} an hour" + (f", plus {unknown} unpriced" if unknown else "")
          + " (prices.json)")


def _ignore_missing(call, **kwargs):
    from botocore.exceptions import ClientError

    try:
        call(**kwargs)
        return True
    except ClientError as err:
        message = str(err)
        if "Could not find" in message or "not found" in message.lower():
            return False
        raise


def delete(found, where=None):
    """Delete the endpoints, endpoint configs and models, stop the jobs (in that order; what is
    already gone is skipped). Returns [(kind, name, "deleted"/"stopped"/"gone")]."""
    session = _session(where)
    sm = budget.client("sagemaker", session.region_name, session)
    actions = {"endpoint": (sm.delete_endpoint, "EndpointName", "deleted"),
               "endpoint-config": (sm.delete_endpoint_config, "EndpointConfigName", "deleted"),
               "model": (sm.delete_model, "ModelName", "deleted"),
               "training-job": (sm.stop_training_job, "TrainingJobName", "stopped"),
               "transform-job": (sm.stop_transform_job, "TransformJobName", "stopped")}
    done = []
    for kind in KINDS:
        for resource in (r for r in found if r.kind == kind):
            call, parameter, verb = actions[kind]
            outcome = verb if _ignore_missing(call, **{parameter: resource.name}) else "gone"
            print(f"{kind} {resource.name}: {outcome}")
            done.append((kind, resource.name, outcome))
    return done


def closing_audit(mode, delete_leftovers=False, where=None):
    """4.1's and 5.0's last cell: in host mode list what of the workshop still runs (and delete
    it on request); other modes run nothing on AWS. Returns the resources found, or None."""
    if mode != "host":
        print(f"MODE={mode!r}: nothing of this workshop runs on AWS from here.")
        return None
    session = _session(where)
    if session.get_credentials() is None:
        raise RuntimeError("MODE='host': the audit needs AWS credentials to list what runs: run "
                           "`aws configure`, set AWS_PROFILE, or use a SageMaker notebook's role.")
    found = list_running(session)
    print_table(found)
    if found and delete_leftovers:
        delete(found, session)
        return list_running(session)
    if found:
        print("Set DELETE_LEFTOVERS = True and run this cell again to delete / stop them.")
    return found
