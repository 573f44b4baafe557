"""Notebook 0.0's set-up where there is no make (a SageMaker notebook instance): a Python 3.11
environment with the workshop's pinned packages, kept where the machine keeps files, registered
as the Jupyter kernel every v2 notebook names (and, on request, the SDK v3 environment and
kernel that notebook 6.0 names, beside it).

A notebook instance keeps only /home/ec2-user/SageMaker across a stop and start; its conda
kernels are reset, so the environment lives on that volume and is never the kernel 0.0 runs in.
The lifecycle script ``notebook-instance/on-start.sh`` registers the kernel again after a start.
Needs nothing beyond the standard library: it runs in whatever kernel a learner opens 0.0
with.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from . import PHASE0_DIR
from .files import write_atomic
from .sdk_version import KERNELS

REPO = PHASE0_DIR.parent.parent
# What each SageMaker SDK major's environment is built from (as make setup builds .venv and
# .venv-sdk3); its kernel's name and display name are sdk_version.KERNELS'.
SOURCES = {2: (REPO / "requirements.txt", REPO / "constraints.txt"),
           3: (REPO / "requirements-sdk3.txt", REPO / "constraints-sdk3.txt")}
KERNEL = KERNELS[2][0]
KEPT_VOLUME = Path("/home/ec2-user/SageMaker")  # what a notebook instance keeps across restarts
# constraints.txt was resolved on 3.11: TF 2.15.1 has wheels up to 3.11, matplotlib 3.11 needs 3.11.
PYTHON = (3, 11)
STAMP = ".workshop-env"  # written last: an environment without it is rebuilt, never trusted
HOROVOD = "horovod==0.28.1"
HOROVOD_FLAGS = {"HOROVOD_WITH_TENSORFLOW": "1", "HOROVOD_WITHOUT_PYTORCH": "1",
                 "HOROVOD_WITHOUT_MXNET": "1", "HOROVOD_WITH_GLOO": "1", "HOROVOD_WITH_MPI": "1"}


class SetupProblem(RuntimeError):
    """Something the environment needs is missing here; the message says how to get it."""


def default_env_dir(major=2):
    """On a notebook instance, under the kept volume; elsewhere under the home folder."""
    base = KEPT_VOLUME if KEPT_VOLUME.is_dir() else Path.home()
    return base / ".envs" / KERNELS[major][0]


def pinned(major=2):
    """{name: version} of the ``name==version`` lines of that environment's requirements."""
    pins = {}
    for line in SOURCES[major][0].read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def kernel_has_the_pins(major=2):
    """True when this kernel's Python already has every pinned package (``make setup``'s kernel,
    or the environment this module built)."""
    for name, version in pinned(major).items():
        try:
            if metadata.version(name) != version:
                return False
        except metadata.PackageNotFoundError:
            return False
    return True


def python_version(python):
    """(major, minor) of an interpreter, or None when it does not run."""
    try:
        out = subprocess.run([str(python), "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return tuple(int(n) for n in out.stdout.split()) if out.returncode == 0 else None


def find_python(base_python=""):
    """A Python 3.11 to build on: ``base_python``, else this kernel's, else python3.11 on PATH."""
    wanted = ".".join(map(str, PYTHON))
    if base_python:
        found = python_version(base_python)
        if found == PYTHON:
            return str(base_python)
        raise SetupProblem(f"BASE_PYTHON={base_python!r} is Python "
                           f"{'.'.join(map(str, found)) if found else '(does not run)'}; the "
                           f"workshop's pinned packages need Python {wanted}.")
    candidates = [sys.executable, shutil.which(f"python{wanted}")]
    for python in filter(None, candidates):
        if python_version(python) == PYTHON:
            return python
    here = "this kernel's Python is " + ".".join(map(str, sys.version_info[:2]))
    raise SetupProblem(
        f"The workshop's environment needs Python {wanted} ({here}, and there is no "
        f"python{wanted} on PATH). On a SageMaker notebook instance (Amazon Linux 2023): open a "
        f"terminal and run `sudo dnf install -y python{wanted}`, or attach the lifecycle "
        f"configuration notebook-instance/on-start.sh, which installs it at every start. On "
        f"Debian or Ubuntu: `sudo apt-get install python{wanted} python{wanted}-venv`. Or set "
        f"BASE_PYTHON to the path of a Python {wanted}. Then run this cell again.")


def fingerprint(major=2):
    """Of what the environment is built from: a change to either file updates it."""
    digest = hashlib.sha256()
    for path in SOURCES[major]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run_streamed(command, env=None):
    """Run ``command``, printing its output line by line as it comes (pip's progress)."""
    print("$", " ".join(str(c) for c in command), flush=True)
    process = subprocess.Popen([str(c) for c in command], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    for line in process.stdout:
        print(line, end="", flush=True)
    if process.wait() != 0:
        raise subprocess.CalledProcessError(process.returncode, command)


def env_python(env_dir):
    return Path(env_dir) / "bin" / "python"


def register_kernel(python, major=2):
    """The kernel the notebooks of that SDK major name, for this user (what Jupyter lists)."""
    name, display_name, _ = KERNELS[major]
    run_streamed([python, "-m", "ipykernel", "install", "--user", "--name", name,
                  "--display-name", display_name])


def check_env_dir(env_dir):
    """The Python version of the venv at ``env_dir`` (None: no venv there yet). Refuses, and
    changes nothing, where a rebuild would delete what is not ours or what a reinstall of the
    base Python brings back."""
    config = env_dir / "pyvenv.cfg"
    if not config.exists():
        if env_dir.exists() and any(env_dir.iterdir()):
            raise SetupProblem(f"ENV_DIR {env_dir} exists and is not a Python environment: "
                               f"name a new or empty folder. Nothing was changed.")
        return None
    version = python_version(env_python(env_dir))
    if version is None:
        home = re.search(r"^home\s*=\s*(.+)$", config.read_text(), re.M)
        raise SetupProblem(
            f"The environment at {env_dir} was built on the Python in "
            f"{home.group(1) if home else 'a folder'}, which no longer runs (a notebook "
            f"instance's root volume is new after each start). Install it again (`sudo dnf "
            f"install -y python3.11`, or attach notebook-instance/on-start.sh, which does it at "
            f"every start) and run this cell again; or delete {env_dir} to build anew.")
    return version


def create(env_dir="", base_python="", major=2):
    """Build (or bring up to date) the SDK-v<major> environment at ``env_dir`` and register its
    kernel. Returns the environment's Python. A run that fails leaves no stamp, so the next run
    installs again (pip finishes what an interrupted install left)."""
    env_dir = Path(env_dir).expanduser() if env_dir else default_env_dir(major)
    python = env_python(env_dir)
    version = check_env_dir(env_dir)
    stamp = env_dir / STAMP
    wanted = fingerprint(major)
    requirements, constraints = SOURCES[major]
    if version == PYTHON and stamp.exists() and stamp.read_text().strip() == wanted:
        print(f"{env_dir}: up to date (Python {'.'.join(map(str, PYTHON))}, pinned packages)")
    else:
        if version != PYTHON:  # none yet, or a venv of another Python: build it anew
            shutil.rmtree(env_dir, ignore_errors=True)
            run_streamed([find_python(base_python), "-m", "venv", env_dir])
        stamp.unlink(missing_ok=True)
        run_streamed([python, "-m", "pip", "install", "--no-compile", "-r", requirements,
                      "-c", constraints])
        # `import workshop` from any working directory (papermill, pytest), as make setup does
        site = subprocess.run([str(python), "-c", "import sysconfig; "
                               "print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        write_atomic(Path(site) / "cifar_workshop.pth", f"{PHASE0_DIR}\n")
        write_atomic(stamp, wanted + "\n")
    register_kernel(python, major)
    return str(python)


def add_horovod(python):
    """Build Horovod into the environment of ``python`` for process mode's Horovod notebooks
    (1.5, 2.2, 3.1): it compiles against TensorFlow and Open MPI, so it needs both here."""
    bin_dir = Path(python).parent
    needs = {"mpicxx": "Open MPI with its compiler wrappers (mpicxx, mpirun)",
             "mpirun": "Open MPI's mpirun", "g++": "a C++ compiler (g++)"}
    missing = [what for tool, what in needs.items() if not shutil.which(tool)]
    if missing:
        raise SetupProblem(
            "Building Horovod needs " + ", ".join(missing) + ", which this machine lacks. "
            "Install them with the system's package manager (Debian/Ubuntu: `sudo apt-get "
            "install libopenmpi-dev openmpi-bin g++`), or skip Horovod: notebooks 1.5, 2.2 and "
            "3.1 run in MODE='local' (Docker, the 2.12 image has Horovod) or MODE='host'.")
    run_streamed([python, "-m", "pip", "install", "-c", SOURCES[2][1], "cmake"])
    env = {**os.environ, **HOROVOD_FLAGS, "MAKEFLAGS": "-j2",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    run_streamed([python, "-m", "pip", "install", "--no-build-isolation", HOROVOD], env=env)


def set_up(env_dir="", base_python="", horovod=False, sdk3=False):
    """0.0's install step: nothing when this kernel already is a workshop environment, else the
    environment at ``env_dir`` (see create); with ``sdk3``, 6.0's beside it. Returns the Python
    of the workshop's (v2) kernel."""
    if sdk3:
        beside = Path(env_dir).expanduser().with_name(KERNELS[3][0]) if env_dir else ""
        create(beside, base_python, major=3)
    if kernel_has_the_pins():
        print(f"This kernel ({sys.prefix}) already has the workshop's pinned packages: "
              "nothing to install.")
        python = sys.executable
    else:
        python = create(env_dir, base_python)
    if horovod and not python_imports(python, "horovod.tensorflow"):
        add_horovod(python)
    return python


def python_imports(python, module):
    return subprocess.run([str(python), "-c", f"import {module}"],
                          capture_output=True).returncode == 0


def main(argv=None):
    """``python -m workshop.kernel_env register``: the lifecycle script's call after a start, in
    each environment; the kernel is the one for that environment's SageMaker SDK."""
    import argparse

    from .sdk_version import installed_major

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["register"])
    parser.parse_args(argv)
    register_kernel(sys.executable, installed_major())


if __name__ == "__main__":
    main()
