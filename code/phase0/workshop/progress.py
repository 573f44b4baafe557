"""Watch a training job through its epoch log lines: a progress bar, and a max_run projection.

Both are fed one log line at a time (``log_format.parse_epoch_line`` reads them), so they work
wherever the logs stream:

  process mode   run_process_job(..., on_line=bar); the projection is built in.
  local / host   the SDK prints the container's logs to stdout while ``estimator.fit`` runs:

                     with progress.stdout_progress(estimator.base_job_name):
                         estimator.fit(inputs)

The bar (tqdm.auto: a widget in Jupyter, text elsewhere) shows epochs done / total, images/s
and the ETA.
"""

import math
import sys
import threading
import time
from contextlib import contextmanager

from tqdm.auto import tqdm

from .log_format import parse_epoch_line


class EpochProgress:
    """A tqdm bar for one job, advanced by its epoch lines. Use as a context manager."""

    def __init__(self, label, file=None):
        self.bar = tqdm(desc=label, unit="epoch", total=None, file=file, dynamic_ncols=True)
        self.first = None

    def __call__(self, line):
        epoch = parse_epoch_line(line)
        if epoch is None:
            return
        if self.first is None:  # a resumed run starts at epoch k: rate and ETA count from k-1
            self.first = epoch.epoch
            self.bar.initial = epoch.epoch - 1
            self.bar.total = epoch.epochs
        self.bar.n = epoch.epoch
        self.bar.set_postfix_str(f"{epoch.images_per_sec:.0f} images/s", refresh=False)
        self.bar.refresh()

    def close(self):
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MaxRunProjection:
    """After the job's first epoch line: if ``--epochs`` cannot finish inside max_run at that
    pace, ``say`` at once how many epochs will fit, the minutes needed and what to do.

    Pace: the epoch's training time from its line (``time: Xs``); start-up: everything else
    until that line (imports, data, tracing, the first validation). Later validations are not
    counted, so the projection errs on the hopeful side by one validation per epoch.
    """

    def __init__(self, max_run, say, job_name, started=None):
        self.max_run, self.say, self.job_name = max_run, say, job_name
        self.started = time.monotonic() if started is None else started
        self.done = False
        self.lock = threading.Lock()

    def __call__(self, line):
        epoch = parse_epoch_line(line)
        with self.lock:
            if epoch is None or self.done:
                return
            self.done = True
        message = self.project(epoch, time.monotonic() - self.started)
        if message:
            self.say(message)

    def project(self, epoch, elapsed):
        """The message for first epoch line ``epoch`` seen ``elapsed`` s into the job, or None
        when all epochs fit."""
        pace = max(epoch.seconds, 1e-3)
        startup = max(elapsed - pace, 0.0)
        remaining = epoch.epochs - epoch.epoch + 1  # this job's epochs, this one included
        needed = startup + remaining * pace
        if needed <= self.max_run:
            return None
        fit = epoch.epoch - 1 + max(int((self.max_run - startup) // pace), 0)
        fit = min(fit, epoch.epochs)
        raise_to = int(math.ceil(needed / 60.0)) * 60
        return (f"projection: epoch {epoch.epoch} took {pace:.0f}s (+{startup:.0f}s start-up),"
                f" so {epoch.epochs} epochs need about {needed / 60:.0f} min, but max_run is "
                f"{self.max_run:.0f}s ({self.max_run / 60:.0f} min): {fit} of {epoch.epochs} "
                f"epochs will fit. Lower EPOCHS to {max(fit, 1)}, raise MAX_RUN to {raise_to}, "
                f"or let it stop at max_run (the model so far is saved) and continue with "
                f'RESUME_FROM = "{self.job_name}".')


@contextmanager
def stdout_progress(label):
    """Tee what is printed to stdout into an EpochProgress bar (for ``estimator.fit``)."""
    with EpochProgress(label) as bar:
        tee = _LineTee(sys.stdout, bar)
        sys.stdout = tee
        try:
            yield bar
        finally:
            sys.stdout = tee.stream
            tee.flush_partial()


class _LineTee:
    """A stdout stand-in: writes pass through; every complete line also goes to ``on_line``."""

    def __init__(self, stream, on_line):
        self.stream, self.on_line, self.partial = stream, on_line, ""

    def write(self, text):
        written = self.stream.write(text)
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self.on_line(line)
        return written

    def flush_partial(self):
        if self.partial:
            self.on_line(self.partial)
            self.partial = ""

    def flush(self):
        self.stream.flush()

    def __getattr__(self, name):  # isatty, encoding, fileno ... of the real stream
        return getattr(self.stream, name)
