"""Small helpers of the distributed entry points (Horovod, SMDDP, MultiWorkerMirroredStrategy).

Nothing here imports Horovod or SMDDP: the scripts pass in their library's functions, so this
module also runs where only TensorFlow is installed (the MWMS script, the tests).
"""

import atexit
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf


def pin_gpu(local_rank):
    """One GPU per process, chosen by the rank within the host (Horovod's and SMDDP's pattern)."""
    gpus = tf.config.experimental.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.experimental.set_visible_devices(gpus[local_rank], "GPU")


def horovod_needs_legacy_optimizer(horovod_version):
    """Horovod before 0.28 (0.27.0 in the TF 2.12 training image) takes only legacy Keras
    optimizers in ``DistributedOptimizer`` on Keras 2.11+ ("Optimizer has to be an instance of
    tensorflow.keras.optimizers.legacy.Optimizer"); 0.28 lifted that."""
    major, minor = (int(part) for part in horovod_version.split(".")[:2])
    return (major, minor) < (0, 28)


def average_local_statistics(model, average):
    """Replace batch-norm moving statistics by their average over all workers.

    Averaged gradients keep the trainable weights identical everywhere, but each worker
    updates its moving mean and variance from its own batches, so they drift apart.
    Averaging them before validation makes every worker validate, evaluate and fingerprint
    the same model, the one rank 0 saves, with statistics from all the data, not 1/size.
    ``average`` is the library's averaging allreduce (hvd.allreduce, sdp.oob_allreduce).
    """
    for variable in _statistics(model):
        variable.assign(average(tf.convert_to_tensor(variable)))


def _statistics(model):
    """Floating-point non-trainable variables (Keras 3 adds integer dropout seed states)."""
    return [v for v in model.non_trainable_variables if tf.as_dtype(v.dtype).is_floating]


class AverageLocalStatistics(tf.keras.callbacks.Callback):
    """Keras callback: ``average_local_statistics`` before each validation."""

    def __init__(self, average):
        super().__init__()
        self.average = average

    def on_test_begin(self, logs=None):
        average_local_statistics(self.model, self.average)


def weights_fingerprint(model):
    """8 hex digits of a SHA-256 over every weight of the model (trainable or not), in order.

    Equal on all workers when they hold bit-identical models (and, but for hash collisions,
    only then).
    """
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(np.asarray(weight)).tobytes())
    return digest.hexdigest()[:8]


def rank_line(rank, size, shard_records, model, role="rank"):
    """The line every worker prints last, e.g.
    ``rank 1/2: trained on 512 records/epoch (shard 1 of 2), weights fingerprint 3f2a9c01``.
    """
    return (f"{role} {rank}/{size}: trained on {shard_records} records/epoch "
            f"(shard {rank} of {size}), weights fingerprint {weights_fingerprint(model)}")


# MultiWorkerMirroredStrategy


def mwms_worker():
    """(index, count) of this worker, from the TF_CONFIG SageMaker's MWMS distribution sets:

      {"cluster": {"worker": ["algo-1:port", "algo-2:port"]}, "environment": "cloud",
       "task": {"type": "worker", "index": 0}}

    Without TF_CONFIG (one process): (0, 1). Worker 0 is the chief.
    """
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    workers = config.get("cluster", {}).get("worker", [])
    return int(config.get("task", {}).get("index", 0)), max(len(workers), 1)


MWMS_PORT = 8890  # the port SageMaker's TF training toolkit gives MWMS workers


def tf_config_from_sm_hosts():
    """Set TF_CONFIG from SM_HOSTS and SM_CURRENT_HOST when it is missing, as SDK v2's
    ``multi_worker_mirrored_strategy`` distribution would (the TF training toolkit, port 8890).

    SageMaker SDK v3's ModelTrainer replaces the toolkit with its own driver, which sets no
    TF_CONFIG. Nothing changes when TF_CONFIG is set or there is one host (or none).
    """
    hosts = json.loads(os.environ.get("SM_HOSTS") or "[]")
    if os.environ.get("TF_CONFIG") or len(hosts) < 2:
        return
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"{host}:{MWMS_PORT}" for host in hosts]}, "environment": "cloud",
        "task": {"type": "worker", "index": hosts.index(os.environ["SM_CURRENT_HOST"])}})


def mwms_dataset(strategy, dataset):
    """A worker's own dataset (sharded and batched by data.make_dataset) as MWMS input, as is.

    tf.distribute would otherwise shard the dataset again over workers (auto-sharding: OFF
    here) and split its batches over all replicas. Given through a function, each batch goes
    whole to one replica of this worker: batches of --batch-size per replica.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    dataset = dataset.with_options(options)
    return strategy.distribute_datasets_from_function(lambda input_context: dataset)


def mwms_average_local_statistics(strategy, model):
    """``average_local_statistics`` under MultiWorkerMirroredStrategy: in every replica, its own
    values are replaced by their mean over all replicas of all workers (one collective).

    (Keras 2 keeps batch-norm statistics as SyncOnRead variables, averaged when read outside a
    replica, e.g. when saved; Keras 3 as mirrored ones, never averaged. Either way each replica
    validates with its own copy unless they are averaged.)
    """
    variables = _statistics(model)

    def in_replica():
        context = tf.distribute.get_replica_context()
        means = context.all_reduce("MEAN", [tf.identity(v) for v in variables])
        for variable, mean in zip(variables, means):
            variable.assign(mean)

    tf.function(lambda: strategy.run(in_replica))()


def worker_dir(path, chief):
    """``path`` on the chief; a throwaway folder on other workers (None stays None).

    Under MWMS every worker must join each save (saving reads synchronised variables, a
    collective): the non-chief workers write their copy where nobody looks. See TF's guide
    "Multi-worker training with Keras", section "Model saving and loading".
    """
    if chief or not path:
        return path
    throwaway = tempfile.mkdtemp(prefix="mwms-worker-")
    atexit.register(shutil.rmtree, throwaway, ignore_errors=True)
    return throwaway


def mwms_check_agreement(strategy, value, what):
    """Raise unless every worker holds the same integer ``value``; returns it.

    Workers that disagree (say, each restored a different checkpoint) would run different numbers
    of collective steps and wait on each other until max_run. Every worker computes the same
    spread of the values (two sums over all replicas), so all of them raise together.
    """
    from .stopping import mwms_agreement  # the sum over all replicas, as the stop decision uses

    total, replicas = mwms_agreement(strategy), strategy.num_replicas_in_sync
    mean = float(total(tf.constant(float(value)))) / replicas
    mean_square = float(total(tf.constant(float(value) ** 2))) / replicas
    if mean_square - mean * mean > 1e-6:
        raise RuntimeError(f"the workers disagree on {what} (this worker: {value}, mean over "
                           f"workers: {mean:g}): they must start from the same checkpoint")
    return value


def mwms_barrier(strategy):
    """Return once every worker has called this (a sum over all replicas)."""
    from .stopping import mwms_agreement

    mwms_agreement(strategy)(tf.constant(0.0))
