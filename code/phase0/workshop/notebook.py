"""The cells every training notebook shares, as short calls: start, show a run, diff a script,
predict with the artifact, print the RESULT line. The SDK calls stay in the notebooks."""

import difflib
import json
import os
import time

from . import SRC_DIR, entry_points, jobs, resolve


def start(mode, data_dir, role_arn=""):
    """Check that MODE can run here (ModeUnavailable says what is missing); the data folder."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # hide TF start-up notices, here and in jobs
    jobs.check_mode_available(mode, role=role_arn or None)
    return resolve(data_dir)


def script_diff(script):
    """Unified diff of src/<script> against its single-process sibling (from the registry)."""
    sibling = entry_points.entry_point(script).sibling
    if sibling is None:
        raise ValueError(f"{script} has no single-process sibling to diff against")
    old = (SRC_DIR / sibling).read_text().splitlines(keepends=True)
    new = (SRC_DIR / script).read_text().splitlines(keepends=True)
    return "".join(difflib.unified_diff(old, new, f"src/{sibling}", f"src/{script}"))


def print_diff(script):
    print(script_diff(script))


def show_run(result):
    """One line of figures and the per-epoch curves."""
    from . import plots

    print(f"job {result.job_name}: eval accuracy {result.metrics['eval_accuracy']:.4f}, "
          f"{result.metrics['images_per_sec']:.0f} images/s, {result.wall_seconds:.0f} s")
    plots.training_curves(result.history, result.job_name)


def show_predictions(result, data_dir, count=16):
    """Load model.tar.gz's serving signature and predict eval images with it."""
    from . import dataset, inference, plots

    signature = inference.load_signature(result.model_artifact)
    images, labels = dataset.read_examples(data_dir, "eval", count)
    plots.image_grid(images, labels, inference.predict_classes(signature, images), rows=2)


def finish(notebook, result):
    """Record the run (runs/results/) and print the notebook's RESULT line."""
    jobs.save_result(notebook, result)
    print("RESULT " + json.dumps(jobs.headline(result)))


def record_kernel_run(notebook, eval_accuracy, epochs, wall_seconds):
    """1.1 trains in the kernel, not as a job: record it beside the jobs for 5.0."""
    result = jobs.JobResult(
        mode="kernel", job_name=f"cifar10-scratch-{time.strftime('%Y-%m-%d-%H-%M-%S')}",
        metrics={"eval_accuracy": round(float(eval_accuracy), 4), "epochs": epochs,
                 "workers": 1},
        wall_seconds=round(wall_seconds, 1), instance_type="this machine")
    return jobs.save_result(notebook, result)
