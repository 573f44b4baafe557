"""Process mode: a SageMaker training job run on this machine under the container's contract.

- ``runner``: the job's folders laid out like ``/opt/ml``, the launch plan (one process, mpirun,
  MultiWorkerMirroredStrategy workers) and ``run_process_job``, which ``jobs.run_in_process`` calls;
- ``toolkit_env``: the ``SM_*`` variables and argv SageMaker's training toolkit would give;
- ``supervisor``: the processes, their logs, the failure file and stopping at ``max_run``;
- ``watchdog``: stops the job's processes if the kernel that started them dies.
"""
