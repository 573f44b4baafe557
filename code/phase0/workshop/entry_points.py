"""One record per entry point in ``src/``: what notebooks, benchmarks, tests and README share.

The training notebooks keep their own literal values (they are the lesson, copied by learners);
``tests/test_entry_points_registry.py`` checks each notebook and the README table against this.
"""

from dataclasses import dataclass
from typing import Optional

from .images import TRAINING_2_21_CPU, TRAINING_2_21_GPU


@dataclass(frozen=True)
class EntryPoint:
    script: str                      # src/<script>
    notebook: str                    # the notebook that teaches it, e.g. "1.2"
    framework_version: str           # SageMaker TF training image
    py_version: str
    distribution: Optional[str] = None  # top-level key of the Estimator's distribution dict
    sibling: Optional[str] = None    # the single-process script it extends (compared with)
    marker: Optional[str] = None     # the comment that opens each block it adds to diff_base
    # the script its notebook shows it as a diff against: the sibling unless named here
    diff_against: Optional[str] = None
    # (gpu, cpu) image tags when the SDK cannot resolve the version itself (TF 2.21)
    image_tags: Optional[tuple] = None

    @property
    def base_job_name(self):
        return "cifar10-" + self.script[:-len(".py")].replace("_", "-")

    @property
    def diff_base(self):
        return self.diff_against or self.sibling

    @property
    def distributed(self):
        return self.distribution is not None


# TF 2.21 is the supported training image (2.19 reached end of patch on 2026-03-11); the SDK v2
# does not know it, so its notebooks pass image_uri.
SUPPORTED = {"image_tags": (TRAINING_2_21_GPU, TRAINING_2_21_CPU)}
ENTRY_POINTS = (
    EntryPoint("train_keras.py", "1.2", "2.21", "py312", **SUPPORTED),
    EntryPoint("train_tf.py", "2.1", "2.21", "py312", **SUPPORTED),
    # Horovod left SageMaker's TF training images from 2.13 on: 2.12 is the last with it
    # (long past end of patch, no successor).
    EntryPoint("train_keras_horovod.py", "1.5", "2.12", "py310", "mpi", "train_keras.py",
               "# Horovod:"),
    EntryPoint("train_tf_horovod.py", "2.2", "2.12", "py310", "mpi", "train_tf.py", "# Horovod:"),
    # smdistributed.dataparallel supports TF only up to 2.11 (the SDK refuses newer; unpatched).
    # Its API copies Horovod's: 3.1 shows what it changes in 2.2's script.
    EntryPoint("train_tf_ddp.py", "3.1", "2.11", "py39", "smdistributed", "train_tf.py",
               "# SMDDP:", diff_against="train_tf_horovod.py"),
    EntryPoint("train_tf_mwms.py", "3.2", "2.21", "py312", "multi_worker_mirrored_strategy",
               "train_tf.py", "# MWMS:", **SUPPORTED),
)

BY_SCRIPT = {entry.script: entry for entry in ENTRY_POINTS}
BY_NOTEBOOK = {entry.notebook: entry for entry in ENTRY_POINTS}


def entry_point(script_or_notebook):
    """The record for ``"train_tf.py"`` or ``"2.1"``; a clear error for anything else."""
    found = BY_SCRIPT.get(script_or_notebook) or BY_NOTEBOOK.get(script_or_notebook)
    if found is None:
        raise KeyError(f"{script_or_notebook!r} is not in workshop/entry_points.py: known scripts "
                       f"{sorted(BY_SCRIPT)}, notebooks {sorted(BY_NOTEBOOK)}")
    return found


def distribution_for(entry, processes_per_host=1):
    """The ``distribution=`` dict the notebook of ``entry`` passes (None for single-process)."""
    if entry.distribution == "mpi":
        return {"mpi": {"enabled": True, "processes_per_host": processes_per_host}}
    if entry.distribution == "smdistributed":
        return {"smdistributed": {"dataparallel": {"enabled": True}}}
    if entry.distribution == "multi_worker_mirrored_strategy":
        return {"multi_worker_mirrored_strategy": {"enabled": True}}
    return None
