"""The run records under ``runs/results/``, read and written here only.

- ``<notebook>.json``: the headline of a training notebook's last run and its ``model.tar.gz``
  (the distributed notebooks compare against it, 4.1 deploys its model);
- ``runs/<job>.json``: one record per run this machine has made, with instances, spot and
  billable seconds (5.0 tabulates them, 6.0 compares its v3 run with a v2 one).
"""

import json
from datetime import datetime, timezone
from pathlib import Path

from . import RUNS_DIR
from .files import write_json_atomic


class ModelArtifactError(RuntimeError):
    """model.tar.gz is missing, unreadable or holds no SavedModel."""


def headline(result):
    """The figures a notebook prints on its RESULT line."""
    metrics = result.metrics
    return {"mode": result.mode, "job_name": result.job_name, "status": result.status,
            "eval_accuracy": metrics.get("eval_accuracy"), "epochs": metrics.get("epochs"),
            "workers": metrics.get("workers"), "images_per_sec": metrics.get("images_per_sec"),
            "epoch_seconds": metrics.get("epoch_seconds"), "wall_seconds": result.wall_seconds}


def save_result(notebook, result, runs_dir=None):
    """Remember a run: its headline as the notebook's latest (runs/results/<notebook>.json, for
    the distributed notebooks' comparison) and as one record of every run this machine has made
    (runs/results/runs/<job>.json, for 5.0), with its model.tar.gz for 4.1. Returns the record's
    path."""
    results = Path(runs_dir or RUNS_DIR) / "results"
    (results / "runs").mkdir(parents=True, exist_ok=True)
    artifact = str(result.model_artifact) if result.model_artifact else None  # 4.1 deploys it
    write_json_atomic(results / f"{notebook}.json",
                      {"notebook": notebook, **headline(result), "model_artifact": artifact})
    record = {"notebook": notebook, **headline(result), "model_artifact": artifact,
              "instance_type": result.instance_type, "instance_count": result.instance_count,
              "spot": result.spot, "training_seconds": result.training_seconds,
              "billable_seconds": result.billable_seconds,
              "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path = results / "runs" / f"{result.job_name}.json"
    write_json_atomic(path, record)
    return path


def load_result(notebook, runs_dir=None):
    """The headline of ``notebook``'s last run, or None if it has none."""
    path = Path(runs_dir or RUNS_DIR) / "results" / f"{notebook}.json"
    return json.loads(path.read_text()) if path.exists() else None


def load_runs(runs_dir=None):
    """Every recorded run, oldest first."""
    folder = Path(runs_dir or RUNS_DIR) / "results" / "runs"
    records = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    return sorted(records, key=lambda record: record.get("recorded_at", ""))


def latest_local_run(notebook, epochs, runs_dir=None):
    """The latest recorded local-mode run of ``notebook`` that trained ``epochs`` epochs, or None;
    and why not."""
    matching = [r for r in load_runs(runs_dir) if r.get("notebook") == notebook
                and r.get("mode") == "local" and r.get("epochs") == epochs]
    if not matching:
        return None, (f"no local-mode run of {notebook} with EPOCHS={epochs} is recorded: run "
                      f"{notebook} with MODE='local' and the same parameters first")
    return max(matching, key=lambda r: r.get("recorded_at") or ""), None


def model_artifact_from(notebook, runs_dir=None):
    """The model.tar.gz of a training notebook's last run (its saved result)."""
    result = load_result(notebook, runs_dir)
    if result is None or not result.get("model_artifact"):
        raise ModelArtifactError(f"no saved model from notebook {notebook}: run {notebook} first "
                                 f"(it records its model.tar.gz in runs/results/{notebook}.json).")
    artifact = Path(result["model_artifact"])
    if not artifact.exists():
        raise ModelArtifactError(f"{artifact} (the model of notebook {notebook}'s last run) is "
                                 f"gone: run {notebook} again.")
    return artifact
