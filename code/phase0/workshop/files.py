"""Small file and network helpers shared by the notebook plumbing: atomic writes, tarballs, ports.

A write either lands whole or not at all (temp file in the same folder, then rename), so a run
that dies half way leaves nothing a rerun would trust. Temp names start with ``.tmp-``.
"""

import json
import os
import random
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


# Below the kernel's ephemeral range (ip_local_port_range: 32768-60999 on Linux by default),
# from which every outgoing connection takes its port: a port picked there can be taken by one
# in the seconds before a TensorFlow worker binds it (seen once in a three-worker test run:
# "Could not start gRPC server").
PORT_RANGE = (20000, 32767)


def free_ports(count):
    """``count`` distinct ports, at random in PORT_RANGE, free on every interface a moment ago
    (TensorFlow's gRPC server binds 0.0.0.0)."""
    pick, found = random.SystemRandom(), []
    for _ in range(1000):
        port = pick.randint(*PORT_RANGE)
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        if port not in found:
            found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError(f"no {count} free ports in {PORT_RANGE[0]}-{PORT_RANGE[1]} after 1000 "
                       "tries: stop what holds them (`ss -ltnp` lists listening ports)")
