"""The TF Serving container stand-in: its contract (model discovery, request rewriting, TF Serving
replies, inference.py handlers), the SDK's TensorFlowPredictor against it, and bad requests.

Three real servers (gunicorn + falcon + TensorFlow) on loopback, each started once per module:
  root     model.tar.gz with ``1/`` at the root, deployed by deploy.serve_in_process (name "model")
  named    ``cifar/1``, ``cifar/2`` and ``doubler/1`` (a float model with one output)
  handlers ``1/`` plus ``code/inference.py`` (input_handler/output_handler)
Every bad request is followed by a good one: the server must still serve.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow as tf
import urllib3
from aws_fixtures import *  # noqa: F401,F403 - sdk_offline
from botocore.exceptions import ClientError

from workshop import PHASE0_DIR, jobs
from workshop.serving import deploy, tfs_standin
from workshop.serving.tfs_standin import NO_MODELS, NoModelsError, find_models, rewrite_invocation

HTTP = urllib3.PoolManager()
JSON = "application/json"

INFERENCE_PY = '''
import io
import json


def input_handler(data, context):
    if context.request_content_type != "application/json":
        raise ValueError("inference.py takes application/json only, got "
                         + context.request_content_type)
    return data.read().decode("utf-8")


def output_handler(response, context):
    if response.status_code != 200:
        raise ValueError(response.content.decode("utf-8"))
    reply = json.loads(response.content)
    reply["context"] = {field: getattr(context, field) for field in (
        "model_name", "model_version", "method", "rest_uri", "custom_attributes",
        "request_content_type", "accept_header", "content_length")}
    return json.dumps(reply), "application/json"
'''


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny CIFAR-shaped classifier saved by the training scripts' own export (cifar.serving)."""
    from cifar.serving import save_for_serving

    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((32, 32, 3), dtype="uint8")
    x = tf.keras.layers.Rescaling(1 / 255)(inputs)
    x = tf.keras.layers.Conv2D(4, 3, strides=4)(x)
    outputs = tf.keras.layers.Dense(10)(tf.keras.layers.Flatten()(x))
    folder = tmp_path_factory.mktemp("saved") / "model"
    save_for_serving(tf.keras.Model(inputs, outputs), str(folder))
    return folder / "1"


@pytest.fixture(scope="module")
def doubler(tmp_path_factory):
    """float32 [n, 3] -> {"doubled": 2x}: one input, one output."""
    module = tf.Module()
    module.double = tf.function(lambda x: {"doubled": 2.0 * x},
                                input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    path = tmp_path_factory.mktemp("doubler") / "1"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.double})
    return path


def pack(folder, tar_path):
    with tarfile.open(tar_path, "w:gz") as tar:
        for item in sorted(folder.iterdir()):
            tar.add(item, arcname=item.name)
    return tar_path


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def root_predictor(saved_model, sdk_offline, tmp_path_factory):
    """deploy.serve_in_process on a model.tar.gz holding 1/: the SDK's TensorFlowPredictor."""
    from sagemaker.tensorflow import TensorFlowModel

    folder = tmp_path_factory.mktemp("root")
    shutil.copytree(saved_model, folder / "content" / "1")
    artifact = pack(folder / "content", folder / "model.tar.gz")
    model = TensorFlowModel(model_data=f"file://{artifact}", framework_version="2.19",
                            role=jobs.OFFLINE_ROLE, sagemaker_session=jobs.session_for("process"))
    predictor = deploy.serve_in_process(model, runs_dir=folder / "runs")
    yield predictor
    deploy.shut_down("process", predictor)


@pytest.fixture(scope="module")
def root_url(root_predictor):
    return deploy.standin_of(root_predictor).url


@pytest.fixture(scope="module")
def named_url(saved_model, doubler, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("named") / "model"
    shutil.copytree(saved_model, model_dir / "cifar" / "1")
    shutil.copytree(saved_model, model_dir / "cifar" / "0002")  # leading zeros: version 2
    shutil.copytree(doubler, model_dir / "doubler" / "1")
    standin = deploy.start_standin(model_dir)
    yield standin.url
    deploy.stop_standin(standin)


@pytest.fixture(scope="module")
def handlers_url(saved_model, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("handlers") / "model"
    shutil.copytree(saved_model, model_dir / "1")
    (model_dir / "code").mkdir()
    (model_dir / "code" / "inference.py").write_text(INFERENCE_PY)
    standin = deploy.start_standin(model_dir)
    yield standin.url
    deploy.stop_standin(standin)


def post(url, body, content_type=JSON, path="/invocations", **headers):
    """(status, parsed JSON reply, content type) of a raw POST."""
    if not isinstance(body, (str, bytes)):
        body = json.dumps(body)
    reply = HTTP.request("POST", url + path, body=body,
                         headers={"Content-Type": content_type, **headers})
    return reply.status, json.loads(reply.data), reply.headers.get("Content-Type")


def assert_still_serving(url, images, path="/invocations", **headers):
    assert HTTP.request("GET", url + "/ping").status == 200
    status, reply, _ = post(url, {"instances": images[:2].tolist()}, path=path, **headers)
    assert status == 200 and len(reply["predictions"]) == 2


def expected(saved_model, images):
    signature = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    outputs = signature(image=tf.constant(images))
    return outputs["class_id"].numpy(), outputs["probabilities"].numpy()


# ------------------------------------------------------------------------------ contract, offline


def test_model_discovery_follows_the_container(tmp_path, saved_model, doubler):
    root = tmp_path / "model"
    shutil.copytree(saved_model, root / "1")
    shutil.copytree(saved_model, root / "code" / "1")  # code/ is inference.py's, never a model
    assert find_models(root) == {"model": {"1": root / "1"}}

    named = tmp_path / "many"
    shutil.copytree(saved_model, named / "cifar" / "007")
    shutil.copytree(doubler, named / "doubler" / "3")
    (named / "cifar" / "latest").mkdir()  # not a version: ignored
    assert find_models(named) == {"cifar": {"7": named / "cifar" / "007"},
                                  "doubler": {"3": named / "doubler" / "3"}}

    (tmp_path / "empty").mkdir()
    with pytest.raises(NoModelsError, match=NO_MODELS):
        find_models(tmp_path / "empty")


@pytest.mark.parametrize("content_type, body, rewritten", [
    (JSON, '{"instances": [1, 2]}', '{"instances": [1, 2]}'),  # TF Serving JSON passes through
    (JSON, '{"inputs": {"x": [1]}}', '{"inputs": {"x": [1]}}'),
    (JSON, "[1, 2, 3]", '{"instances":[[1, 2, 3]]}'),  # one instance
    (JSON, "[[1, 2], [3, 4]]", '{"instances":[[1, 2], [3, 4]]}'),  # already a list of instances
    (JSON, '{"a": 1}', '{"instances":[{"a": 1}]}'),
    ("application/jsonlines", "[1, 2]\n[3, 4]\n", '{"instances":[[1, 2],[3, 4]]}'),
    ("application/jsonlines", "[1, 2]", '{"instances":[[1, 2]]}'),
    ("text/csv", "1,2,3\n4,5,6\n", '{"instances":[[1,2,3],[4,5,6]]}'),
    ("text/csv", "7\n8", '{"instances":[7,8]}'),
    ("text/csv", "cat,dog\n", '{"instances":[["cat","dog"]]}'),
])
def test_invocations_are_rewritten_as_the_containers_nginx_does(content_type, body, rewritten):
    assert rewrite_invocation(content_type, body) == rewritten


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-npy", None,
                                          "application/json; charset=utf-8"])
def test_other_content_types_are_415(content_type):
    with pytest.raises(tfs_standin.ServingError) as caught:
        rewrite_invocation(content_type, "[1]")
    assert caught.value.status == 415
    assert caught.value.message == f"Unsupported Media Type: {content_type or 'Unknown'}"


def test_custom_attributes_are_parsed_as_the_container_does():
    header = "tfs-model-name=cifar,tfs-model-version=2,trace=abc,tfs-method=predict"
    assert tfs_standin.parse_custom_attributes(header) == {
        "tfs-model-name": "cifar", "tfs-model-version": "2", "tfs-method": "predict"}


# ------------------------------------------------------------------------------ served


def test_sdk_predictor_gets_the_models_predictions(root_predictor, root_url, saved_model, images):
    from sagemaker.tensorflow import TensorFlowPredictor

    assert isinstance(root_predictor, TensorFlowPredictor)
    assert HTTP.request("GET", root_url + "/ping").status == 200
    reply = root_predictor.predict(images)  # JSON {"instances": [...]} as the SDK serializes it
    ids, probabilities = expected(saved_model, images)
    assert [row["class_id"] for row in reply["predictions"]] == ids.tolist()
    np.testing.assert_allclose([row["probabilities"] for row in reply["predictions"]],
                               probabilities, rtol=1e-5)
    served_ids, confidence = deploy.class_ids_and_confidence(reply)
    assert served_ids.tolist() == ids.tolist()
    np.testing.assert_allclose(confidence, probabilities[np.arange(len(ids)), ids], rtol=1e-5)

    columnar = root_predictor.predict({"inputs": {"image": images[:3].tolist()}})
    assert columnar["outputs"]["class_id"] == ids[:3].tolist()
    assert json.loads(HTTP.request("GET", root_url + "/v1/models/model").data) == {
        "model_version_status": [{"version": "1", "state": "AVAILABLE",
                                  "status": {"error_code": "OK", "error_message": ""}}]}


def test_one_image_alone_is_read_as_32_instances(root_url, images):
    """Why 4.1 sends batches: a (32, 32, 3) list starts with [[, so it is taken as 32 rows."""
    status, reply, _ = post(root_url, images[0].tolist())
    assert status == 400 and "error" in reply
    status, reply, _ = post(root_url, images[:1].tolist())  # a batch of one
    assert status == 200 and len(reply["predictions"]) == 1


def test_custom_attributes_pick_the_model_and_version(named_url, saved_model, images):
    ids, _ = expected(saved_model, images)
    for attributes in ("", "tfs-model-name=cifar", "tfs-model-name=cifar,tfs-model-version=2",
                       "tfs-model-version=1"):
        headers = {"X-Amzn-SageMaker-Custom-Attributes": attributes} if attributes else {}
        status, reply, _ = post(named_url, {"instances": images.tolist()}, **headers)
        assert status == 200
        assert [row["class_id"] for row in reply["predictions"]] == ids.tolist()
    doubler = {"X-Amzn-SageMaker-Custom-Attributes": "tfs-model-name=doubler"}
    # one output: predictions are plain values, and CSV / JSON lines are one instance per line
    status, reply, _ = post(named_url, "1,2,3\n4,5,6\n", "text/csv", **doubler)
    assert (status, reply) == (200, {"predictions": [[2.0, 4.0, 6.0], [8.0, 10.0, 12.0]]})
    status, reply, content_type = post(named_url, "[1, 2, 3]\n[0, 0, 1]", "application/jsonlines",
                                       Accept="application/jsonlines", **doubler)
    assert (status, reply) == (200, {"predictions": [[2.0, 4.0, 6.0], [0.0, 0.0, 2.0]]})
    assert content_type == "application/jsonlines"
    status, reply, _ = post(named_url, {"inputs": [[0.5, 1, 1.5]]}, **doubler)
    assert (status, reply) == (200, {"outputs": [[1.0, 2.0, 3.0]]})
    status, reply, _ = post(named_url, {"instances": [[1, 1, 1]]},
                            path="/v1/models/doubler/versions/1:predict")  # TF Serving's REST
    assert (status, reply) == (200, {"predictions": [[2.0, 2.0, 2.0]]})


def test_inference_py_handlers_get_the_containers_context(handlers_url, saved_model, images):
    ids, _ = expected(saved_model, images)
    body = json.dumps({"instances": images[:3].tolist()})
    status, reply, _ = post(handlers_url, body, Accept=JSON,
                            **{"X-Amzn-SageMaker-Custom-Attributes": "tfs-method=predict,id=7"})
    assert status == 200
    assert [row["class_id"] for row in reply["predictions"]] == ids[:3].tolist()
    port = handlers_url.rsplit(":", 1)[1]
    assert reply["context"] == {
        "model_name": None, "model_version": None, "method": "predict",
        "rest_uri": f"http://127.0.0.1:{port}/v1/models/model:predict",
        "custom_attributes": "tfs-method=predict,id=7", "request_content_type": JSON,
        "accept_header": JSON, "content_length": len(body)}


# ------------------------------------------------------------------------------ bad requests


def test_unsupported_content_type_is_415(root_url, images):
    status, reply, _ = post(root_url, "1 2 3", "text/plain")
    assert (status, reply) == (415, {"error": "Unsupported Media Type: text/plain"})
    assert_still_serving(root_url, images)


def test_malformed_json_is_400(root_url, images):
    status, reply, _ = post(root_url, '{"instances": [[1, 2}')
    assert status == 400 and reply["error"].startswith("JSON Parse error")
    assert_still_serving(root_url, images)


def test_wrong_shape_is_400_with_the_models_error(root_url, images):
    status, reply, _ = post(root_url, {"instances": images[:2, :16].tolist()})  # 16 x 32 images
    assert (status, reply) == (400, {"error": "input 'image' expects shape [-1, 32, 32, 3] "
                                              "(-1: any), got [2, 16, 32, 3]"})
    status, reply, _ = post(root_url, {"instances": [[1, 2, 3], [4, 5]]})  # ragged
    assert status == 400 and "same shape" in reply["error"]
    assert_still_serving(root_url, images)


@pytest.mark.parametrize("value, problem", [(300, "[0, 255]"), (-1, "[0, 255]"),
                                            (0.5, "non-integer"), ("red", "strings")])
def test_wrong_dtype_is_400_naming_the_input(root_url, images, value, problem):
    batch = images[:1].tolist()
    batch[0][0][0][0] = value
    status, reply, _ = post(root_url, {"instances": batch})
    assert status == 400
    assert "input 'image'" in reply["error"] and "uint8" in reply["error"]
    assert problem in reply["error"]
    assert_still_serving(root_url, images)


def test_unknown_model_or_version_is_404(named_url, root_predictor, images):
    for attributes, servable in [
            ("tfs-model-name=resnet", "Latest(resnet)"),
            ("tfs-model-name=cifar,tfs-model-version=9", "Specific(cifar, 9)")]:
        status, reply, _ = post(named_url, {"instances": images[:1].tolist()},
                                **{"X-Amzn-SageMaker-Custom-Attributes": attributes})
        assert (status, reply) == (404, {"error": f"Servable not found for request: {servable}"})
    assert_still_serving(named_url, images)
    # Through the SDK, as on a real endpoint: botocore's ModelError with the container's reply.
    root_predictor._model_attributes = "tfs-model-version=2"
    try:
        with pytest.raises(ClientError, match=r"\(404\).*Specific\(model, 2\)") as caught:
            root_predictor.predict(images[:1])
        assert caught.value.response["Error"]["Code"] == "ModelError"
    finally:
        root_predictor._model_attributes = None


def test_payload_over_6_mb_is_refused_before_sending(root_predictor):
    too_many = np.full((600, 32, 32, 3), 255, np.uint8)  # ~11 MB of JSON
    with pytest.raises(deploy.PayloadTooLarge, match=r"over InvokeEndpoint's 6 MB limit: send "
                                                     r"fewer images per request"):
        next(deploy.payload_batches(too_many, 600, root_predictor.serializer))
    with pytest.raises(deploy.PayloadTooLarge, match="4 MB"):
        next(deploy.payload_batches(too_many, 300, root_predictor.serializer,
                                    deploy.payload_limit(serverless=True)))
    assert len(list(deploy.payload_batches(too_many, 100, root_predictor.serializer))) == 6


def test_inference_py_that_raises_is_500(handlers_url, images):
    status, reply, _ = post(handlers_url, "1,2,3", "text/csv")
    assert (status, reply) == (500, {"error": "inference.py takes application/json only, got "
                                              "text/csv"})
    status, reply, _ = post(handlers_url, {"instances": [[1, 2, 3]]})  # the model's 400 ...
    assert status == 500 and "error" in reply  # ... raised again by output_handler
    assert_still_serving(handlers_url, images)


@pytest.mark.parametrize("content", ["empty", "corrupt", "no-model"])
def test_bad_model_tar_fails_at_start_saying_no_savedmodel(tmp_path, content):
    artifact = tmp_path / "model.tar.gz"
    if content == "empty":
        artifact.write_bytes(b"")
    elif content == "corrupt":
        artifact.write_bytes(b"\x1f\x8b\x08\x00 this is not a tarball")
    else:
        (tmp_path / "content").mkdir()
        (tmp_path / "content" / "README").write_text("no model here")
        pack(tmp_path / "content", artifact)
    with pytest.raises(RuntimeError, match=NO_MODELS):
        deploy.unpack_for_serving(artifact, tmp_path / "model")


def test_server_refuses_to_start_without_models(tmp_path):
    (tmp_path / "model").mkdir()
    started = subprocess.run(
        [sys.executable, "-m", "workshop.serving.tfs_standin", "serve", "--model-dir",
         str(tmp_path / "model"), "--port", "1"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(PHASE0_DIR)})  # this checkout's workshop package
    assert started.returncode == 1
    assert f"{NO_MODELS} in {tmp_path / 'model'}" in started.stderr


def test_inference_py_handler_or_nothing(tmp_path):
    """``handler(data, context)`` is used as is; a script with neither form fails at start."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "inference.py").write_text(
        "def handler(data, context):\n"
        "    return data.read().upper(), context.accept_header\n")
    context = tfs_standin.Context(*[None] * 8, "text/plain", 3)
    handler = tfs_standin.load_handlers(tmp_path)
    assert handler(io.BytesIO(b"abc"), context) == (b"ABC", "text/plain")
    (code / "inference.py").write_text("def input_handler(data, context):\n    return data\n")
    with pytest.raises(NotImplementedError, match="Handlers are not implemented correctly"):
        tfs_standin.load_handlers(tmp_path)
    assert tfs_standin.load_handlers(tmp_path / "elsewhere") is None  # no code/: TF Serving alone


def test_classify_on_a_predict_signature_is_400(root_url, images):
    status, reply, _ = post(root_url, {"instances": images[:1].tolist()},
                            **{"X-Amzn-SageMaker-Custom-Attributes": "tfs-method=classify"})
    assert status == 400 and "tensorflow/serving/classify" in reply["error"]
    assert_still_serving(root_url, images)
