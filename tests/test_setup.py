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


def test_make_setups_kernel_needs_nothing_from_0_0():
    """0.0 in the kernel `make setup` built finds every pin of requirements.txt installed, so
    it builds no second environment (and CI's 0.0 installs nothing)."""
    from workshop import kernel_env

    pins = kernel_env.pinned()
    assert pins["tensorflow-cpu"] == "2.15.1" and pins["sagemaker"].startswith("2.")
    assert kernel_env.kernel_has_the_pins()


def test_0_0_refuses_a_python_other_than_3_11_and_says_how_to_get_one():
    from workshop import kernel_env

    other = next(Path.home().glob(".pyenv/versions/3.10.*/bin/python3.10"))
    try:
        kernel_env.find_python(str(other))
    except kernel_env.SetupProblem as err:
        assert "Python 3.10" in str(err) and "need Python 3.11" in str(err)
    else:
        raise AssertionError("a 3.10 BASE_PYTHON was accepted")
    # No 3.11 at all: this kernel's Python is 3.10 and PATH has no python3.11.
    code = ("from workshop import kernel_env\ntry:\n    kernel_env.find_python()\n"
            "except kernel_env.SetupProblem as err:\n    print(err)\n")
    out = subprocess.run([str(other), "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=ROOT / "code" / "phase0", env={"PATH": "/nonexistent"})
    assert "sudo dnf install -y python3.11" in out.stdout, out.stderr
    assert "BASE_PYTHON" in out.stdout


def test_horovod_opt_in_names_what_is_missing_before_building(monkeypatch, tmp_path):
    from workshop import kernel_env

    monkeypatch.setenv("PATH", str(tmp_path))  # no mpicxx, mpirun or g++ here
    try:
        kernel_env.add_horovod(sys.executable)
    except kernel_env.SetupProblem as err:
        assert "Open MPI" in str(err) and "g++" in str(err) and "MODE='local'" in str(err)
    else:
        raise AssertionError("Horovod's build started without a compiler or MPI")


def test_0_0_never_deletes_a_folder_that_is_not_its_environment(tmp_path):
    from workshop import kernel_env

    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("not a venv")
    try:
        kernel_env.create(mine)
    except kernel_env.SetupProblem as err:
        assert "not a Python environment" in str(err)
    else:
        raise AssertionError("a folder that is not a venv was taken as ENV_DIR")
    assert (mine / "thesis.txt").read_text() == "not a venv"


def test_0_0_after_a_restart_asks_for_the_base_python_instead_of_rebuilding(tmp_path):
    """A notebook instance's root volume is new after a start: the venv on the kept volume
    points at a python3.11 that is gone until it is installed again."""
    from workshop import kernel_env

    env = tmp_path / "cifar-workshop"
    (env / "bin").mkdir(parents=True)
    (env / "pyvenv.cfg").write_text("home = /usr/bin-gone\nversion = 3.11.7\n")
    (env / "bin" / "python").symlink_to("/usr/bin-gone/python3.11")
    (env / kernel_env.STAMP).write_text(kernel_env.fingerprint() + "\n")
    try:
        kernel_env.create(env)
    except kernel_env.SetupProblem as err:
        assert "/usr/bin-gone" in str(err) and "sudo dnf install -y python3.11" in str(err)
    else:
        raise AssertionError("an environment whose Python is gone was not reported")
    assert (env / kernel_env.STAMP).exists()  # nothing deleted: reinstalling Python revives it
