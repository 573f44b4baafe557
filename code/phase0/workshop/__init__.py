"""Notebook-side plumbing of the workshop: data set, jobs in three modes, plots, environment report.

Never uploaded to SageMaker; the training code it launches lives in ``../src``.
Relative paths given by notebooks are resolved against the notebooks' folder, so a notebook
behaves the same whatever directory papermill or Jupyter was started from.
"""

import os
from pathlib import Path

PHASE0_DIR = Path(__file__).resolve().parent.parent
SRC_DIR = PHASE0_DIR / "src"
DEFAULT_DATA_DIR = PHASE0_DIR / "data" / "cifar10"
# Job folders and executed notebooks (git-ignored); tests point it elsewhere.
RUNS_DIR = Path(os.environ.get("WORKSHOP_RUNS_DIR") or PHASE0_DIR / "runs")


def resolve(path):
    """An absolute Path; relative paths are taken from the notebooks' folder (code/phase0)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PHASE0_DIR / path
