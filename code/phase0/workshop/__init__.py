"""Notebook-side plumbing of the workshop: data set, jobs in three modes, plots, environment report.

Never uploaded to SageMaker; the training code it launches lives in ``../src``.
Relative paths given by notebooks are resolved against the notebooks' folder, so a notebook
behaves the same whatever directory papermill or Jupyter was started from.
"""

import os
import sys
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


def keep_plain_tracebacks():
    """Undo what importing sagemaker-core does (the SDK imports it on first use of some calls,
    get_execution_role for one): it installs rich's traceback handler, in IPython too. Errors
    then come out as display output, and papermill reports an empty ``CellExecutionError``
    instead of the error's name and message. Imported here first, its handler is removed
    again; it installs only once per process."""
    hook = sys.excepthook
    try:
        from sagemaker_core.main import utils  # noqa: F401 - installs rich's handler, once
    except ImportError:  # not installed (an SDK without sagemaker-core, or another layout)
        return
    sys.excepthook = hook
    shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    if shell is not None:  # rich replaced these methods on the instance: back to the class's
        for name in ("showtraceback", "_showtraceback", "showsyntaxerror"):
            shell.__dict__.pop(name, None)


keep_plain_tracebacks()
