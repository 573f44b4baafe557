"""Training logs in one fixed format, TensorBoard scalars and metrics.json.

The per-epoch line is what the notebooks' SageMaker ``metric_definitions`` parse (one line):
  epoch 3/20 - loss: 1.2345 - accuracy: 0.5678 - val_loss: 1.1111 - val_accuracy: 0.6000
      - lr: 0.050000 - time: 12.3s - images/s: 3250.1
  eval - loss: 0.4567 - accuracy: 0.8512
"""

import json
import os
import sys
import time

import tensorflow as tf

METRICS_FILE = "metrics.json"
SCALARS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_sec")


def epoch_line(row, epochs):
    return (f"epoch {row['epoch']}/{epochs} - loss: {row['loss']:.4f}"
            f" - accuracy: {row['accuracy']:.4f}"
            f" - val_loss: {row['val_loss']:.4f} - val_accuracy: {row['val_accuracy']:.4f}"
            f" - lr: {row['lr']:.6f} - time: {row['seconds']:.1f}s"
            f" - images/s: {row['images_per_sec']:.1f}")


def eval_line(loss, accuracy):
    return f"eval - loss: {loss:.4f} - accuracy: {accuracy:.4f}"


class TrainingLog:
    """Collects one row per epoch; prints, writes TensorBoard and metrics.json on the chief only.

    ``history`` is restored from a checkpoint on resume, so metrics.json always covers all epochs.
    """

    def __init__(self, output_dir, epochs, history=(), chief=True, workers=1):
        self.output_dir, self.epochs, self.chief, self.workers = output_dir, epochs, chief, workers
        self.history = list(history)
        self.started = time.time()
        self.writer = None
        if chief and output_dir:
            os.makedirs(output_dir, exist_ok=True)
            if tensorboard_installed():
                logdir = os.path.join(output_dir, "tensorboard")
                self.writer = tf.summary.create_file_writer(logdir)
            else:
                self.say("TensorBoard is not installed: no TensorBoard logs this run")

    def say(self, text):
        if self.chief:
            print(text, flush=True)

    def epoch(self, epoch, loss, accuracy, val_loss, val_accuracy, lr, seconds, images):
        """Record epoch ``epoch`` (1-based); ``images`` trained in ``seconds`` over all workers."""
        row = {"epoch": epoch, "loss": float(loss), "accuracy": float(accuracy),
               "val_loss": float(val_loss), "val_accuracy": float(val_accuracy), "lr": float(lr),
               "seconds": round(float(seconds), 3),
               "images_per_sec": round(images / max(seconds, 1e-9), 1)}
        self.history.append(row)
        self.say(epoch_line(row, self.epochs))
        if self.writer:
            with self.writer.as_default(step=epoch):
                for name in SCALARS:
                    tf.summary.scalar(name, row[name])
            self.writer.flush()
        return row

    def finish(self, eval_loss, eval_accuracy, stopped=False, **extra):
        """Print the eval line and write metrics.json atomically (chief only).

        stopped: the run was cut short by SIGTERM (see stopping.py) and the model saved: no eval
        (None), and metrics.json records after which epoch it stopped.
        """
        if stopped:
            done = self.history[-1]["epoch"] if self.history else 0
            self.say(f"stopped by SIGTERM after epoch {done}: model saved")
            extra = {"stopped_by": "SIGTERM", "stopped_after_epoch": done, **extra}
        else:
            self.say(eval_line(eval_loss, eval_accuracy))
        timed = self.history[1:] or self.history  # the first epoch includes tracing
        metrics = {
            "eval_loss": None if eval_loss is None else float(eval_loss),
            "eval_accuracy": None if eval_accuracy is None else float(eval_accuracy),
            "epochs": len(self.history), "workers": self.workers,
            "images_per_sec": round(mean(r["images_per_sec"] for r in timed), 1),
            "epoch_seconds": round(mean(r["seconds"] for r in timed), 3),
            "wall_seconds": round(time.time() - self.started, 1),
            "entry_point": os.path.basename(sys.argv[0]),
            "tensorflow": tf.__version__, "keras": keras_version(),
            "history": self.history, **extra}
        if self.chief and self.output_dir:
            path = os.path.join(self.output_dir, METRICS_FILE)
            with open(path + ".tmp", "w") as f:
                json.dump(metrics, f, indent=1)
            os.replace(path + ".tmp", path)
        return metrics


def mean(values):
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def tensorboard_installed():
    try:
        import tensorboard  # noqa: F401  (tf.summary needs it; TF >= 2.20 no longer installs it)
    except ImportError:
        return False
    return True


def keras_version():
    import keras  # the Keras that tf.keras is: 2.x up to TF 2.15, 3.x from TF 2.16

    return keras.__version__


class EpochTimer(tf.keras.callbacks.Callback):
    """Times the training part of each Keras epoch (validation excluded) for images/s."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.train_seconds = time.time(), None

    def on_test_begin(self, logs=None):
        if self.train_seconds is None:
            self.train_seconds = time.time() - self.start

    def seconds(self):
        return self.train_seconds if self.train_seconds is not None else time.time() - self.start
