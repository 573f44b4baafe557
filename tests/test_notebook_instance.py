"""The learner's set-up path, in a stand-in of a SageMaker notebook instance (image
workshop/notebook-instance:standin from containers/build_images.py): the non-root user ec2-user,
the kept volume /home/ec2-user/SageMaker, a "conda_python3" kernel on Python 3.10 with only
ipykernel and papermill, python3.11 where Amazon Linux 2023's package puts it; no make, no apt,
no compiler, no Open MPI.

First start: papermill runs 0.0 in conda_python3 (it builds the workshop's environment on the
kept volume, with pip from the package index, and registers the kernel; with INSTALL_SDK3 also
6.0's SDK v3 environment and kernel), then 1.0 (fixture data
served on loopback), 1.1 and 1.2 in process mode, each in the kernel its committed metadata
names; 1.5 in process mode stops first and names the modes that work. Second start (a new
container, the same kept volume): no kernel until the lifecycle script runs, then 0.0 runs in
it, and 6.0's kernel is listed again too.
"""

import json
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from aws_fixtures import sdk_offline  # noqa: F401  (telemetry off: nothing leaves the machine)
from helpers import NOTEBOOK_RUN, notebook_path, output_text

from workshop import run_notebooks

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "workshop/notebook-instance:standin"
KEPT = "/home/ec2-user/SageMaker"
PHASE0 = f"{KEPT}/workshop/code/phase0"
ENV_PYTHON = f"{KEPT}/.envs/cifar-workshop/bin/python"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # this sandbox reaches the package index via it
SMALL = NOTEBOOK_RUN  # as the notebook tests run 1.1 and 1.2


def papermill(prefix, parameters=None, kernel=None, out=None):
    """The shell line a learner's Jupyter amounts to: the notebook in its folder, its output
    under the kept volume as out/<out>.ipynb; `|| echo` goes on so every notebook is reported."""
    name, out = notebook_path(prefix).name, out or prefix
    kernel_flag = f"-k {kernel} " if kernel else ""  # none: the kernel the notebook names
    return (f"papermill --no-progress-bar {kernel_flag}--cwd {PHASE0} {PHASE0}/{name} "
            f"{KEPT}/out/{out}.ipynb -y '{json.dumps(parameters or {})}' "
            f"> {KEPT}/out/{out}.log 2>&1 || echo '{out} failed'")


def readable_copy(opt_out_folder, tmp_path_factory):
    """The SDK's telemetry opt-out (sdk_offline) where the container's ec2-user can read it."""
    folder = tmp_path_factory.mktemp("aws-config")
    shutil.copy(opt_out_folder / "sagemaker-config.yaml", folder)
    folder.chmod(0o755)
    (folder / "sagemaker-config.yaml").chmod(0o644)
    return folder


def docker_run(kept, aws_config, lines, user="ec2-user", timeout=1800):
    """Run ``lines`` as one script in a new container of the stand-in (a start of the
    instance: a new root volume, the same kept volume)."""
    script = kept / "out" / "start.sh"
    script.write_text("\n".join(["set -e", *lines]) + "\n")
    command = ["docker", "run", "--rm", "--network", "host", "--user", user,
               "-v", f"{kept}:{KEPT}", "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
               "-v", f"{aws_config}:/opt/aws-config:ro",
               "-e", f"PIP_CERT={CA_BUNDLE}", "-e", "PIP_DISABLE_PIP_VERSION_CHECK=1",
               "-e", "AWS_EC2_METADATA_DISABLED=true", "-e", "AWS_DEFAULT_REGION=us-east-1",
               "-e", "SAGEMAKER_USER_CONFIG_OVERRIDE=/opt/aws-config/sagemaker-config.yaml",
               IMAGE, "bash", f"{KEPT}/out/start.sh"]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def executed(kept, prefix):
    path = kept / "out" / f"{prefix}.ipynb"
    assert path.exists(), f"{prefix} did not run: {(kept / 'out' / f'{prefix}.log').read_text()}"
    return nbformat.read(path, as_version=4)


def errors(notebook):
    return [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]


def result(kept, prefix):
    notebook = executed(kept, prefix)
    assert not errors(notebook), f"{prefix}: {errors(notebook)[0]['evalue']}"
    found = run_notebooks.result_line(notebook)
    assert found is not None, f"{prefix} printed no RESULT line"
    return found


@pytest.fixture(scope="module")
def first_start(tmp_path_factory, sdk_offline, cifar_url, cifar_archive):  # noqa: F811
    """The kept volume after the first start: the repository, 0.0's environment, the runs."""
    kept = tmp_path_factory.mktemp("notebook-instance") / "SageMaker"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (kept / "workshop" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, kept / "workshop" / name)
    (kept / "out").mkdir()
    subprocess.run(["chown", "-R", "1000:1000", str(kept)], check=True)
    data = {"CIFAR10_URL": cifar_url, "CIFAR10_MD5": cifar_archive.md5, "NUM_SHARDS": 2}
    aws_config = readable_copy(sdk_offline, tmp_path_factory)
    run = docker_run(kept, aws_config, [
        "python3 --version", "command -v make gcc g++ mpirun || true",
        papermill("0.0", {"INSTALL_SDK3": True}, kernel="conda_python3"),
        papermill("1.0", data), papermill("1.1", SMALL), papermill("1.2", SMALL),
        papermill("1.5", {**SMALL, "MODE": "process"})])
    assert run.returncode == 0, run.stderr[-3000:]
    return kept, run.stdout, aws_config


def test_the_stand_in_is_a_machine_without_make_or_the_workshops_python(first_start):
    _, stdout, _ = first_start
    assert stdout.splitlines()[0].startswith("Python 3.10.")  # conda_python3's kind, not 3.11
    assert not any(line.endswith(("/make", "/gcc", "/g++", "/mpirun"))
                   for line in stdout.splitlines())


def test_0_0_builds_the_environment_on_the_kept_volume_and_registers_its_kernel(first_start):
    kept, _, _ = first_start
    found = result(kept, "0.0")
    assert found["status"] == "Completed"
    assert found["kernel"] == "cifar-workshop" and found["kernel_python"] == ENV_PYTHON
    assert found["python"].startswith("3.11.") and found["tensorflow"] == "2.15.1"
    assert found["sagemaker_sdk"].startswith("2.") and found["horovod"] is None
    assert found["modes"]["process"] is True
    assert found["modes"]["process (Horovod/SMDDP notebooks)"] is False
    assert (kept / ".envs" / "cifar-workshop" / ".workshop-env").exists()
    assert (kept / ".envs" / "cifar-workshop-sdk3" / ".workshop-env").exists()  # INSTALL_SDK3
    log = output_text(executed(kept, "0.0"))
    assert "Downloading tensorflow_cpu-2.15.1" in log  # pip's progress reached the notebook


def test_1_0_1_1_and_1_2_run_in_the_kernel_0_0_registered(first_start):
    kept, _, _ = first_start
    for prefix in ("1.0", "1.1", "1.2"):
        assert executed(kept, prefix).metadata.kernelspec.name == "cifar-workshop"
    assert result(kept, "1.0") == {"status": "Completed", "train": 1024, "validation": 256,
                                   "eval": 256, "num_shards": 2}
    for prefix in ("1.1", "1.2"):
        found = result(kept, prefix)
        assert found["status"] == "Completed" and found["epochs"] == SMALL["EPOCHS"]
        assert found["eval_accuracy"] > 0.3  # 10 classes: chance is 0.1


def test_1_5_without_horovod_stops_first_and_names_the_modes_that_work(first_start):
    kept, _, _ = first_start
    [error] = errors(executed(kept, "1.5"))
    assert error["ename"] == "ModeUnavailable"
    assert "INSTALL_HOROVOD = True" in error["evalue"]
    assert "MODE='local'" in error["evalue"] and "MODE='host'" in error["evalue"]


def test_after_a_restart_the_lifecycle_script_brings_the_kernel_back(first_start):
    kept, _, aws_config = first_start
    report = papermill("0.0", {"INSTALL": False}, out="0.0-restarted")
    before = docker_run(kept, aws_config, [report], timeout=600)
    assert before.returncode == 0 and "0.0-restarted failed" in before.stdout
    assert "No such kernel" in (kept / "out" / "0.0-restarted.log").read_text()
    kernels = f"jupyter kernelspec list --json > {KEPT}/out/kernels.json"
    (kept / "out" / "report.sh").write_text(f"{report}\n{kernels}\n")
    after = docker_run(kept, aws_config, [
        f"bash {KEPT}/workshop/notebook-instance/on-start.sh",
        "sudo -u ec2-user env " + " ".join(f'"{name}=${name}"' for name in (
            "PATH", "AWS_EC2_METADATA_DISABLED", "AWS_DEFAULT_REGION",
            "SAGEMAKER_USER_CONFIG_OVERRIDE")) + f" bash {KEPT}/out/report.sh"],
        user="root", timeout=600)
    assert after.returncode == 0, after.stderr[-3000:]
    found = result(kept, "0.0-restarted")
    assert found["kernel_python"] == ENV_PYTHON and found["tensorflow"] == "2.15.1"
    specs = json.loads((kept / "out" / "kernels.json").read_text())["kernelspecs"]
    assert specs["cifar-workshop-sdk3"]["spec"]["argv"][0] == \
        f"{KEPT}/.envs/cifar-workshop-sdk3/bin/python"  # 6.0's kernel is back too
