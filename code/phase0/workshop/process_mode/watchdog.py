"""Stops a process-mode job whose notebook kernel died without cleaning up.

supervise() stops its job's processes in a ``finally``; a SIGKILLed or crashed kernel runs no
``finally``, and the job's processes (each in its own session, so a terminal's signals do not
reach them) would train on for hours. supervise() therefore starts this watchdog beside them:

    python workshop/process_mode/watchdog.py <kernel pid> <session> [<session> ...]

(run as a file, standard library only: it must be watching within milliseconds). It is the
kernel's child; when the kernel dies it is handed to another parent, which it notices within a
second. Then it does what supervise() does: SIGTERM to every process of the job's
sessions, SIGKILL 5 s later. When the job ends normally, supervise() kills the watchdog.
"""

import os
import signal
import sys
import time

POLL_SECONDS = 1.0
GRACE_SECONDS = 5.0


def session_members(sessions):
    """PIDs of the live (not zombie) processes in these sessions: mpirun gives each rank its own
    process group but leaves it in mpirun's session."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
            if state != "Z" and os.getsid(int(entry)) in sessions:
                members.append(int(entry))
        except (OSError, IndexError):
            continue  # gone meanwhile
    return members


def signal_sessions(sessions, sig):
    for pid in session_members(sessions):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def main(argv):
    kernel, sessions = int(argv[0]), {int(session) for session in argv[1:]}
    while os.getppid() == kernel:  # also false at once if the kernel died before we started
        if not session_members(sessions):
            return  # the job ended and nobody stopped us: nothing to watch
        time.sleep(POLL_SECONDS)
    # Every process, not only mpirun: with its output pipes gone (the kernel read them), mpirun
    # dies of SIGPIPE at its first message and never stops its ranks.
    signal_sessions(sessions, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    while session_members(sessions) and time.monotonic() < deadline:
        time.sleep(0.1)
    signal_sessions(sessions, signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1:])
