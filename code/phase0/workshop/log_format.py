"""The entry points' log lines, as the notebook side reads them: one set of patterns for all.

The entry points print (src/cifar/report.py):
  epoch 3/20 - loss: 1.2345 - accuracy: 0.5678 - val_loss: 1.1111 - val_accuracy: 0.6000
      - lr: 0.050000 - time: 12.3s - images/s: 3250.1          (one line)
  eval - loss: 0.4567 - accuracy: 0.8512

METRIC_DEFINITIONS are what SageMaker (and the Estimator's ``metric_definitions``) parse;
``parse_epoch_line`` reads the progress of a job from the same patterns.
"""

import re
from typing import NamedTuple, Optional

NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"
EPOCH = r"epoch \d+/\d+ .*?"
# "- loss:"/"- accuracy:" cannot match inside "- val_loss:"/"- val_accuracy:".
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": EPOCH + r"- loss: " + NUMBER},
    {"Name": "train:accuracy", "Regex": EPOCH + r"- accuracy: " + NUMBER},
    {"Name": "validation:loss", "Regex": EPOCH + r"- val_loss: " + NUMBER},
    {"Name": "validation:accuracy", "Regex": EPOCH + r"- val_accuracy: " + NUMBER},
    {"Name": "train:images_per_sec", "Regex": EPOCH + r"- images/s: " + NUMBER},
    {"Name": "train:epoch_seconds", "Regex": EPOCH + r"- time: " + NUMBER + "s"},
    {"Name": "eval:loss", "Regex": r"eval - loss: " + NUMBER},
    {"Name": "eval:accuracy", "Regex": r"eval - loss: \S+ - accuracy: " + NUMBER},
]
_EPOCH_COUNTER = re.compile(r"epoch (\d+)/(\d+) ")
_DEFINED = {d["Name"]: re.compile(d["Regex"]) for d in METRIC_DEFINITIONS}


class EpochLine(NamedTuple):
    epoch: int              # 1-based
    epochs: int             # of the whole run (--epochs)
    seconds: float          # training time of this epoch (validation excluded)
    images_per_sec: float


def parse_epoch_line(line) -> Optional[EpochLine]:
    """The epoch line's figures, or None. Finds it anywhere in the line (host mode prefixes
    log lines with the instance, mpirun with the rank)."""
    counter = _EPOCH_COUNTER.search(line)
    seconds = _DEFINED["train:epoch_seconds"].search(line)
    rate = _DEFINED["train:images_per_sec"].search(line)
    if not (counter and seconds and rate):
        return None
    return EpochLine(int(counter[1]), int(counter[2]), float(seconds[1]), float(rate[1]))
