"""workshop/entry_points.py is the one list of entry points; the notebooks keep their literal
values (they are the lesson) and the README its table, and both must agree with it."""

import ast
import re

import pytest
from notebook_cells import code_cells, estimator_call

from workshop import PHASE0_DIR, SRC_DIR, jobs, notebook, run_notebooks
from workshop.entry_points import BY_NOTEBOOK, ENTRY_POINTS, entry_point

README = PHASE0_DIR.parents[1] / "README.md"
IDS = [entry.notebook for entry in ENTRY_POINTS]


def literal(node):
    return ast.literal_eval(node)


def number_of(path):
    return ".".join(path.name.split(".")[:2])


def test_every_notebook_with_an_estimator_is_registered():
    numbers = [number_of(path) for path in run_notebooks.notebooks()]
    with_estimator = {number for number in numbers
                      if any("TensorFlow(" in source for source in code_cells(number))}
    assert with_estimator == set(BY_NOTEBOOK)


def test_every_script_is_registered():
    scripts = {path.name for path in SRC_DIR.glob("train_*.py")}
    assert scripts == {entry.script for entry in ENTRY_POINTS}


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=IDS)
def test_notebook_literals_match_the_registry(entry):
    call = estimator_call(entry.notebook)
    assert literal(call["entry_point"]) == entry.script
    assert literal(call["source_dir"]) == "src"
    assert literal(call["framework_version"]) == entry.framework_version
    assert literal(call["py_version"]) == entry.py_version
    assert literal(call["base_job_name"]) == entry.base_job_name
    assert literal(call["tags"].args[0]) == entry.notebook  # audit.tags_for("<notebook>")
    (switch,) = [s for s in code_cells(entry.notebook) if s.startswith("# What differs between")]
    assert f'"{entry.base_job_name}"' in switch  # its checkpoint location is named after the job
    if entry.distributed:
        assert [literal(key) for key in call["distribution"].keys] == [entry.distribution]
    else:
        assert "distribution" not in call


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=IDS)
def test_notebook_metric_definitions_are_the_workshops(entry):
    (cell,) = [s for s in code_cells(entry.notebook) if "metric_definitions = [" in s]
    namespace = {}
    exec(cell, namespace)
    assert namespace["metric_definitions"] == jobs.METRIC_DEFINITIONS


@pytest.mark.parametrize("entry", [e for e in ENTRY_POINTS if e.distributed],
                         ids=lambda e: e.notebook)
def test_distributed_notebook_diffs_and_compares_with_its_sibling(entry):
    sources = "\n".join(code_cells(entry.notebook))
    assert f'notebook.print_diff("{entry.script}")' in sources
    sibling = entry_point(entry.sibling)
    assert f'records.load_result("{sibling.notebook}")' in sources
    diff = notebook.script_diff(entry.script)
    assert diff.startswith(f"--- src/{entry.diff_base}\n+++ src/{entry.script}\n")
    assert entry.marker in diff


def test_single_process_scripts_have_no_diff():
    with pytest.raises(ValueError, match="single-process script: it has no base"):
        notebook.script_diff("train_keras.py")


def test_unknown_entry_point_names_the_known_ones():
    with pytest.raises(KeyError, match="train_keras.py"):
        entry_point("train_pytorch.py")


def readme_notebook_rows():
    """{"1.2": "| 1.2 Train_Keras... | ... | 2.19 / py312 |", ...} from the README's table."""
    rows = {}
    for line in README.read_text().splitlines():
        found = re.match(r"\| (\d\.\d) ", line)
        if found:
            rows[found.group(1)] = line
    return rows


def test_readme_table_lists_every_notebook():
    rows = readme_notebook_rows()
    for path in run_notebooks.notebooks():
        number = number_of(path)
        assert number in rows, f"README's notebook table has no row for {path.name}"


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=IDS)
def test_readme_table_matches_the_registry(entry):
    row = readme_notebook_rows()[entry.notebook]
    assert f"`{entry.script}`" in row
    assert row.rstrip(" |").endswith(f"{entry.framework_version} / {entry.py_version}")
    if entry.distributed:
        assert entry.distribution in row


# ------------------------------------------------------------- recipe defaults: argparse


def parameters_of(number):
    namespace = {}
    exec(code_cells(number)[0], namespace)  # the parameters cell comes first
    return namespace


def test_recipe_defaults_are_what_an_entry_point_parses():
    from cifar import sagemaker_args

    parsed = sagemaker_args.parse_args("test", ["--train", "t", "--validation", "v", "--eval",
                                                "e", "--sm-model-dir", "m",
                                                "--output-data-dir", "o"])
    assert sagemaker_args.RECIPE_DEFAULTS == {
        key: getattr(parsed, key) for key in sagemaker_args.RECIPE_DEFAULTS}
    assert {"epochs", "batch_size", "learning_rate", "warmup_epochs", "momentum",
            "weight_decay", "label_smoothing", "precision", "seed"} == set(
                sagemaker_args.RECIPE_DEFAULTS)


@pytest.mark.parametrize("number", ["1.1", *IDS])
def test_notebook_parameters_default_to_the_recipe(number):
    """Batch size and learning rate are the recipe's; EPOCHS (None) becomes the recipe's epochs in
    host mode, and fewer on this machine (what finishes in minutes on a 2-core CPU)."""
    from cifar.sagemaker_args import RECIPE_DEFAULTS

    parameters = parameters_of(number)
    assert parameters["BATCH_SIZE"] == RECIPE_DEFAULTS["batch_size"]
    assert parameters["LEARNING_RATE"] == RECIPE_DEFAULTS["learning_rate"]
    if number != "1.1":  # 1.1 trains in the kernel, never on SageMaker
        assert parameters["EPOCHS"] is None
        start = code_cells(number)[1]
        found = re.search(r'EPOCHS = (\d+) if MODE == "host" else (\d+)', start)
        assert found and int(found[1]) == RECIPE_DEFAULTS["epochs"] > int(found[2]), start
