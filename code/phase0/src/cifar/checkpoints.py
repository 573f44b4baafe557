"""Per-epoch checkpoints with resume, kept out of the model folder.

One tf.train.Checkpoint holds the model, the optimizer (its step counter drives the learning
rate schedule) and the history so far. The manager's index file is written last, so a run
killed mid-save resumes from the previous complete checkpoint. SageMaker syncs
/opt/ml/checkpoints with S3 file by file in no set order, so after a spot interruption the index
can name a checkpoint whose files are incomplete: restore then falls back to the one before.
"""

import json

import tensorflow as tf

from .model import build_optimizer_state


class EpochCheckpoints:
    def __init__(self, directory, model, optimizer, enabled=True):
        self.enabled = bool(directory) and enabled
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.history = tf.Variable("[]", dtype=tf.string, trainable=False)
        if self.enabled:
            build_optimizer_state(optimizer, model.trainable_variables)  # slots exist to restore
            self.checkpoint = tf.train.Checkpoint(
                model=model, optimizer=optimizer, epoch=self.epoch, history=self.history)
            self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=2)

    def restore(self):
        """Restore the newest checkpoint that can be read; returns (epochs done, history rows)."""
        if not self.enabled:
            return 0, []
        for path in reversed(self.manager.checkpoints):
            try:
                self.checkpoint.restore(path).expect_partial()
                return int(self.epoch.numpy()), json.loads(self.history.numpy().decode())
            except Exception as err:  # truncated files raise OpError, IndexError, ...
                print(f"checkpoint {path} cannot be restored ({type(err).__name__}: "
                      f"{str(err).splitlines()[0]}); trying the one before", flush=True)
        return 0, []

    def save(self, epoch, history):
        if not self.enabled:
            return
        self.epoch.assign(epoch)
        self.history.assign(json.dumps(history))
        self.manager.save(checkpoint_number=epoch)
