"""Stop cleanly on SIGTERM: at the end of the current step, every rank at the same step.

SageMaker sends SIGTERM when a job reaches max_run (MaxRuntimeExceeded), when it is stopped, or
when a spot instance is reclaimed, and kills the job 120 s later; what /opt/ml/model holds then
becomes model.tar.gz. The entry points use that window: they finish the step under way, skip
validation and eval, and the saving process exports the model it has, then exits 0. The
checkpoint of the last finished epoch is untouched, so a resumed run repeats only the part of an
epoch that was cut short.

Distributed runs: each process gets the signal at a slightly different step, so a process that
left on its own would leave the others waiting in a collective forever. ``agree`` makes the
decision collective: every step, every process contributes 1.0 (SIGTERM seen) or 0.0 and all
stop when the mean (or sum) over processes is above 0, at the same step.
"""

import signal

import tensorflow as tf


class SigtermStop:
    """Installs a SIGTERM handler; ``check()`` after each training step says whether to stop.

    agree: None for one process; else a function of a float tensor returning its mean
    (or sum) over all processes (hvd.allreduce, SMDDP's oob_allreduce, ``mwms_agreement``).
    Every process must call ``check()`` equally often (once per training step).
    """

    def __init__(self, agree=None):
        self.agree = agree
        self.received = False  # this process saw SIGTERM
        self.stop = False      # all processes agreed to stop (stays True)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self.received = True  # acted on after the step under way: never inside a TF op

    def check(self):
        if not self.stop:
            if self.agree is None:
                self.stop = self.received
            else:
                self.stop = float(self.agree(tf.constant(float(self.received)))) > 0
        return self.stop

    def keras_callback(self):
        """A Keras callback that ends ``model.fit`` after the step under way (all ranks alike).

        Keras still validates the cut epoch and calls ``on_epoch_end``: callbacks that record
        or checkpoint an epoch must skip it when ``stop`` is set.
        """
        return _StopTrainingOnSigterm(self)


class _StopTrainingOnSigterm(tf.keras.callbacks.Callback):
    def __init__(self, sigterm):
        super().__init__()
        self.sigterm = sigterm

    def on_train_batch_end(self, batch, logs=None):
        if self.sigterm.check():
            self.model.stop_training = True


def mwms_agreement(strategy):
    """``agree`` for MultiWorkerMirroredStrategy: the sum of a value over all replicas."""

    def in_replica(value):
        # ReduceOp has SUM and MEAN only: the sum is above 0 as soon as one replica says 1.0.
        # tf.identity: a tensor of this replica (all_reduce finds no device for a captured one).
        return tf.distribute.get_replica_context().all_reduce("SUM", tf.identity(value))

    @tf.function
    def agree(value):
        return strategy.experimental_local_results(strategy.run(in_replica, args=(value,)))[0]

    return agree
