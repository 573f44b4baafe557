"""What `make setup` must have installed: without these, tests elsewhere fail, never skip."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_open_mpi_launcher_is_installed():
    assert shutil.which("mpirun"), "mpirun missing: `make setup` installs openmpi-bin"


def test_horovod_is_built_with_tensorflow_mpi_and_gloo():
    """What `horovodrun --check-build` reports, read from Horovod itself (that command also
    probes PyTorch and MXNet, which took 28 s here)."""
    check = subprocess.run([sys.executable, "-c", "import horovod.tensorflow as hvd; "
                            "print(hvd.mpi_built(), hvd.gloo_built())"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, f"Horovod lacks TensorFlow: rerun `make setup`\n{check.stderr}"
    mpi, gloo = check.stdout.split()
    assert mpi == "True", "Horovod lacks MPI: rerun `make setup`"
    assert gloo == "True", "Horovod lacks Gloo: rerun `make setup`"


def test_side_environments_exist():
    assert (ROOT / ".venv-keras3" / "bin" / "python").exists(), "run `make setup` (.venv-keras3)"
    assert (ROOT / ".venv-toolkit" / "bin" / "train").exists(), "run `make setup` (.venv-toolkit)"
