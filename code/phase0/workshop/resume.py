"""RESUME_FROM: continue a job (stopped at max_run, or any earlier job) from its checkpoints.

The entry points checkpoint every epoch to the checkpoint folder and, finding a checkpoint
there, resume after the last finished epoch with the optimizer's step counter (so the learning
rate schedule goes on where it was). A new job resumes when it is given the same checkpoint
location as the earlier one, and the same hyperparameters (the schedule's length is computed
from ``--epochs``):

    checkpoint_uri = resume.checkpoint_to_resume(MODE, RESUME_FROM, session=session)
    estimator = TensorFlow(..., checkpoint_s3_uri=checkpoint_uri)

process  the earlier job folder's ``checkpoints`` link points at the persistent folder:
         its target, as ``file://``.
host     DescribeTrainingJob's ``CheckpointConfig.S3Uri`` (SageMaker syncs /opt/ml/checkpoints
         from it when the new job starts).
local    not possible: SDK 2.257.7 refuses ``checkpoint_s3_uri`` and ``checkpoint_local_path``
         in local mode (``Framework._add_spot_checkpoint_args``: "Setting checkpoint_s3_uri is
         not supported in local mode."), and nothing else survives a local container.
"""

from pathlib import Path

from . import RUNS_DIR


class CannotResume(RuntimeError):
    """The earlier job left nothing to resume from here; the message says why and what to do."""


def checkpoint_to_resume(mode, job_name, session=None, runs_dir=None):
    """The checkpoint location (URI) of earlier job ``job_name``, to give a new estimator."""
    if mode == "process":
        return process_checkpoint(job_name, Path(runs_dir or RUNS_DIR))
    if mode == "host":
        return host_checkpoint(job_name, session)
    if mode == "local":
        raise CannotResume(
            "MODE='local' cannot resume a job: the SageMaker SDK refuses checkpoint_s3_uri in "
            "local mode, so no checkpoint outlives the container. Set RESUME_FROM = None and "
            "train again, or resume in MODE='process' or MODE='host'.")
    raise ValueError(f"MODE must be 'process', 'local' or 'host', got {mode!r}")


def process_checkpoint(job_name, runs_dir):
    job_dir = runs_dir / job_name
    if not job_dir.is_dir():
        raise CannotResume(f"RESUME_FROM = {job_name!r}: no job folder {job_dir}. Give the name "
                           f"of an earlier process-mode job (the 'job_name' of its result).")
    link = job_dir / "checkpoints"
    if not link.exists():
        raise CannotResume(f"RESUME_FROM = {job_name!r}: that job had no checkpoint location "
                           f"(its estimator had no checkpoint_s3_uri), so there is nothing to "
                           f"resume. Train again with checkpoints on.")
    return f"file://{link.resolve()}"


def host_checkpoint(job_name, session):
    if session is None:
        raise ValueError("host mode needs the sagemaker Session to describe the earlier job")
    description = session.sagemaker_client.describe_training_job(TrainingJobName=job_name)
    uri = (description.get("CheckpointConfig") or {}).get("S3Uri")
    if not uri:
        raise CannotResume(f"RESUME_FROM = {job_name!r}: that training job had no "
                           f"CheckpointConfig (no checkpoint_s3_uri), so SageMaker kept no "
                           f"checkpoints to resume from. Train again with checkpoints on.")
    return uri
