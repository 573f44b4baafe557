"""Serving a trained model: what 4.1 and 6.0 deploy and how they score it.

- ``deploy``: serve in process, local mode or host mode through the SDK; payload limits, batch
  transform, the scoring tables;
- ``tfs_standin``: the SageMaker TF Serving container's contract on a loopback port (also copied
  into the local-mode inference stand-in image, so it imports nothing of the workshop);
- ``inference``: reading a ``model.tar.gz`` in the kernel: its SavedModel signature and epoch.
"""
