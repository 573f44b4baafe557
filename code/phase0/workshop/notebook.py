"""The cells every training notebook shares, as short calls: start, show a run, diff a script,
predict with the artifact, print the RESULT line. The SDK calls stay in the notebooks."""

import difflib
import json
import os
import time

from . import SRC_DIR, entry_points, environment, jobs, records, resolve, sdk_version


def start(mode, data_dir, role_arn="", horovod=False):
    """Check that this kernel has SageMaker SDK v2 (sdk_version.WrongSDK names the kernel) and
    that MODE can run here (ModeUnavailable says what is missing; ``horovod``: the notebook's
    ranks need Horovod in process mode); the data folder."""
    sdk_version.require(2)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # hide TF start-up notices, here and in jobs
    environment.check_mode_available(mode, role=role_arn or None, horovod=horovod)
    return resolve(data_dir)


def script_diff(script):
    """Unified diff of src/<script> against the script it extends (the registry's diff_base)."""
    base = entry_points.entry_point(script).diff_base
    if base is None:
        raise ValueError(f"{script} is a single-process script: it has no base to diff against")
    old = (SRC_DIR / base).read_text().splitlines(keepends=True)
    new = (SRC_DIR / script).read_text().splitlines(keepends=True)
    return "".join(difflib.unified_diff(old, new, f"src/{base}", f"src/{script}"))


def print_diff(script):
    print(script_diff(script))


def progress(estimator):
    """A progress bar (epochs, images/s, ETA) fed by the logs ``estimator.fit`` streams."""
    from .progress import stdout_progress

    return stdout_progress(estimator.base_job_name or "job")


def show_run(result, data_dir, epochs):
    """One line of figures and the per-epoch curves. A job stopped at max_run still has a model:
    it is evaluated here on the eval split, and the line says how to continue the job."""
    from . import dataset, plots
    from .serving import inference

    if result.status == "Stopped":
        signature = inference.load_signature(result.model_artifact)
        images, labels = dataset.read_examples(data_dir, "eval", count=None)
        accuracy = float((inference.predict_classes(signature, images) == labels).mean())
        result.metrics["eval_accuracy"] = round(accuracy, 4)  # of the model saved at the stop
        done = result.stopped_after_epoch or 0
        exported = inference.exported_epoch(result.model_artifact)
        held = ("the weights it had" if result.metrics.get("stopped_by") == "SIGTERM"
                else f"the model it exported after epoch {exported}")
        print(f"job {result.job_name} was stopped ({result.stop_reason}) after epoch {done} of "
              f"{epochs}; its model.tar.gz holds {held}. To continue it from epoch "
              f"{done + 1}, run this notebook again with RESUME_FROM = {result.job_name!r} and "
              f"the same EPOCHS (and a MAX_RUN that fits the rest).")
    print(f"job {result.job_name}: eval accuracy {result.metrics['eval_accuracy']:.4f}, "
          f"{result.metrics.get('images_per_sec') or 0:.0f} images/s, "
          f"{result.wall_seconds:.0f} s")
    if result.history:
        plots.training_curves(result.history, result.job_name)


def show_predictions(result, data_dir, count=16):
    """Load model.tar.gz's serving signature and predict eval images with it."""
    from . import dataset, plots
    from .serving import inference

    signature = inference.load_signature(result.model_artifact)
    images, labels = dataset.read_examples(data_dir, "eval", count)
    plots.image_grid(images, labels, inference.predict_classes(signature, images), rows=2)


def finish(notebook, result):
    """Record the run (runs/results/) and print the notebook's RESULT line."""
    records.save_result(notebook, result)
    print("RESULT " + json.dumps(records.headline(result)))


def record_kernel_run(notebook, eval_accuracy, epochs, wall_seconds):
    """1.1 trains in the kernel, not as a job: record it beside the jobs for 5.0."""
    result = jobs.JobResult(
        mode="kernel", job_name=f"cifar10-scratch-{time.strftime('%Y-%m-%d-%H-%M-%S')}",
        metrics={"eval_accuracy": round(float(eval_accuracy), 4), "epochs": epochs,
                 "workers": 1},
        wall_seconds=round(wall_seconds, 1), instance_type="this machine")
    return records.save_result(notebook, result)
