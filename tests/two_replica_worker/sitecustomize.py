"""Test harness, put on PYTHONPATH: this process's MultiWorkerMirroredStrategy gets two replicas
on two logical CPUs, as a worker with two GPUs would (tests/test_local_mode.py)."""

import tensorflow as tf

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
_strategy = tf.distribute.MultiWorkerMirroredStrategy
tf.distribute.MultiWorkerMirroredStrategy = (
    lambda: _strategy._from_local_devices(["/device:CPU:0", "/device:CPU:1"]))
