"""Deploy a trained model and score it, in the three modes: the plumbing of notebook 4.1.

    names = deploy.resource_names("cifar10-4-1")        # chosen before anything exists
    model = TensorFlowModel(model_data=..., framework_version="2.19", name=names.model, ...)
    predictor = deploy.serve_in_process(model)          # MODE="process": the stand-in, no Docker
    predictor = model.deploy(..., endpoint_name=names.endpoint)  # "local"/"host": the SDK itself
    reply = predictor.predict(batch)                    # the same in every mode
    deploy.shut_down(MODE, predictor, model, endpoint_name=names.endpoint)  # in `finally`

In host mode shut_down deletes by name, whether or not deploy returned: model.deploy returns only
once the endpoint is InService (minutes), which is when a learner presses Stop.

Process mode unpacks ``model.tar.gz`` as the container does (``/opt/ml/model``), starts the
TF Serving stand-in (``tfs_standin.py``) on a free loopback port, and hands back the SDK's own
``TensorFlowPredictor``; only its session's runtime client differs: it posts to the stand-in's
``/invocations`` as SageMaker's runtime posts to the container's.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import PHASE0_DIR, RUNS_DIR, budget
from ..environment import nvidia_gpu_present
from ..files import free_ports, write_atomic
from ..jobs import session_for
from ..records import ModelArtifactError
from .tfs_standin import NO_MODELS, find_models

# InvokeEndpoint's request limits (SageMaker API reference, InvokeEndpoint: 6 MB; developer guide,
# "Invoke a serverless endpoint": 4 MB). Checked before sending, in decimal megabytes to be safe.
PAYLOAD_LIMIT_BYTES = 6_000_000
SERVERLESS_PAYLOAD_LIMIT_BYTES = 4_000_000
STARTUP_SECONDS = 120
PRICING_PAGE = "https://aws.amazon.com/sagemaker/pricing/"


class PayloadTooLarge(ValueError):
    """A request body over InvokeEndpoint's limit: refused before it is sent."""


# ------------------------------------------------------------------------------ the model


def model_data_for(mode, artifact, session=None, bucket=None, runs_dir=RUNS_DIR):
    """What TensorFlowModel(model_data=...) takes: file:// for process/local, S3 for host
    (the local model.tar.gz is uploaded next to the bucket's other workshop files).

    Local mode gets a copy in a folder of its own: the SDK unpacks a file:// archive into the
    archive's folder and mounts that whole folder as /opt/ml/model."""
    if mode == "process":
        return f"file://{Path(artifact).resolve()}"
    if mode == "local":
        from sagemaker.utils import name_from_base

        folder = Path(runs_dir) / "endpoints" / name_from_base("cifar10-model")
        folder.mkdir(parents=True)
        shutil.copyfile(artifact, folder / "model.tar.gz")
        return f"file://{(folder / 'model.tar.gz').resolve()}"
    from sagemaker.s3 import S3Uploader
    from sagemaker.utils import name_from_base

    bucket = bucket or session.default_bucket()
    prefix = f"s3://{bucket}/{name_from_base('cifar10-model')}"
    return S3Uploader.upload(str(artifact), prefix, sagemaker_session=session)


def serving_instance_type_for(mode, instance_type, serverless=False):
    """The instance type for deploy/transformer: none for a serverless endpoint, the given one
    in host mode, local(_gpu) in local mode."""
    if mode == "host":
        return None if serverless else instance_type
    return "local_gpu" if mode == "local" and nvidia_gpu_present() else "local"


def serverless_config(serverless, memory_size_in_mb=2048, max_concurrency=2):
    if not serverless:
        return None
    from sagemaker.serverless import ServerlessInferenceConfig

    return ServerlessInferenceConfig(memory_size_in_mb=memory_size_in_mb,
                                     max_concurrency=max_concurrency)


def unpack_for_serving(artifact, model_dir):
    """Unpack model.tar.gz into model_dir as SageMaker does into /opt/ml/model; check it serves."""
    artifact, model_dir = Path(artifact), Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(artifact) as tar:
            tar.extractall(model_dir, filter="data")  # no absolute paths, links out, devices
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ModelArtifactError(f"{NO_MODELS}: {artifact} is not a readable model.tar.gz "
                                 f"({type(err).__name__}: {err}). Train again to rebuild it.") \
            from None
    find_models(model_dir)  # raises NoModelsError with the container's wording
    return model_dir


# ------------------------------------------------------------------------------ the stand-in


@dataclass
class StandInServer:
    """A running tfs_standin server."""
    process: subprocess.Popen
    port: int
    model_dir: Path
    log_path: Path

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"


def start_standin(model_dir, port=None, log_path=None, startup_seconds=STARTUP_SECONDS):
    """``python -m workshop.serving.tfs_standin`` on a free loopback port; returns once /ping is
    200."""
    port = port or free_ports(1)[0]
    log_path = Path(log_path or Path(model_dir).parent / "standin.log")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(PHASE0_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "workshop.serving.tfs_standin", "serve",
             "--model-dir", str(model_dir), "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    standin = StandInServer(process, port, Path(model_dir), log_path)
    deadline = time.monotonic() + startup_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ModelArtifactError(f"the TF Serving stand-in exited at start (code "
                                     f"{process.returncode}): {log_tail(log_path)}")
        try:
            with urllib.request.urlopen(standin.url + "/ping", timeout=2) as reply:
                if reply.status == 200:
                    return standin
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.25)
    stop_standin(standin)
    raise TimeoutError(f"the TF Serving stand-in did not answer /ping within {startup_seconds}s: "
                       f"{log_tail(log_path)}")


def stop_standin(standin, timeout=15):
    if standin.process.poll() is None:
        standin.process.terminate()  # gunicorn: graceful stop of its worker
        try:
            standin.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            standin.process.kill()
            standin.process.wait()
    return standin.process.returncode


def log_tail(path, chars=2000):
    try:
        return Path(path).read_text(errors="replace")[-chars:].strip()
    except OSError:
        return "(no log)"


class LoopbackRuntimeClient:
    """``invoke_endpoint`` as the SageMaker runtime client has it, posting to a stand-in's
    /invocations the headers SageMaker forwards to the container. Like the real service (and
    unlike the SDK's local-mode client) a non-2xx reply raises botocore's ModelError."""

    def __init__(self, port):
        import urllib3

        self.port = port
        self.http = urllib3.PoolManager()

    def invoke_endpoint(self, Body, EndpointName, ContentType=None, Accept=None,  # noqa: N803
                        CustomAttributes=None, **_):
        from botocore.exceptions import ClientError

        headers = {"Content-Type": ContentType, "Accept": Accept,
                   "X-Amzn-SageMaker-Custom-Attributes": CustomAttributes}
        body = Body.encode("utf-8") if isinstance(Body, str) else Body
        reply = self.http.request("POST", f"http://127.0.0.1:{self.port}/invocations", body=body,
                                  headers={k: v for k, v in headers.items() if v is not None})
        if reply.status >= 300:
            side = "client" if reply.status < 500 else "server"
            message = (f"Received {side} error ({reply.status}) from primary with message "
                       f"\"{reply.data.decode('utf-8', 'replace')}\"")
            raise ClientError({"Error": {"Code": "ModelError", "Message": message},
                               "OriginalStatusCode": reply.status,
                               "ResponseMetadata": {"HTTPStatusCode": 424}}, "InvokeEndpoint")
        import io

        from botocore.response import StreamingBody

        return {"Body": StreamingBody(io.BytesIO(reply.data), len(reply.data)),
                "ContentType": reply.headers.get("Content-Type", Accept)}


_STANDINS = {}  # endpoint name -> StandInServer, so shut_down finds the server behind a predictor


def serve_in_process(model, runs_dir=RUNS_DIR):
    """Process mode's ``model.deploy``: the stand-in serves the model on loopback; returns a
    ``sagemaker.tensorflow.TensorFlowPredictor`` (predict() as on an endpoint)."""
    from sagemaker.tensorflow import TensorFlowPredictor
    from sagemaker.utils import name_from_base

    name = name_from_base("cifar10-standin")
    folder = Path(runs_dir) / "endpoints" / name
    artifact = str(model.model_data).removeprefix("file://")
    model_dir = unpack_for_serving(artifact, folder / "model")  # like /opt/ml/model
    standin = start_standin(model_dir)
    _STANDINS[name] = standin
    session = session_for("process")
    session.sagemaker_runtime_client = LoopbackRuntimeClient(standin.port)
    print(f"TF Serving stand-in for {artifact}: {standin.url} (pid {standin.process.pid}, "
          f"models {sorted(find_models(model_dir))}, log {standin.log_path})")
    return TensorFlowPredictor(name, sagemaker_session=session)


def standin_of(predictor):
    """The StandInServer serving a predictor returned by serve_in_process."""
    return _STANDINS[predictor.endpoint_name]


@dataclass
class ResourceNames:
    """The names of what 4.1 creates, chosen before anything is created, so that ``finally``
    can delete them whether or not the call that creates them returned."""
    model: str
    endpoint: str        # the SDK names the endpoint config after the endpoint
    transform_job: str


def resource_names(base="cifar10-4-1"):
    from sagemaker.utils import name_from_base

    stem = name_from_base(base)  # <base>-<yyyy-mm-dd-hh-mm-ss-mmm>, within the 63-character limit
    return ResourceNames(f"{stem}-model", f"{stem}-endpoint", f"{stem}-transform")


def shut_down(mode, predictor=None, model=None, transformer=None, endpoint_name=None,
              transform_job_name=None):
    """Stop what serves the model, whatever happened before (interrupt, failure, timeout).

    process: the stand-in's server. local: the endpoint's container and the model (the SDK's own
    delete calls), and the container of a transform job that failed (the SDK stops it only when the
    job completes). host: by name, whether or not deploy or transform returned: the endpoint
    ``endpoint_name`` (or the predictor's), its endpoint config, a transform job
    ``transform_job_name`` still in progress (StopTransformJob) and the model; what does not exist
    is skipped. Prints the endpoint's billable time. Returns that (host) or None."""
    if mode == "local" and transformer is not None:
        stop_local_transform(transformer)
    if mode == "process":
        standin = _STANDINS.pop(getattr(predictor, "endpoint_name", None), None)
        if standin is not None:
            stop_standin(standin)
            print(f"stopped the TF Serving stand-in (pid {standin.process.pid})")
        return None
    if mode == "host":
        owner = predictor or model or transformer
        if owner is None:
            return None
        session = owner.sagemaker_session
        return delete_by_name(session.sagemaker_client,
                              endpoint_name or getattr(predictor, "endpoint_name", None),
                              getattr(model, "name", None), transform_job_name)
    if predictor is not None:
        predictor.delete_endpoint(delete_endpoint_config=True)
        print(f"deleted endpoint and endpoint config {predictor.endpoint_name}")
    if model is not None and getattr(model, "name", None):
        model.delete_model()
        print(f"deleted model {model.name}")
    return None


def _missing(err):
    """SageMaker's answer for a name that does not exist (ValidationException "Could not find")."""
    message = str(err)
    return "Could not find" in message or "does not exist" in message


def delete_by_name(client, endpoint_name=None, model_name=None, transform_job_name=None,
                   wait_seconds=900, poll_seconds=15):
    """Host mode's cleanup: stop the transform job if it is in progress, delete the endpoint
    (waiting, up to wait_seconds, while SageMaker refuses because it is still being created), its
    endpoint config and the model. Names that do not exist are skipped; a step that fails does
    not stop the others, and the failures are raised together at the end, with the commands."""
    from botocore.exceptions import ClientError

    billed, failed = None, []

    def attempt(what, command, step):
        try:
            return step()
        except ClientError as err:
            if not _missing(err):
                failed.append(f"{what}: {err} (`{command}`)")
        return None

    def stop_transform():
        status = client.describe_transform_job(
            TransformJobName=transform_job_name)["TransformJobStatus"]
        if status == "InProgress":
            client.stop_transform_job(TransformJobName=transform_job_name)
            print(f"stopped transform job {transform_job_name} (it was {status})")

    if transform_job_name:
        attempt(f"transform job {transform_job_name}", "aws sagemaker stop-transform-job "
                f"--transform-job-name {transform_job_name}", stop_transform)
    if endpoint_name:
        described, gone = None, False
        try:
            described = client.describe_endpoint(EndpointName=endpoint_name)
            billed = billable_time_of(client, described)
        except ClientError as err:
            gone = _missing(err)
            if not gone:
                failed.append(f"endpoint {endpoint_name}: {err} (`aws sagemaker "
                              f"describe-endpoint --endpoint-name {endpoint_name}`)")
        # the SDK names the config after the endpoint: that name if the endpoint is gone
        config_name = described["EndpointConfigName"] if described else endpoint_name
        status = described["EndpointStatus"] if described else "unknown"

        def delete_endpoint():
            _delete_endpoint(client, endpoint_name, status, wait_seconds, poll_seconds)
            print(f"deleted endpoint {endpoint_name} (it was {status})")

        if not gone:
            attempt(f"endpoint {endpoint_name}", "aws sagemaker delete-endpoint "
                    f"--endpoint-name {endpoint_name}", delete_endpoint)

        def delete_config():
            client.delete_endpoint_config(EndpointConfigName=config_name)
            print(f"deleted endpoint config {config_name}")

        attempt(f"endpoint config {config_name}", "aws sagemaker delete-endpoint-config "
                f"--endpoint-config-name {config_name}", delete_config)
    if model_name:
        def delete_model():
            client.delete_model(ModelName=model_name)
            print(f"deleted model {model_name}")

        attempt(f"model {model_name}", f"aws sagemaker delete-model --model-name {model_name}",
                delete_model)
    if billed:
        print(billed["text"])
    if failed:
        raise RuntimeError("cleanup left something on SageMaker; delete it by hand or with "
                           "4.1's last cell (DELETE_LEFTOVERS = True): " + "; ".join(failed))
    return billed


def _delete_endpoint(client, name, status, wait_seconds, poll_seconds):
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            client.delete_endpoint(EndpointName=name)
            return
        except ClientError as err:
            if _missing(err) or time.monotonic() > deadline:
                raise
            print(f"endpoint {name} is {status}; SageMaker refused to delete it yet "
                  f"({err.response['Error'].get('Message', '')}); trying again in "
                  f"{poll_seconds} s")
            time.sleep(poll_seconds)
            status = client.describe_endpoint(EndpointName=name)["EndpointStatus"]


def stop_local_transform(transformer):
    """Stop the serving container of a local-mode transform job that did not complete."""
    from sagemaker.local.local_session import LocalSagemakerClient

    job = LocalSagemakerClient._transform_jobs.get(transformer._current_job_name)
    if job is not None and job.state != job._COMPLETED and job.container is not None:
        job.container.stop_serving()
        print(f"stopped the container of transform job {transformer._current_job_name}")


def billable_time(predictor):
    """How long the endpoint existed (what SageMaker bills real-time instances for)."""
    client = predictor.sagemaker_session.sagemaker_client
    return billable_time_of(client, client.describe_endpoint(EndpointName=predictor.endpoint_name))


def billable_time_of(client, endpoint):
    """billable_time for a DescribeEndpoint answer; the price from prices.json when it has one."""
    from botocore.exceptions import ClientError

    try:
        config = client.describe_endpoint_config(
            EndpointConfigName=endpoint["EndpointConfigName"])
    except ClientError:
        return None
    variant = config["ProductionVariants"][0]
    seconds = (datetime.now(timezone.utc) - endpoint["CreationTime"]).total_seconds()
    if "ServerlessConfig" in variant:
        text = (f"serverless endpoint: billed per request duration and memory "
                f"({variant['ServerlessConfig']['MemorySizeInMB']} MB); see {PRICING_PAGE}")
        return {"seconds": seconds, "instance_hours": 0.0, "text": text}
    count, instance = variant.get("InitialInstanceCount", 1), variant.get("InstanceType")
    hours = count * seconds / 3600
    region = client.meta.region_name
    price = budget.table_price(instance, "hosting", region)
    if price.usd_per_hour is None:
        cost, usd = f"(no price for it in workshop/prices.json: see {PRICING_PAGE})", None
    else:
        usd = hours * price.usd_per_hour
        cost = (f"x ${price.usd_per_hour:g} = ${usd:.4f} (workshop/prices.json, "
                f"{price.confidence})")
    text = (f"endpoint cost: {count} x {instance} for {seconds:.0f} s = {hours:.3f} instance-hours "
            f"{cost}")
    return {"seconds": seconds, "instance_hours": hours, "usd": usd, "text": text}


# ------------------------------------------------------------------------------ scoring


def payload_limit(serverless=False):
    return SERVERLESS_PAYLOAD_LIMIT_BYTES if serverless else PAYLOAD_LIMIT_BYTES


def check_payload(body, limit=PAYLOAD_LIMIT_BYTES):
    size = len(body.encode("utf-8") if isinstance(body, str) else body)
    if size > limit:
        raise PayloadTooLarge(f"request body is {size / 1e6:.2f} MB, over InvokeEndpoint's "
                              f"{limit / 1e6:.0f} MB limit: send fewer images per request "
                              f"(a smaller batch size).")
    return size


def payload_batches(images, batch_size, serializer, limit=PAYLOAD_LIMIT_BYTES):
    """Yield ``images`` in batches of ``batch_size``, each checked against the payload limit as
    the predictor's serializer will encode it. Send batches: a single (32, 32, 3) image would be
    read by the container as 32 instances."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        check_payload(serializer.serialize(batch), limit)
        yield batch


def class_ids_and_confidence(reply):
    """(class ids, probability of the chosen class) from a ``{"predictions": [...]}`` reply."""
    if "predictions" not in reply:
        raise ValueError(f"the endpoint replied without predictions: {str(reply)[:300]}")
    rows = reply["predictions"]
    ids = np.array([row["class_id"] for row in rows], dtype=np.int64)
    confidence = np.array([row["probabilities"][k] for row, k in zip(rows, ids)])
    return ids, confidence


def latency_summary(latencies, images, seconds):
    """p50/p95 request latency in ms and images/s over the scoring loop."""
    latencies = np.asarray(latencies) * 1000
    return {"p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p95_ms": round(float(np.percentile(latencies, 95)), 1),
            "requests": int(len(latencies)),
            "images_per_sec": round(images / max(seconds, 1e-9), 1)}


def per_class_accuracy(labels, predictions, class_names):
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return {name: (float(np.mean(predictions[labels == k] == k)) if np.any(labels == k) else None)
            for k, name in enumerate(class_names)}


def worst_mistakes(labels, predictions, confidence, count=16):
    """Indices of the wrong predictions made with the highest confidence."""
    wrong = np.flatnonzero(np.asarray(predictions) != np.asarray(labels))
    return wrong[np.argsort(-np.asarray(confidence)[wrong])][:count]


# ------------------------------------------------------------------------------ batch transform


def write_transform_input(images, folder, images_per_line=100):
    """JSON lines for batch transform: each line ``{"instances": [up to N images]}``, so each
    record is one request (SingleRecord) and the .out file has one output line per input line."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"instances": images[i:i + images_per_line].tolist()},
                        separators=(",", ":"))
             for i in range(0, len(images), images_per_line)]
    for line in lines:
        check_payload(line)
    path = folder / "eval.jsonl"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def transform_in_process(model, input_dir, output_dir, content_type="application/jsonlines",
                         split_type="Line", accept="application/jsonlines", runs_dir=RUNS_DIR):
    """Batch transform on the stand-in: for each file in input_dir, each line (split_type="Line")
    is one request; its reply becomes one line of ``<output_dir>/<file>.out``, as SageMaker writes
    with SingleRecord and assemble_with="Line"."""
    if split_type != "Line":
        raise ValueError(f"process-mode batch transform splits by line only, got {split_type!r}")
    predictor = serve_in_process(model, runs_dir)
    client = LoopbackRuntimeClient(standin_of(predictor).port)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for path in sorted(p for p in Path(input_dir).iterdir() if p.is_file()):
            replies = []
            for line in path.read_text().splitlines():
                if line.strip():
                    reply = client.invoke_endpoint(Body=line, EndpointName="transform",
                                                   ContentType=content_type, Accept=accept)
                    replies.append(reply["Body"].read().decode("utf-8").replace("\n", ""))
            out = output_dir / (path.name + ".out")
            write_atomic(out, "".join(reply + "\n" for reply in replies))
            written.append(out)
    finally:
        shut_down("process", predictor)
    return written


def transform_locations(mode, input_dir, output_dir, session=None, bucket=None):
    """(data, output_path) for ``transformer.transform``: file:// folders in local mode; in host
    mode input_dir is uploaded to S3 and the output goes next to it."""
    if mode != "host":
        return f"file://{Path(input_dir).resolve()}", f"file://{Path(output_dir).resolve()}"
    from sagemaker.s3 import S3Uploader
    from sagemaker.utils import name_from_base

    prefix = f"s3://{bucket or session.default_bucket()}/{name_from_base('cifar10-transform')}"
    data = S3Uploader.upload(str(input_dir), prefix + "/input", sagemaker_session=session)
    return data, prefix + "/output"


def fetch_transform_output(output_path, output_dir, session=None):
    """The .out files of a finished transform job, in output_dir (downloaded from S3 in host
    mode; local mode writes them there itself)."""
    if output_path.startswith("s3://"):
        from sagemaker.s3 import S3Downloader

        S3Downloader.download(output_path, str(output_dir), sagemaker_session=session)
    return sorted(Path(output_dir).glob("*.out"))


def read_transform_output(paths):
    """Class ids from .out files (one ``{"predictions": [...]}`` per line), in input order."""
    ids = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                ids.append(class_ids_and_confidence(json.loads(line))[0])
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)
