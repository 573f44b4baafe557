"""Read the training notebooks' cells as a learner would copy them: the parameters cell, the
literal ``TensorFlow(...)`` cell, and executing the cells up to it."""

import ast

import nbformat
from helpers import notebook_path

from workshop import PHASE0_DIR


def code_cells(number):
    return [c.source for c in nbformat.read(notebook_path(number), as_version=4).cells
            if c.cell_type == "code"]


def estimator_cell_index(cells):
    (index,) = [i for i, source in enumerate(cells) if "TensorFlow(" in source]
    return index


def estimator_call(number):
    """The ``TensorFlow(...)`` call of a notebook: {keyword: ast node}."""
    cells = code_cells(number)
    tree = ast.parse(cells[estimator_cell_index(cells)])
    (call,) = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
               and getattr(node.func, "id", None) == "TensorFlow"]
    return {keyword.arg: keyword.value for keyword in call.keywords}


def run_up_to_estimator(number, **parameters):
    """Execute the notebook's code cells up to and including its Estimator cell, with
    ``parameters`` injected after the parameters cell as papermill does; the namespace.

    The caller must be in code/phase0 (the notebooks' folder), as Jupyter and papermill are.
    """
    assert PHASE0_DIR.samefile(".")
    cells = code_cells(number)
    namespace = {}
    for index, source in enumerate(cells[:estimator_cell_index(cells) + 1]):
        exec(compile(source, f"{number}[{index}]", "exec"), namespace)
        if index == 0:  # the parameters cell comes first
            namespace.update(parameters)
    return namespace
