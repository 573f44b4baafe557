"""workshop.run_notebooks cannot pass a broken notebook: one that prints no RESULT line, reports
another status than expected, or hangs in a cell, is FAILED with the reason."""

import nbformat
import pytest

from workshop import run_notebooks


def notebook(tmp_path, *cells):
    book = nbformat.v4.new_notebook(metadata={
        "kernelspec": {"name": "cifar-workshop", "language": "python", "display_name": "Python 3"},
        "language_info": {"name": "python"}})
    book.cells = [nbformat.v4.new_code_cell("EPOCHS = 1", metadata={"tags": ["parameters"]}),
                  *(nbformat.v4.new_code_cell(source) for source in cells)]
    path = tmp_path / "9.9.Probe.ipynb"
    nbformat.write(book, path)
    return path


def run(path, **kwargs):
    return run_notebooks.execute(path, {"EPOCHS": 2}, output_dir=path.parent / "out", **kwargs)


def test_a_notebook_with_its_result_line_passes(tmp_path):
    outcome = run(notebook(tmp_path, 'print(\'RESULT {"status": "Completed", "epochs": %d}\' '
                                     '% EPOCHS)'))
    assert outcome["ok"] and outcome["result"] == {"status": "Completed", "epochs": 2}


def test_a_notebook_without_a_result_line_fails(tmp_path):
    outcome = run(notebook(tmp_path, "print('trained, but no headline')"))
    assert not outcome["ok"] and "no RESULT line" in outcome["error"]


@pytest.mark.parametrize("expect, ok", [(("Completed",), False), (("Stopped",), True)])
def test_the_status_must_be_the_expected_one(tmp_path, expect, ok):
    outcome = run(notebook(tmp_path, 'print(\'RESULT {"status": "Stopped"}\')'), expect=expect)
    assert outcome["ok"] is ok
    if not ok:
        assert "status 'Stopped'" in outcome["error"] and "expected Completed" in outcome["error"]


def test_a_cell_that_runs_too_long_fails(tmp_path):
    outcome = run(notebook(tmp_path, "import time\ntime.sleep(60)",
                           'print(\'RESULT {"status": "Completed"}\')'), timeout=3)
    assert not outcome["ok"] and "longer than 3 s" in outcome["error"]
    assert outcome["seconds"] < 45
