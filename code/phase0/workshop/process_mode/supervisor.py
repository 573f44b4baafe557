"""Run a job's processes, stream their logs, and stop them all when one fails or time runs out.

Each process starts in its own session (process group), so stopping a job reaches mpirun's ranks
and anything they started. mpirun's ``--tag-output`` prefixes become ``[algo-H,rank R]``.

Three ways a job ends early:
  a process fails      the others get SIGTERM, SIGKILL 5 s later (a rank may be stuck in a
                       collective with the dead one: no point waiting).
  max_run is reached   as SageMaker at MaxRuntimeInSeconds: SIGTERM to every process of the
                       job, then ``grace`` seconds (SageMaker: 120) to save and exit, then
                       SIGKILL. mpirun itself is left out, only its ranks get the signal: Open
                       MPI 4.1's mpirun, on SIGTERM, sends its ranks SIGTERM and SIGKILLs them
                       ``odls_base_sigkill_timeout`` seconds later (default 1), so signalling
                       mpirun would take the window away; given only to the ranks, they exit 0
                       in their own time and mpirun then ends normally (seen with Open MPI
                       4.1.4 here). See process_mode.py for what the SageMaker image does.
  KeyboardInterrupt    (a notebook's "interrupt"): everything is stopped as for a failure and
                       the interrupt goes on to the caller.
A kernel that dies (SIGKILL, crash) runs none of this: ``watchdog.py`` (beside this file) stops
the job then.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import psutil

TAIL_LINES = 40
STOP_GRACE_SECONDS = 5       # after a failure or an interrupt
MAX_RUN_GRACE_SECONDS = 120  # SageMaker: SIGTERM at max_run, the job is ended 120 s later
MPI_LAUNCHERS = ("mpirun", "orterun", "mpiexec", "orted", "prterun", "prted")
MPI_TAG = re.compile(r"^\[\d+,(\d+)\]<(?:stdout|stderr)>:(.*)$")
MPI_EMPTY_TAG = re.compile(r"\[\d+,\d+\]<(?:stdout|stderr)>:$")  # mpirun tags a rank's EOF too
# On a busy machine mpirun sometimes writes a rank's line without its newline and the next
# rank's tagged line right after it: split there.
MPI_TAG_INSIDE = re.compile(r"(?<=.)(?=\[\d+,\d+\]<(?:stdout|stderr)>:)")


@dataclass
class Proc:
    label: str
    argv: list
    env: dict


@dataclass
class Outcome:
    """How the processes ended. status: Completed | Failed | Stopped (max_run)."""
    status: str
    what: str = ""
    exit_code: int = None
    seconds_to_exit: float = None  # Stopped: from SIGTERM to the last process gone
    killed: bool = False           # Stopped: some process outlived the grace period


class LogSink:
    """Log lines go to the live stream and logs.txt; the last ones are kept for errors.

    hooks: callables given each line after it is written (progress bar, max_run projection);
    a hook may itself write lines.
    """

    def __init__(self, stream, path, hooks=()):
        self.stream, self.path = stream, path
        self.hooks = [hook for hook in hooks if hook is not None]
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
        for hook in self.hooks:  # outside the lock: a hook may call line()
            hook(text)


def supervise(procs, log, timeout, label_lines, processes_per_host,
              grace=MAX_RUN_GRACE_SECONDS, stop_request=None):
    """Run all processes; stop the rest as soon as one fails; at ``timeout`` s stop them all as
    SageMaker does at max_run (SIGTERM, ``grace`` s, SIGKILL). Returns an Outcome.

    stop_request: anything with ``is_set()`` (a threading.Event); set, it stops the job the
    same way, as SageMaker's StopTrainingJob does (secondary status "Stopped" instead of
    "MaxRuntimeExceeded").
    """
    running, readers, watchdog = [], [], None
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
        watchdog = start_watchdog([popen.pid for _, popen in running])
        outcome = wait_for_all(running, deadline, stop_request)
        if outcome is None:
            asked = stop_request is not None and stop_request.is_set()
            why = "stop requested" if asked else f"max_run ({timeout:.0f}s) reached"
            log.line(f"process mode: {why}: SIGTERM to every process of the job, "
                     f"{grace:.0f}s to save and exit (as SageMaker does)")
            outcome = stop_gracefully([popen for _, popen in running], grace,
                                      "Stopped" if asked else "MaxRuntimeExceeded")
            log.line(f"process mode: all processes ended {outcome.seconds_to_exit:.1f}s after "
                     f"SIGTERM" + (" (SIGKILLed after the grace period)" if outcome.killed
                                   else ""))
        return outcome
    finally:
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
        stop_all([popen for _, popen in running])
        for reader in readers:
            reader.join(timeout=STOP_GRACE_SECONDS)


def start_watchdog(sessions):
    """``watchdog.py`` (beside this file): stops these sessions' processes if this process dies
    first."""
    watchdog = Path(__file__).with_name("watchdog.py")
    return subprocess.Popen([sys.executable, str(watchdog), str(os.getpid()), *map(str, sessions)],
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def wait_for_all(running, deadline, stop_request=None):
    """Completed or Failed as soon as that is known; None when the deadline passes (or a stop
    is requested) first."""
    while True:
        for proc, popen in running:
            code = popen.poll()
            if code not in (None, 0):
                who = f"process on {proc.label}" if proc.label else "entry point"
                if os.path.basename(proc.argv[0]) == "mpirun":
                    who = "mpirun (a rank failed)"
                return Outcome("Failed", f"{who} exited with code {code}", code)
        if all(popen.poll() == 0 for _, popen in running):
            return Outcome("Completed", exit_code=0)
        if deadline and time.monotonic() > deadline:
            return None
        if stop_request is not None and stop_request.is_set():
            return None
        time.sleep(0.05)


def stop_gracefully(popens, grace, reason):
    """SIGTERM to every process of the job but the MPI launchers; SIGKILL after ``grace`` s."""
    started = time.monotonic()
    for pid in job_processes(popens):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    killed = not wait_until_exited(popens, started + grace)
    if killed:
        for popen in popens:
            signal_group(popen, signal.SIGKILL)
            popen.wait()
    codes = [popen.returncode for popen in popens]
    return Outcome("Stopped", reason, max(codes, key=abs),
                   round(time.monotonic() - started, 2), killed)


def job_processes(popens):
    """PIDs of the processes we started and all their descendants (mpirun may give its ranks
    their own process groups), MPI launchers (mpirun, orted) left out."""
    pids = []
    for popen in popens:
        try:
            root = psutil.Process(popen.pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in family:
            try:
                if process.name() not in MPI_LAUNCHERS:
                    pids.append(process.pid)
            except psutil.NoSuchProcess:
                continue
    return pids


def wait_until_exited(popens, deadline):
    for popen in popens:
        try:
            popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
    return True


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
            for line in MPI_TAG_INSIDE.split(raw.decode("utf-8", "replace").rstrip("\r\n")):
                log.line(relabel(line))
        pipe.close()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return reader


def stop_all(popens):
    """SIGTERM every process group we started (ranks and their children too), then SIGKILL."""
    for popen in popens:
        signal_group(popen, signal.SIGTERM)
    wait_until_exited(popens, time.monotonic() + STOP_GRACE_SECONDS)
    for popen in popens:
        signal_group(popen, signal.SIGKILL)
        popen.wait()


def signal_group(popen, sig):
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already

