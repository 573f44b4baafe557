"""A stand-in for SageMaker's TensorFlow Serving container, for process mode (and a later local-mode
image): the same HTTP contract on loopback, with the SavedModels run by TensorFlow in-process.

    python -m workshop.serving.tfs_standin [serve] [--model-dir /opt/ml/model] [--port 8080]

The real container (aws/deep-learning-containers, tensorflow/inference/.../sagemaker/) runs
nginx (with a JavaScript module that rewrites requests) in front of tensorflow_model_server, plus
gunicorn + falcon for ``code/inference.py``. This stand-in keeps the contract and the Python
stack (gunicorn, falcon) and replaces what is not on PyPI (nginx's njs, tensorflow_model_server):

- models: every ``<dir>/<version>/saved_model.pb`` (model name: the folder's name, ``model`` for
  ``/opt/ml/model``) and ``<dir>/<name>/<version>/``; all numeric versions load, the highest is the
  default; no bundle at all fails at start with "no SavedModel bundles found".
- ``GET /ping``: 200 once the models are loaded.
- ``POST /invocations``: Content-Type ``application/json`` / ``application/jsonlines`` /
  ``application/jsons`` / ``text/csv`` (anything else: 415
  ``{"error": "Unsupported Media Type: …"}``); bodies with ``instances``/``inputs``/``examples``
  pass through, a bare list becomes ``{"instances": …}`` (wrapped once more unless it starts with
  ``[[``), JSON lines and CSV lines one instance per line; header
  ``X-Amzn-SageMaker-Custom-Attributes`` with ``tfs-model-name``, ``tfs-model-version``,
  ``tfs-method``.
- TF Serving's REST API (``/v1/models/<name>[/versions/<v>]:predict``, ``GET /v1/models/<name>``):
  ``instances`` -> ``{"predictions": …}``, ``inputs`` -> ``{"outputs": …}``, ``{"error": …}`` with
  400 (bad input, the model's own error text) or 404 (unknown model or version).
- ``code/inference.py`` in the model folder: ``handler(data, context)`` or ``input_handler`` +
  ``output_handler`` with the container's ``Context``; the composed handler posts to
  ``context.rest_uri`` with ``requests`` as the container does; exceptions become 500.

Not reproduced: classify/regress (``examples``) signatures, gRPC, batching, multi-model endpoints,
``code/requirements.txt`` installs, TF Serving's exact wording of JSON and dtype errors.
"""

import argparse
import importlib.util
import json
import logging
import os
import re
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np

log = logging.getLogger("tfs_standin")

DEFAULT_MODEL_DIR = "/opt/ml/model"
DEFAULT_PORT = 8080
JSON_TYPES = ("application/json", "application/jsonlines", "application/jsons")
CSV_TYPE = "text/csv"
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
DEFAULT_SIGNATURE = "serving_default"
METHODS = ("predict", "classify", "regress")
NO_MODELS = "no SavedModel bundles found"

# The fields the container's python_service hands to inference.py handlers (tfs_utils.Context).
Context = namedtuple("Context", "model_name, model_version, method, rest_uri, grpc_port, channel, "
                                "custom_attributes, request_content_type, accept_header, "
                                "content_length")


class ServingError(Exception):
    """An error TF Serving answers with ``{"error": message}`` and an HTTP status."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class NoModelsError(RuntimeError):
    """The model folder holds no ``<version>/saved_model.pb``."""


# ------------------------------------------------------------------------------ model discovery


def find_models(model_dir):
    """{name: {version: path}} for every ``<model path>/<digits>/saved_model.pb`` under model_dir.

    As the container: a version folder's parent is the model and its folder name the model's name
    (``model`` for ``/opt/ml/model/1/``); version numbers lose leading zeros.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise NoModelsError(f"{NO_MODELS}: {root} is not a folder")
    models = {}
    for pb in sorted(root.rglob("saved_model.pb")):
        version_dir = pb.parent
        if not version_dir.name.isdigit() or "code" in version_dir.relative_to(root).parts:
            continue
        name = version_dir.parent.name
        models.setdefault(name, {})[str(int(version_dir.name))] = version_dir
    if not models:
        raise NoModelsError(f"{NO_MODELS} in {root}: expected {root}/<version>/saved_model.pb or "
                            f"{root}/<name>/<version>/saved_model.pb (is model.tar.gz empty?)")
    return models


def default_model_name(models):
    """SAGEMAKER_TFS_DEFAULT_MODEL_NAME, else the first model found (sorted by path here)."""
    name = os.environ.get("SAGEMAKER_TFS_DEFAULT_MODEL_NAME", "None")
    return next(iter(models)) if name == "None" else name


# ------------------------------------------------------------------------------ request rewriting


def parse_custom_attributes(header):
    """``tfs-model-name=x,tfs-method=predict,other`` -> {"tfs-model-name": "x", ...}."""
    attributes = {}
    for match in re.findall(r"tfs-[a-z\-]+=[^,]+", header or ""):
        key, _, value = match.partition("=")
        attributes[key] = value.strip()
    return attributes


def rewrite_invocation(content_type, body):
    """The nginx module's rewriting of an /invocations body into a TF Serving JSON request."""
    if content_type in JSON_TYPES:
        if re.search(r'"(instances|inputs|examples)"\s*:', body):
            return body
        if re.search(r"[}\]]\s*[\[{]", body):  # objects or lists separated by whitespace only
            return json_lines_request(body)
        if not re.match(r"^\s*\[\s*\[", body):
            body = "[" + body + "]"
        return '{"instances":' + body + "}"
    if content_type == CSV_TYPE:
        return csv_request(body)
    raise ServingError(415, f"Unsupported Media Type: {content_type or 'Unknown'}")


def json_lines_request(body):
    lines = [line.strip() for line in body.strip().splitlines() if line.strip()]
    if len(lines) == 1:
        return '{"instances":' + lines[0] + "}"
    return '{"instances":[' + ",".join(lines) + "]}"


def csv_request(body):
    """One instance per line; a line with several columns becomes a list. Non-numeric data
    (first field neither a number nor quoted) is quoted field by field."""
    needs_quotes = not re.match(r'^\s*("|[\d.Ee+\-]+)', body)
    instances = []
    for line in body.strip().splitlines():
        line = line.strip()
        if not line:
            continue
        fields = line.split(",")
        if needs_quotes:
            fields = [json.dumps(field) for field in fields]
        instances.append("[" + ",".join(fields) + "]" if len(fields) > 1 else fields[0])
    return '{"instances":[' + ",".join(instances) + "]}"


# ------------------------------------------------------------------------------ TF Serving REST


class ModelServer:
    """The SavedModels of a folder, loaded once, answering TF Serving's REST predict requests."""

    def __init__(self, model_dir):
        import tensorflow as tf

        self.tf = tf
        self.paths = find_models(model_dir)
        self.default_name = default_model_name(self.paths)
        self.loaded = {}
        for name, versions in self.paths.items():
            for version, path in versions.items():
                log.info("loading model %s version %s from %s", name, version, path)
                self.loaded[(name, version)] = tf.saved_model.load(str(path))

    def status(self, name):
        if name not in self.paths:
            raise ServingError(404, f"Could not find any versions of model {name}")
        return {"model_version_status": [
            {"version": version, "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}
            for version in sorted(self.paths[name], key=int)]}

    def signature(self, name, version, signature_name):
        if name not in self.paths or (version is not None and version not in self.paths[name]):
            spec = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise ServingError(404, f"Servable not found for request: {spec}")
        version = version or max(self.paths[name], key=int)
        signatures = self.loaded[(name, version)].signatures
        if signature_name not in signatures:
            raise ServingError(400, f'Serving signature name: "{signature_name}" not found in '
                                    f"signature def")
        return signatures[signature_name]

    def handle(self, name, version, method, body):
        """(status, reply dict) for a TF Serving REST request body (str or bytes)."""
        try:
            return 200, self.predict(name, version, method, body)
        except ServingError as err:
            return err.status, {"error": err.message}

    def predict(self, name, version, method, body):
        if method not in METHODS:
            raise ServingError(404, f"Malformed request: POST /v1/models/{name}:{method}")
        try:
            request = json.loads(body)
        except ValueError as err:
            raise ServingError(400, f"JSON Parse error: {err}") from None
        if not isinstance(request, dict):
            raise ServingError(400, "JSON Value: the request must be a JSON object")
        signature = self.signature(name, version, request.get("signature_name", DEFAULT_SIGNATURE))
        if method != "predict":
            raise ServingError(400, f"Expected {method} signature method_name to be "
                                    f"tensorflow/serving/{method}. Was: tensorflow/serving/predict "
                                    f"(the model has only a predict signature)")
        row = "instances" in request
        if row == ("inputs" in request):
            raise ServingError(400, "Missing 'inputs' or 'instances' key" if not row else
                               "Not both 'instances' and 'inputs' can be specified")
        specs = signature.structured_input_signature[1]
        tensors = self.tensors(request["instances" if row else "inputs"], specs, row)
        try:
            outputs = signature(**tensors)
        except (TypeError, ValueError, self.tf.errors.InvalidArgumentError) as err:
            raise ServingError(400, str(err).strip()) from None
        outputs = {key: value.numpy().tolist() for key, value in outputs.items()}
        if not row:
            return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
        if len(outputs) == 1:
            return {"predictions": next(iter(outputs.values()))}
        count = len(next(iter(outputs.values())))
        return {"predictions": [{key: value[i] for key, value in outputs.items()}
                                for i in range(count)]}

    def tensors(self, data, specs, row):
        """Row format: a list of instances (values, or {input: value} objects); columnar: a value
        or {input: value}. Returns {input name: tensor of the signature's dtype}."""
        names = sorted(specs)
        if row:
            if not isinstance(data, list):
                raise ServingError(400, "'instances' must be a JSON list")
            if len(names) > 1 or (data and all(isinstance(item, dict) for item in data)):
                missing = [i for i, item in enumerate(data)
                           if not isinstance(item, dict) or set(item) != set(names)]
                if missing:
                    raise ServingError(400, f"instance {missing[0]} must be an object with the "
                                            f"signature's inputs {names}")
                values = {name: [item[name] for item in data] for name in names}
            else:
                values = {names[0]: data}
        elif isinstance(data, dict) and set(data) == set(names):
            values = data
        elif len(names) == 1:
            values = {names[0]: data}
        else:
            raise ServingError(400, f"'inputs' must be an object with the signature's inputs "
                                    f"{names}")
        return {name: self.tensor(name, values[name], specs[name]) for name in names}

    def tensor(self, name, value, spec):
        dtype = spec.dtype
        try:
            array = np.asarray(value)
        except ValueError:
            raise ServingError(400, f"input '{name}': the instances do not all have the same "
                                    f"shape") from None
        if array.dtype.kind not in "biuf":
            raise ServingError(400, f"input '{name}' expects {dtype.name} numbers, got "
                                    f"{array.dtype.kind == 'U' and 'strings' or 'mixed values'}")
        if dtype.is_integer and array.size:
            if array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0):
                raise ServingError(400, f"input '{name}' expects {dtype.name} values, got a "
                                        f"non-integer number")
            info = np.iinfo(dtype.as_numpy_dtype)
            if array.min() < info.min or array.max() > info.max:
                raise ServingError(400, f"input '{name}' expects {dtype.name} values in "
                                        f"[{info.min}, {info.max}], got values from "
                                        f"{array.min()} to {array.max()}")
        if not spec.shape.is_compatible_with(array.shape):
            expected = [d if d is not None else -1 for d in spec.shape.as_list()]
            raise ServingError(400, f"input '{name}' expects shape {expected} (-1: any), got "
                                    f"{list(array.shape)}")
        return self.tf.constant(array.astype(dtype.as_numpy_dtype))


# ------------------------------------------------------------------------------ inference.py


def load_handlers(model_dir):
    """The handler from ``<model_dir>/code/inference.py``, or None when there is none."""
    script = Path(model_dir) / "code" / "inference.py"
    if not script.exists():
        return None
    for folder in (script.parent / "lib", script.parent):  # the container's --pythonpath
        if folder.is_dir() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    if (script.parent / "requirements.txt").exists():
        log.warning("the stand-in does not install code/requirements.txt: install it yourself")
    spec = importlib.util.spec_from_file_location("inference", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "handler"):
        return module.handler
    if hasattr(module, "input_handler") and hasattr(module, "output_handler"):
        import requests

        def handler(data, context):
            response = requests.post(context.rest_uri, data=module.input_handler(data, context))
            return module.output_handler(response, context)

        return handler
    raise NotImplementedError("Handlers are not implemented correctly in user script.")


# ------------------------------------------------------------------------------ HTTP (falcon)


def make_app(model_dir, port):
    """The falcon WSGI app: /ping, /invocations and TF Serving's REST routes."""
    import falcon

    server = ModelServer(model_dir)
    handler = load_handlers(model_dir)

    def reply(resp, status, payload, content_type="application/json"):
        resp.status = status
        resp.content_type = content_type
        resp.text = payload if isinstance(payload, str) else json.dumps(payload)

    class Ping:
        def on_get(self, req, resp):
            resp.status = 200

    class Invocations:
        def on_post(self, req, resp):
            attributes = parse_custom_attributes(req.get_header(CUSTOM_ATTRIBUTES_HEADER))
            name = attributes.get("tfs-model-name", server.default_name)
            version = attributes.get("tfs-model-version")
            method = attributes.get("tfs-method", "predict")
            if handler is not None:
                return self.python_service(req, resp, attributes, name, version, method)
            content_type = req.get_header("Content-Type")
            try:
                body = rewrite_invocation(content_type, req.bounded_stream.read().decode("utf-8"))
            except ServingError as err:
                return reply(resp, err.status, {"error": err.message})
            status, payload = server.handle(name, version, method, body)
            accept = [t.strip() for t in (req.get_header("Accept") or "").split(",") if t.strip()]
            json_accept = {"application/json", "application/jsonlines"} & set(accept)
            reply(resp, status, payload, accept[0] if json_accept else "application/json")

        def python_service(self, req, resp, attributes, name, version, method):
            rest_uri = f"http://127.0.0.1:{port}/v1/models/{name}"
            rest_uri += (f"/versions/{version}" if version else "") + f":{method}"
            context = Context(attributes.get("tfs-model-name"), version,
                              attributes.get("tfs-method"), rest_uri, None, None,
                              req.get_header(CUSTOM_ATTRIBUTES_HEADER),
                              req.get_header("Content-Type") or "application/json",
                              req.get_header("Accept") or "application/json", req.content_length)
            try:
                body, content_type = handler(req.bounded_stream, context)
            except Exception as err:  # the container answers any handler failure with 500
                log.exception("exception handling request: %s", err)
                return reply(resp, 500, {"error": str(err)})
            resp.status = 200
            resp.content_type = content_type
            resp.data = body if isinstance(body, bytes) else str(body).encode("utf-8")

    class Rest:
        def on_get(self, req, resp, name):
            try:
                reply(resp, 200, server.status(name))
            except ServingError as err:
                reply(resp, err.status, {"error": err.message})

        def on_post(self, req, resp, name, method, version=None):
            reply(resp, *server.handle(name, version, method, req.bounded_stream.read()))

    app = falcon.App()
    app.add_route("/ping", Ping())
    app.add_route("/invocations", Invocations())
    rest = Rest()
    app.add_route("/v1/models/{name}", rest)
    app.add_route("/v1/models/{name}:{method}", rest)
    app.add_route("/v1/models/{name}/versions/{version}:{method}", rest)
    return app


def serve(model_dir, port, host="127.0.0.1", threads=4, timeout=60):
    """Run gunicorn (one worker, ``threads`` threads) with the app until SIGTERM/SIGINT.

    Several threads: a composed inference.py handler posts back to this same server.
    """
    from gunicorn.app.base import BaseApplication

    find_models(model_dir)  # fail before forking when there is nothing to serve

    class GunicornApp(BaseApplication):
        def load_config(self):
            settings = {"bind": f"{host}:{port}", "workers": 1, "worker_class": "gthread",
                        "threads": threads, "timeout": timeout, "graceful_timeout": 5,
                        "loglevel": "warning", "proc_name": "tfs-standin"}
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self):  # in the worker: TensorFlow is not fork-safe once initialised
            return make_app(model_dir, port)

    GunicornApp().run()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="serve", choices=["serve"],
                        help="what SageMaker runs in an inference container")
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)
    parser.add_argument("--port", type=int,
                        default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", DEFAULT_PORT)))
    parser.add_argument("--host", help="address to listen on; default: all interfaces when "
                        "serving /opt/ml/model (inside a container, as the real one), else "
                        "127.0.0.1")
    args = parser.parse_args(argv)
    if args.host is None:
        args.host = "0.0.0.0" if args.model_dir == DEFAULT_MODEL_DIR else "127.0.0.1"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        serve(args.model_dir, args.port, args.host)
    except NoModelsError as err:
        print(f"tfs_standin: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
