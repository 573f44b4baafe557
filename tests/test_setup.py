"""What `make setup` must have installed: without these, tests elsewhere fail, never skip."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_open_mpi_launcher_is_installed():
    assert shutil.which("mpirun"), "mpirun missing: `make setup` installs openmpi-bin"


def test_horovod_is_built_with_tensorflow_mpi_and_gloo():
    check = subprocess.run([str(Path(sys.executable).with_name("horovodrun")), "--check-build"],
                           capture_output=True, text=True, timeout=120)
    for line in ("[X] TensorFlow", "[X] MPI", "[X] Gloo"):
        assert line in check.stdout, f"Horovod lacks {line}: rerun `make setup`"


def test_side_environments_exist():
    assert (ROOT / ".venv-keras3" / "bin" / "python").exists(), "run `make setup` (.venv-keras3)"
    assert (ROOT / ".venv-toolkit" / "bin" / "train").exists(), "run `make setup` (.venv-toolkit)"
