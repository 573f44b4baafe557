"""Every notebook: committed clean with one `parameters` cell; executed headless with papermill
against the fixture data, and its RESULT asserted."""

import os
import re

import nbformat
import pytest
from helpers import NOTEBOOK_RUN, output_text, run_notebook, stop_at_first_epoch_line

from workshop import RUNS_DIR, records, run_notebooks
from workshop.entry_points import BY_NOTEBOOK

NOTEBOOKS = run_notebooks.notebooks()
TRAINING_PARAMETERS = {"MODE", "DATA_DIR", "EPOCHS", "BATCH_SIZE", "LEARNING_RATE"}
DEPLOY_PARAMETERS = {"MODE", "DATA_DIR", "MODEL_FROM", "BATCH_SIZE", "INSTANCE_TYPE", "SERVERLESS",
                     "ROLE_ARN", "S3_BUCKET"}


def test_the_workshop_has_its_notebooks():
    names = [p.name for p in NOTEBOOKS]
    for expected in ("0.0.Setup-Environment.ipynb", "1.0.Download-Dataset.ipynb",
                     "1.1.Train-Scratch.ipynb", "1.2.Train_Keras_Local_Script_Mode.ipynb",
                     "2.1.Train_TF_Local_Script_Mode.ipynb", "1.5.Train_Keras_Horovod.ipynb",
                     "2.2.Train_TF_Horovod.ipynb", "3.1.Train-TF-DDP.ipynb",
                     "3.2.Train-TF-MultiWorkerMirrored.ipynb", "4.1.Deploy-Inference.ipynb",
                     "5.0.Compare-Runs.ipynb"):
        assert expected in names
    assert names == sorted(names, key=lambda n: tuple(int(x) for x in n.split(".")[:2]))


@pytest.mark.parametrize("path", NOTEBOOKS + run_notebooks.notebooks(language="ko"),
                         ids=lambda p: p.name)
def test_committed_notebook_is_clean_with_one_parameters_cell(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} is committed with outputs"
            assert cell.execution_count is None, f"{path.name} has execution counts"
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    if path.name.startswith("4."):
        assert DEPLOY_PARAMETERS <= run_notebooks.parameter_names(path)
    elif path.name.startswith("1.1.") or path.name[:3] in BY_NOTEBOOK:  # training notebooks
        assert TRAINING_PARAMETERS <= run_notebooks.parameter_names(path)


def run(tmp_path, number, expect=("Completed",), **parameters):
    return run_notebook(tmp_path, number, parameters, expect=expect)


def pictures(notebook):
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    return sum("image/png" in o.get("data", {}) for o in outputs)


def test_0_0_reports_versions_and_modes_without_aws(tmp_path):
    result, _ = run(tmp_path, "0.0", INSTALL=False)
    assert result["tensorflow"] == "2.15.1" and result["keras"].startswith("2.")
    assert result["horovod"] == "0.28.1"
    assert result["modes"]["process"] is True
    assert result["modes"]["local"] is True  # make test starts a Docker engine (local-images)
    assert result["modes"]["host"] is False  # no AWS credentials here


def test_1_0_downloads_converts_and_shows_samples(tmp_path, cifar_url, cifar_archive):
    result, notebook = run(tmp_path, "1.0", CIFAR10_URL=cifar_url, CIFAR10_MD5=cifar_archive.md5,
                           DATA_DIR=str(tmp_path / "data"), NUM_SHARDS=2)
    assert result == {"status": "Completed", "train": 1024, "validation": 256, "eval": 256,
                      "num_shards": 2}
    assert pictures(notebook) >= 1


def test_1_1_trains_in_the_kernel_above_chance(tmp_path, cifar_data_dir):
    result, notebook = run(tmp_path, "1.1", DATA_DIR=str(cifar_data_dir), EPOCHS=3, BATCH_SIZE=64)
    assert result["epochs"] == 3
    assert result["eval_accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert result["served_accuracy"] == pytest.approx(result["eval_accuracy"], abs=0.01)
    assert (RUNS_DIR / "1.1-scratch" / "model" / "1" / "saved_model.pb").exists()
    assert any(run["notebook"] == "1.1" and run["mode"] == "kernel"
               and run["eval_accuracy"] == result["eval_accuracy"]
               for run in records.load_runs())  # recorded for 5.0
    assert pictures(notebook) >= 4  # samples, curves, confusion matrix, predictions
    text = output_text(notebook)
    assert "keras.layers.Conv2D(" in text and ".map(" in text  # the model and pipeline, shown


# What a script-mode notebook's RESULT line holds, in English and in Korean alike.
SCRIPT_MODE_RESULT = {"status", "mode", "job_name", "epochs", "workers", "eval_accuracy",
                      "images_per_sec", "epoch_seconds", "wall_seconds"}


def check_script_mode_run(number, result, notebook, epochs):
    assert set(result) == SCRIPT_MODE_RESULT
    assert result["mode"] == "process" and result["epochs"] == epochs and result["workers"] == 1
    assert result["eval_accuracy"] > 0.3
    assert result["images_per_sec"] > 0
    assert pictures(notebook) >= 2  # training curves, predictions of the model artifact
    assert run_notebooks.result_line(notebook) == result
    (record,) = [r for r in records.load_runs() if r["job_name"] == result["job_name"]]
    assert record["notebook"] == number and record["instance_count"] == 1
    assert record["eval_accuracy"] == result["eval_accuracy"]


@pytest.mark.parametrize("number", ["1.2", "2.1"])
def test_script_mode_notebook_trains_in_process_mode(notebook_run, number):
    done = notebook_run(number)
    check_script_mode_run(number, done.result, done.notebook, NOTEBOOK_RUN["EPOCHS"])


@pytest.mark.parametrize("number, sibling", [("1.5", "1.2"), ("2.2", "2.1"), ("3.1", "2.1"),
                                             ("3.2", "2.1")])
def test_distributed_notebook_trains_on_two_processes(tmp_path, cifar_data_dir, notebook_run,
                                                      number, sibling):
    notebook_run(sibling)  # the single-process run it compares with
    result, notebook = run(tmp_path, number, DATA_DIR=str(cifar_data_dir), EPOCHS=2,
                           BATCH_SIZE=32, LEARNING_RATE=0.02)
    assert result["mode"] == "process" and result["workers"] == 2 and result["epochs"] == 2
    assert result["eval_accuracy"] > 0.3
    assert pictures(notebook) >= 2
    text = output_text(notebook)
    assert "throughput ratio" in text  # compared with its single-process sibling


def test_5_0_compares_every_recorded_run(tmp_path, notebook_run):
    notebook_run("1.2")  # at least one run to compare, whatever ran before
    recorded = records.load_runs()
    result, notebook = run(tmp_path, "5.0")
    assert result["runs"] == len(recorded) >= 1
    assert result["notebooks"] == sorted({r["notebook"] for r in recorded})
    assert result["modes"] == sorted({r["mode"] for r in recorded})
    assert result["runs_with_cost"] == 0  # no host runs on this machine
    text = output_text(notebook)
    assert all(r["job_name"] in text for r in recorded)  # every run is a row of the table
    assert pictures(notebook) == 1


@pytest.fixture
def no_docker(monkeypatch):
    """The kernel inherits a PATH without any `docker`: a machine without Docker, even where a
    Docker engine runs (make test starts one for the local-mode tests)."""
    without_docker = [d for d in os.environ["PATH"].split(os.pathsep)
                      if d and not os.path.exists(os.path.join(d, "docker"))]
    monkeypatch.setenv("PATH", os.pathsep.join(without_docker))


@pytest.fixture
def no_aws_credentials(monkeypatch):
    """Nothing boto3's credential chain could find, whatever this machine or an earlier test
    (moto_server's dummy keys) has set."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_ENDPOINT_URL", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.parametrize("mode, needs", [("local", "no `docker` command"),
                                         ("host", "needs AWS credentials")])
def test_unavailable_mode_fails_first_with_what_is_missing(tmp_path, cifar_data_dir, no_docker,
                                                           no_aws_credentials, mode, needs):
    path = next(p for p in NOTEBOOKS if p.name.startswith("1.2."))
    outcome = run_notebooks.execute(path, {"MODE": mode, "DATA_DIR": str(cifar_data_dir)},
                                    output_dir=tmp_path)
    assert not outcome["ok"]
    assert outcome["error"].startswith(f"ModeUnavailable: MODE='{mode}' needs")
    assert needs in outcome["error"]


def test_a_failing_cell_keeps_its_error_after_the_sdk_loaded_sagemaker_core(tmp_path):
    """Importing sagemaker-core installs rich's IPython traceback handler, after which papermill
    saw no error output and reported an empty CellExecutionError; `import workshop` stops it."""
    failing = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("MODE = 'x'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import workshop\nimport sagemaker_core.main.resources\n"
                                  "raise ValueError('the message a learner must see')")])
    path = tmp_path / "failing.ipynb"
    nbformat.write(failing, path)
    outcome = run_notebooks.execute(path, output_dir=tmp_path / "out")
    assert outcome["error"] == "ValueError: the message a learner must see"


def test_4_1_serves_1_2s_model_in_process_mode(tmp_path, cifar_data_dir, notebook_run):
    """Deploys the last 1.2 model on the TF Serving stand-in through the SDK's predictor."""
    notebook_run("1.2")  # a model to deploy, whatever ran before
    trained = records.load_result("1.2")
    result, notebook = run(tmp_path, "4.1", DATA_DIR=str(cifar_data_dir), BATCH_SIZE=100)
    # Same SavedModel, same 256 eval images: exactly the training job's metrics.json accuracy.
    assert result["accuracy"] == pytest.approx(trained["eval_accuracy"], abs=1e-9)
    assert result["transform_accuracy"] == result["accuracy"]
    assert result["mode"] == "process" and result["requests"] == 3  # 256 images, 100 a request
    assert 0 < result["p50_ms"] <= result["p95_ms"]
    assert result["images_per_sec"] > 0
    assert pictures(notebook) >= 2  # confusion matrix, worst mistakes
    text = output_text(notebook)
    assert "stopped the TF Serving stand-in" in text  # twice: endpoint and batch transform
    outputs = sorted((RUNS_DIR / "4.1-deploy" / "transform-out").iterdir())
    assert [p.name for p in outputs] == ["eval.jsonl.out"]
    assert len(outputs[0].read_text().splitlines()) == 3  # one reply per input line


def test_4_1_local_mode_fails_first_without_docker(tmp_path, cifar_data_dir, no_docker):
    """The preflight before the SDK's local-mode deploy."""
    path = next(p for p in NOTEBOOKS if p.name.startswith("4.1."))
    outcome = run_notebooks.execute(path, {"MODE": "local", "DATA_DIR": str(cifar_data_dir)},
                                    output_dir=tmp_path)
    assert not outcome["ok"]
    assert outcome["error"].startswith("ModeUnavailable: MODE='local' needs")
    assert "no `docker` command" in outcome["error"]


def test_a_notebook_stopped_mid_run_goes_on_and_resumes(tmp_path, cifar_data_dir):
    """2.1 with EPOCHS far beyond its MAX_RUN, stopped as StopTrainingJob stops a job at its
    first epoch line: the job ends Stopped with a model that is evaluated, and the notebook says
    how to continue; run again with RESUME_FROM and EPOCHS lowered to two more than were done
    (as the projection advises), it trains just those."""
    small = {"DATA_DIR": str(cifar_data_dir), "BATCH_SIZE": 16, "LEARNING_RATE": 0.02}
    # 6.4 million steps fit in 600 s on no machine, so the projection speaks; the stop is an
    # event (the first epoch line), not a deadline that start-up on a slow machine could miss.
    with stop_at_first_epoch_line():
        stopped, notebook = run(tmp_path / "stopped", "2.1", expect=("Stopped",),
                                EPOCHS=100_000, MAX_RUN=600, **small)
    assert stopped["status"] == "Stopped" and stopped["eval_accuracy"] is not None
    text = output_text(notebook)
    assert f"RESUME_FROM = {stopped['job_name']!r}" in text
    assert "projection:" in text  # said after the first epoch, not after the hour
    assert "stopped (Stopped)" in text
    done = stopped["epochs"]
    assert 1 <= done < 100_000
    resumed, notebook = run(tmp_path / "resumed", "2.1", RESUME_FROM=stopped["job_name"],
                            EPOCHS=done + 2, **small)
    assert resumed["status"] == "Completed" and resumed["epochs"] == done + 2
    assert resumed["eval_accuracy"] > 0.3
    text = output_text(notebook)
    assert f"resuming from checkpoint: epochs 1-{done} done" in text
    trained = [int(n) for n in re.findall(rf"epoch (\d+)/{done + 2} ", text)]
    assert trained == [done + 1, done + 2]  # each remaining epoch once


def paragraphs(path):
    """The markdown paragraphs of a notebook of 12 words or more, whitespace normalised."""
    found = set()
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "markdown":
            for block in re.split(r"\n\s*\n", cell.source):
                words = block.split()
                if len(words) >= 12:
                    found.add(" ".join(words))
    return found


def test_no_paragraph_is_taught_twice():
    """Each notebook says what is new in it and points back for the rest (1.2 teaches the
    Estimator, training and MAX_RUN once): no paragraph appears in two notebooks."""
    seen = {}
    for path in NOTEBOOKS:
        for paragraph in paragraphs(path):
            assert paragraph not in seen, (f"{path.name} repeats a paragraph of {seen[paragraph]}:"
                                           f" {paragraph[:120]}...")
            seen[paragraph] = path.name
