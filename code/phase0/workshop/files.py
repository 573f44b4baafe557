"""Small file and network helpers shared by the notebook plumbing: atomic writes, tarballs, ports.

A write either lands whole or not at all (temp file in the same folder, then rename), so a run
that dies half way leaves nothing a rerun would trust. Temp names start with ``.tmp-``.
"""

import json
import os
import socket
import tarfile
import tempfile
from pathlib import Path

TMP_PREFIX = ".tmp-"


def write_atomic(path, text):
    """Write ``text`` to ``path``: readers see the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=TMP_PREFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are meant to be read
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json_atomic(path, obj, indent=1):
    write_atomic(path, json.dumps(obj, indent=indent, sort_keys=True))


def pack_folder(folder, tar_path):
    """tar.gz of a folder's contents (no leading folder name), written atomically."""
    tar_path = Path(tar_path)
    fd, tmp = tempfile.mkstemp(dir=tar_path.parent, prefix=TMP_PREFIX, suffix=".tar.gz")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for name in sorted(os.listdir(folder)):
                tar.add(os.path.join(folder, name), arcname=name)
        os.replace(tmp, tar_path)
    except BaseException:
        os.unlink(tmp)
        raise
    return tar_path


def free_ports(count):
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
