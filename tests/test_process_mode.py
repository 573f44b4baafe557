"""Process mode launches probe.py like a SageMaker container: folder, env, argv, distribution.

The probe (tests/probe_entry/probe.py) records what it was given in output/data; these tests
read those records. Distributed launches run for real: mpirun ranks and MWMS worker processes.
"""

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from aws_fixtures import *  # noqa: F401,F403 - sdk_offline, probe_estimator
from aws_fixtures import PROBE_DIR

from workshop import jobs, progress
from workshop.files import PORT_RANGE, free_ports
from workshop.process_mode.runner import JobFailed, JobStoppedWarning, run_process_job

MPI = {"mpi": {"enabled": True, "processes_per_host": 2}}
MWMS = {"multi_worker_mirrored_strategy": {"enabled": True}}
SLEEP = 600  # the probe's ranks sleep this long unless something stops them
FAIL_FAST_SECONDS = 120  # ample for start-up on a loaded machine, a fifth of SLEEP


@pytest.fixture
def channels(tmp_path):
    folders = {}
    for name in ("train", "eval"):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        (folder / "part-0.tfrecord").write_bytes(b"x")
        folders[name] = folder
    return {"train": str(folders["train"]), "eval": f"file://{folders['eval']}"}


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


def records(job_dir):
    """{(host, rank): probe record} from output/data."""
    found = {}
    for path in (Path(job_dir) / "output" / "data").glob("probe-*.json"):
        host, rank = path.stem[len("probe-"):].rsplit("-", 1)  # probe-algo-2-3.json
        found[(host, int(rank))] = json.loads(path.read_text())
    return found


def processes_under(folder):
    """PIDs whose working directory is inside ``folder`` (the entry points run from code/)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd").startswith(str(folder)):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def tar_names(path):
    with tarfile.open(path) as tar:
        return sorted(tar.getnames())


def test_single_process_job_folder_env_and_argv(probe_estimator, channels, runs, tmp_path):
    checkpoints = tmp_path / "persistent-checkpoints"
    estimator = probe_estimator(checkpoint_s3_uri=f"file://{checkpoints}")
    stream = io.StringIO()

    job = run_process_job(estimator, channels, job_name="probe-single", runs_dir=runs,
                          stream=stream)

    job_dir = runs / "probe-single"
    assert job.job_dir == job_dir and job.launcher == "single" and job.num_processes == 1
    config = job_dir / "input" / "config"
    hps = json.loads((config / "hyperparameters.json").read_text())
    assert hps["sagemaker_program"] == '"probe.py"'
    assert hps["epochs"] == "3" and hps["batch-size"] == "64"  # JSON-encoded, as the SDK sends
    assert json.loads((config / "resourceconfig.json").read_text())["hosts"] == ["algo-1"]
    assert sorted(json.loads((config / "inputdataconfig.json").read_text())) == ["eval", "train"]
    assert (job_dir / "input" / "data" / "train").resolve() == Path(channels["train"])
    assert (job_dir / "code" / "probe.py").is_file()
    assert (job_dir / "checkpoints").resolve() == checkpoints and checkpoints.is_dir()
    assert (job_dir / "output" / "success").exists()

    (record,) = records(job_dir).values()
    env = record["env"]
    assert record["argv"] == ["probe.py", "--batch-size", "64", "--epochs", "3",
                              "--model_dir", str(job_dir / "model")]
    assert record["cwd"] == str(job_dir / "code")
    assert env["SM_MODEL_DIR"] == str(job_dir / "model")
    assert env["SM_CHANNEL_TRAIN"] == str(job_dir / "input" / "data" / "train")
    assert env["SM_CHANNELS"] == '["eval","train"]'
    assert env["SM_OUTPUT_DATA_DIR"] == str(job_dir / "output" / "data")
    assert json.loads(env["SM_HPS"]) == {"batch-size": 64, "epochs": 3,
                                         "model_dir": str(job_dir / "model")}
    assert env["SM_HP_EPOCHS"] == "3" and env["SM_CURRENT_HOST"] == "algo-1"
    assert env["TRAINING_JOB_NAME"] == "probe-single" and "TF_CONFIG" not in env

    assert tar_names(job.model_artifact) == ["probe.txt"]
    assert tar_names(job.output_artifact) == ["metrics.json", "probe-algo-1-0.json"]
    assert "probe rank 0 on algo-1" in stream.getvalue()
    assert "probe rank 0 on algo-1" in job.logs_path.read_text()


def test_failure_writes_failure_file_and_raises_with_the_tail(probe_estimator, channels, runs):
    estimator = probe_estimator({"crash-rank": 0})

    with pytest.raises(JobFailed) as failed:
        run_process_job(estimator, channels, job_name="probe-crash", runs_dir=runs, stream=None)

    job_dir = runs / "probe-crash"
    assert failed.value.exit_code == 3 and failed.value.job_dir == job_dir
    assert "crashing as asked" in str(failed.value) and "exited with code 3" in str(failed.value)
    assert "crashing as asked" in (job_dir / "output" / "failure").read_text()
    assert not (job_dir / "output" / "success").exists()
    assert not (job_dir / "model.tar.gz").exists()


def test_mpi_runs_ranks_per_simulated_host_with_the_masters_env(probe_estimator, channels, runs):
    estimator = probe_estimator(distribution=MPI, instance_count=2)
    stream = io.StringIO()

    job = run_process_job(estimator, channels, job_name="probe-mpi", runs_dir=runs, stream=stream)

    found = records(job.job_dir)
    assert job.num_processes == 4
    # The toolkit forwards the master's SM_* to every rank (`mpirun -x NAME`): all say algo-1.
    assert sorted(found) == [("algo-1", 0), ("algo-1", 1), ("algo-1", 2), ("algo-1", 3)]
    for record in found.values():
        assert record["env"]["OMPI_COMM_WORLD_SIZE"] == "4"
        assert record["env"]["SM_HOSTS"] == '["algo-1","algo-2"]'
        assert json.loads(record["env"]["SM_FRAMEWORK_PARAMS"])["sagemaker_mpi_enabled"] is True
        assert record["argv"] == found[("algo-1", 0)]["argv"]
    assert "[algo-2,rank 3] probe rank 3" in stream.getvalue()


def test_smdistributed_ranks_see_their_own_host(probe_estimator, channels, runs):
    smddp = {"smdistributed": {"dataparallel": {"enabled": True}}}
    estimator = probe_estimator(distribution=smddp, instance_count=2, framework_version="2.11",
                                py_version="py39")

    job = run_process_job(estimator, channels, job_name="probe-smddp", runs_dir=runs, stream=None)

    found = records(job.job_dir)
    # one rank per simulated host: SMDDP has no processes_per_host, and a CPU no GPUs to count
    assert sorted(found) == [("algo-1", 0), ("algo-2", 1)]
    assert json.loads(found[("algo-2", 1)]["env"]["SM_RESOURCE_CONFIG"])["current_host"] == \
        "algo-2"


def test_mwms_runs_one_worker_per_host_with_tf_config(probe_estimator, channels, runs):
    estimator = probe_estimator(distribution=MWMS, instance_count=2)

    job = run_process_job(estimator, channels, job_name="probe-mwms", runs_dir=runs, stream=None)

    found = records(job.job_dir)
    assert sorted(found) == [("algo-1", 0), ("algo-2", 1)]
    configs = [json.loads(found[key]["env"]["TF_CONFIG"]) for key in sorted(found)]
    workers = configs[0]["cluster"]["worker"]
    assert [c["task"] for c in configs] == [{"index": 0, "type": "worker"},
                                            {"index": 1, "type": "worker"}]
    assert all(c["cluster"] == {"worker": workers} and c["environment"] == "cloud"
               for c in configs)
    assert len(workers) == 2 and all(w.startswith("127.0.0.1:") for w in workers)
    ports = {int(w.rsplit(":", 1)[1]) for w in workers}
    assert len(ports) == 2 and all(port < ephemeral_start() for port in ports)  # see free_ports
    assert found[("algo-2", 1)]["env"]["SM_CURRENT_HOST"] == "algo-2"


def ephemeral_start():
    """The first port of this machine's range for outgoing connections."""
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    ports = free_ports(50)
    assert len(set(ports)) == 50
    assert all(PORT_RANGE[0] <= port <= PORT_RANGE[1] < ephemeral_start() for port in ports)
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("0.0.0.0", port))


@pytest.mark.parametrize("distribution", [MPI, MWMS], ids=["mpi", "mwms"])
def test_a_crashing_rank_fails_the_job_fast_and_leaves_no_process(
        probe_estimator, channels, runs, distribution):
    estimator = probe_estimator({"crash-rank": 1, "sleep": SLEEP}, distribution=distribution,
                                instance_count=2)
    started = time.monotonic()

    with pytest.raises(JobFailed) as failed:
        run_process_job(estimator, channels, runs_dir=runs, stream=None)

    assert time.monotonic() - started < FAIL_FAST_SECONDS
    assert "crashing as asked" in str(failed.value)
    assert processes_under(failed.value.job_dir) == []


def test_max_run_stops_every_rank_as_sagemaker_does(probe_estimator, channels, runs):
    """SIGTERM to the ranks (not mpirun, which would SIGKILL them after 1 s), they save in 2.5 s
    and exit 0: the job is Stopped, not failed, with the model they saved and the SDK's
    warning."""
    estimator = probe_estimator({"sleep": SLEEP, "on-sigterm": "save", "save-seconds": 2.5},
                                distribution=MPI, instance_count=1)
    started = time.monotonic()

    with pytest.warns(JobStoppedWarning) as warned:
        job = run_process_job(estimator, channels, runs_dir=runs, stream=None, timeout=3,
                              stop_grace=30)

    assert time.monotonic() - started < FAIL_FAST_SECONDS
    assert job.status == "Stopped" and job.stop_reason == "MaxRuntimeExceeded"
    assert 2.5 <= job.seconds_to_exit < 30  # its save, within stop_grace
    assert str(warned[0].message) == (
        "Job ended with status 'Stopped' rather than 'Completed'. This could mean the job timed "
        "out or stopped early for some other reason: Consider checking whether it completed as "
        "you expect.")
    with tarfile.open(job.model_artifact) as tar:
        assert tar.extractfile("probe.txt").read() == b"saved at SIGTERM\n"
    assert not (job.job_dir / "output" / "failure").exists()
    assert (job.job_dir / "output" / "success").exists()  # every rank exited 0
    log = job.logs_path.read_text()
    assert log.count("SIGTERM, saved, exiting 0") == 2  # both ranks had their window
    assert processes_under(job.job_dir) == []


def test_max_run_kills_what_outlives_the_grace_period(probe_estimator, channels, runs):
    estimator = probe_estimator({"sleep": SLEEP, "on-sigterm": "ignore"})
    started = time.monotonic()

    with pytest.warns(JobStoppedWarning):
        job = run_process_job(estimator, channels, runs_dir=runs, stream=None, timeout=2,
                              stop_grace=2)

    assert time.monotonic() - started < FAIL_FAST_SECONDS
    assert job.status == "Stopped" and 2 <= job.seconds_to_exit < FAIL_FAST_SECONDS
    assert "SIGKILLed after the grace period" in job.logs_path.read_text()
    assert tar_names(job.model_artifact) == []  # it saved nothing: an empty model.tar.gz
    assert not (job.job_dir / "output" / "failure").exists()
    assert processes_under(job.job_dir) == []


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler, as in a kernel (a shell that starts pytest in the
    background leaves SIGINT ignored, and Python keeps it so)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_interrupt_stops_every_process_and_writes_failure(probe_estimator, channels, runs,
                                                         python_sigint_handler):
    estimator = probe_estimator({"sleep": SLEEP}, distribution=MPI, instance_count=1)
    started = time.monotonic()

    sent = threading.Event()

    def interrupt(line):  # the notebook's "stop", once, when the first rank has started
        if "probe rank" in line and not sent.is_set():
            sent.set()
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        run_process_job(estimator, channels, job_name="probe-interrupted", runs_dir=runs,
                        stream=None, on_line=interrupt)

    assert time.monotonic() - started < FAIL_FAST_SECONDS
    job_dir = runs / "probe-interrupted"
    assert "interrupted" in (job_dir / "output" / "failure").read_text()
    assert processes_under(job_dir) == []


def test_projection_appears_right_after_the_first_epoch_line(probe_estimator, channels, runs):
    """1000 epochs of 1 s cannot fit in max_run=600: said after epoch 1, long before max_run
    (the test stops the job as StopTrainingJob does when the projection appears)."""
    estimator = probe_estimator({"epoch-lines": 1000, "epoch-seconds": 1, "on-sigterm": "save"})
    lines, stop = [], threading.Event()

    def on_line(line):
        lines.append(line)
        if line.startswith("projection:"):
            stop.set()

    with pytest.warns(JobStoppedWarning):
        job = run_process_job(estimator, channels, runs_dir=runs, stream=None, timeout=600,
                              stop_grace=10, on_line=on_line, stop_request=stop)

    first = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/1000 "))
    assert lines[first + 1].startswith("projection: epoch 1 took 1s"), lines
    assert "1000 epochs need about" in lines[first + 1]
    assert f'RESUME_FROM = "{job.job_name}"' in lines[first + 1]
    fit = int(re.search(r"Lower EPOCHS to (\d+)", lines[first + 1])[1])
    assert 500 <= fit < 600  # max_run's 600 s less the start-up, at 1 s an epoch
    assert job.status == "Stopped" and job.stop_reason == "Stopped"  # by us, not by max_run
    assert 1 <= job.last_epoch < 100


def test_progress_bar_follows_the_epoch_lines(probe_estimator, channels, runs):
    estimator = probe_estimator({"epoch-lines": 3, "epoch-seconds": 0.2})
    out = io.StringIO()

    with progress.EpochProgress("probe", file=out) as bar:
        run_process_job(estimator, channels, runs_dir=runs, stream=None, on_line=bar)
        assert (bar.bar.n, bar.bar.total) == (3, 3)
    assert "3/3" in out.getvalue() and "1000 images/s" in out.getvalue()


def test_stdout_progress_tees_printed_lines_into_the_bar(capsys):
    """local/host mode: the SDK prints the container's logs; the bar reads them from stdout."""
    with progress.stdout_progress("sdk") as bar:
        print("algo-1-abcde | epoch 2/4 - loss: 1.0 - accuracy: 0.5 - val_loss: 1.0 - "
              "val_accuracy: 0.5 - lr: 0.01 - time: 3.0s - images/s: 250.0")
        assert (bar.bar.n, bar.bar.total, bar.bar.initial) == (2, 4, 1)
    assert "epoch 2/4" in capsys.readouterr().out  # still printed


def test_s3_channels_are_refused_with_the_fix(probe_estimator, runs):
    with pytest.raises(ValueError, match="process mode reads local data.*data_channels"):
        run_process_job(probe_estimator(), {"train": "s3://bucket/train"}, runs_dir=runs)


def test_run_in_process_returns_the_common_result(probe_estimator, channels, runs, capsys):
    result = jobs.run_in_process(probe_estimator(), channels, runs_dir=runs)

    assert result.mode == "process" and (runs / result.job_name).is_dir()
    assert result.model_artifact == runs / result.job_name / "model.tar.gz"
    assert result.output_dir == runs / result.job_name / "output" / "data"
    assert result.metrics["eval_accuracy"] == 0.5
    assert result.history == [{"epoch": 1, "loss": 2.0}]
    assert result.logs_path.read_text().count("probe rank 0") == 1
    assert result.wall_seconds > 0
    assert (result.instance_type, result.instance_count, result.spot) == ("local", 1, False)
    assert "probe rank 0 on algo-1" in capsys.readouterr().out


KERNEL = """
import sys
from sagemaker.tensorflow import TensorFlow
from workshop import jobs
from workshop.process_mode.runner import run_process_job

probe_dir, train, runs = sys.argv[1:]
estimator = TensorFlow(
    entry_point="probe.py", source_dir=probe_dir, role=jobs.OFFLINE_ROLE,
    framework_version="2.12", py_version="py310", instance_type="local", instance_count=2,
    distribution={"mpi": {"enabled": True, "processes_per_host": 2}},
    sagemaker_session=jobs.session_for("process"), hyperparameters={"sleep": 600},
    disable_profiler=True)
run_process_job(estimator, {"train": train}, job_name="probe-orphans", runs_dir=runs)
"""


def test_a_killed_kernel_leaves_no_training_process(sdk_offline, channels, runs):  # noqa: F811
    """A notebook kernel SIGKILLed mid-job runs no cleanup; the job's 4 ranks and mpirun still
    go, within seconds (workshop/process_mode/watchdog.py)."""
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL, str(PROBE_DIR), channels["train"],
                               str(runs)], stdout=subprocess.DEVNULL)
    job_dir = runs / "probe-orphans"
    deadline = time.monotonic() + 120
    while len(list(job_dir.glob("output/data/probe-*.json"))) < 4:  # every rank has started
        assert kernel.poll() is None and time.monotonic() < deadline, "the job did not start"
        time.sleep(0.2)
    assert len(processes_under(job_dir)) >= 4

    kernel.kill()
    kernel.wait()

    deadline = time.monotonic() + FAIL_FAST_SECONDS
    while processes_under(job_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = processes_under(job_dir)
    for pid in left:  # not to leave them to the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert left == []
