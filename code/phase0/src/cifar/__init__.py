"""Shared pieces of the workshop's entry points: data, model, SageMaker contract, checkpoints, logs.

Only TensorFlow (and, in the distributed scripts, Horovod/SMDDP) is imported here: this package is
uploaded with the entry points and runs inside SageMaker's training containers.
"""
