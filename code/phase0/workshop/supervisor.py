"""Run a job's processes, stream their logs, and stop them all when one fails or time runs out.

Each process starts in its own session (process group), so stopping a job reaches mpirun's ranks
and anything they started. mpirun's ``--tag-output`` prefixes become ``[algo-H,rank R]``.
"""

import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass

TAIL_LINES = 40
STOP_GRACE_SECONDS = 5
MPI_TAG = re.compile(r"^\[\d+,(\d+)\]<(?:stdout|stderr)>:(.*)$")
MPI_EMPTY_TAG = re.compile(r"\[\d+,\d+\]<(?:stdout|stderr)>:$")  # mpirun tags a rank's EOF too


@dataclass
class Proc:
    label: str
    argv: list
    env: dict



class LogSink:
    """Log lines go to the live stream and logs.txt; the last ones are kept for errors."""

    def __init__(self, stream, path):
        self.stream, self.path = stream, path
        self.tail = deque(maxlen=TAIL_LINES)
        self.lock = threading.Lock()

    def __enter__(self):
        self.file = open(self.path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc):
        self.file.close()

    def line(self, text):
        with self.lock:
            self.tail.append(text)
            self.file.write(text + "\n")
            self.file.flush()
            if self.stream is not None:
                self.stream.write(text + "\n")
                self.stream.flush()


def supervise(procs, log, timeout, label_lines, processes_per_host):
    """Run all processes; stop the rest as soon as one fails. None, or (what, exit code)."""
    running, readers = [], []
    deadline = time.monotonic() + timeout if timeout else None
    try:
        for proc in procs:
            popen = subprocess.Popen(
                proc.argv, env=proc.env, cwd=proc.env["SM_MODULE_DIR"], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
            running.append((proc, popen))
            # Separate pipes: mpirun writes a tag and its text in pieces, so a shared pipe
            # would interleave one rank's stderr into another's stdout line.
            for pipe in (popen.stdout, popen.stderr):
                readers.append(start_reader(pipe, proc.label, log, label_lines,
                                            processes_per_host))
        return wait_for_all(running, deadline, timeout)
    finally:
        stop_all([popen for _, popen in running])
        for reader in readers:
            reader.join(timeout=STOP_GRACE_SECONDS)


def wait_for_all(running, deadline, timeout):
    while True:
        for proc, popen in running:
            code = popen.poll()
            if code not in (None, 0):
                who = f"process on {proc.label}" if proc.label else "entry point"
                if os.path.basename(proc.argv[0]) == "mpirun":
                    who = "mpirun (a rank failed)"
                return f"{who} exited with code {code}", code
        if all(popen.poll() == 0 for _, popen in running):
            return None
        if deadline and time.monotonic() > deadline:
            return f"timed out after {timeout:.0f}s (the estimator's max_run or `timeout`)", None
        time.sleep(0.05)


def start_reader(pipe, label, log, label_lines, processes_per_host):
    def relabel(line):
        tagged = MPI_TAG.match(line)
        if tagged:
            rank = int(tagged.group(1))
            text = MPI_EMPTY_TAG.sub("", tagged.group(2))
            return f"[algo-{rank // processes_per_host + 1},rank {rank}] {text}"
        return f"[{label}] {line}" if label and label_lines else line

    def pump():
        for raw in iter(pipe.readline, b""):
            log.line(relabel(raw.decode("utf-8", "replace").rstrip("\r\n")))
        pipe.close()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return reader


def stop_all(popens):
    """SIGTERM every process group we started (ranks and their children too), then SIGKILL."""
    for popen in popens:
        signal_group(popen, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for popen in popens:
        try:
            popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for popen in popens:
        signal_group(popen, signal.SIGKILL)
        popen.wait()


def signal_group(popen, sig):
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already

