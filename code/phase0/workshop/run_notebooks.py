"""Run the workshop's notebooks headless with papermill and print one line per notebook.

  python -m workshop.run_notebooks [--epochs 3] [--only 1.1 1.2] [--language ko] [-p NAME VALUE ...]

Executed copies go to runs/notebooks/ (git-ignored). Each notebook ends by printing
``RESULT {json}`` with a ``status`` ("Completed", or a training job's "Stopped" at max_run); that
line is the notebook's headline in the summary. A notebook that raises, prints no RESULT line,
reports another status than expected, or runs a cell longer than ``--timeout`` is FAILED.
"""

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from . import PHASE0_DIR, RUNS_DIR

KERNEL = "cifar-workshop"
# Notebooks written for SageMaker SDK v3 (6.x) run in the v3 kernel that `make setup` installs
# into .venv-sdk3; its kernel folder goes first on JUPYTER_PATH, so this checkout's is used.
KERNEL_SDK3 = "cifar-workshop-sdk3"
SDK3_KERNELS = PHASE0_DIR.parent.parent / ".venv-sdk3" / "share" / "jupyter"
TRAINING_PARAMETERS = ("EPOCHS",)
TIMEOUT = 1800  # seconds any one cell may run: the defaults finish far sooner (README)


def kernel_for(path, kernel=KERNEL):
    """The v3 kernel for 6.x notebooks, ``kernel`` for the others (SDK v2)."""
    return KERNEL_SDK3 if path.name.startswith("6.") else kernel


# Translations of the notebooks sit beside them as <name>.<language>.ipynb (workshop.translations).
LANGUAGES = ("ko",)
TRANSLATED = re.compile(rf"\.({'|'.join(LANGUAGES)})\.ipynb$")


def language_of(path):
    """"ko" for a Korean notebook, None for an English one."""
    found = TRANSLATED.search(path.name)
    return found.group(1) if found else None


def notebooks(only=(), language=None):
    """The numbered notebooks of code/phase0 in workshop order (0.0, 1.0, 1.1, 1.2, 1.5, 2.1, …):
    the English ones, or their translations into ``language`` ("ko")."""
    found = [p for p in PHASE0_DIR.glob("*.ipynb") if re.match(r"\d+\.\d+", p.name)
             and language_of(p) == language]
    found.sort(key=lambda p: tuple(int(n) for n in p.name.split(".")[:2]))
    return [p for p in found if not only or any(p.name.startswith(o + ".") for o in only)]


def parameter_names(path):
    """Names assigned in the notebook's `parameters` cell (papermill ignores unknown ones)."""
    import nbformat

    for cell in nbformat.read(path, as_version=4).cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*=", cell.source, re.M))
    return set()


def result_line(notebook):
    """The parsed ``RESULT {json}`` a notebook printed, or None."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                if line.startswith("RESULT "):
                    return json.loads(line[len("RESULT "):])
    return None


def execute(path, parameters=None, output_dir=None, kernel=KERNEL, timeout=TIMEOUT,
            expect=("Completed",)):
    """Execute one notebook (6.x in the v3 kernel); returns {"notebook", "ok", "seconds",
    "result", "error", "output"}. ``ok`` needs a RESULT line whose status is in ``expect``."""
    import papermill

    output_dir = Path(output_dir or RUNS_DIR / "notebooks")
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / path.name
    known = parameter_names(path)
    parameters = {k: v for k, v in (parameters or {}).items() if k in known}
    start, error, executed = time.time(), None, None
    kernel = kernel_for(path, kernel)
    if kernel == KERNEL_SDK3:
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            [str(SDK3_KERNELS)] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep)
                                   if p and p != str(SDK3_KERNELS)])
    try:
        executed = papermill.execute_notebook(
            str(path), str(output), parameters=parameters, kernel_name=kernel,
            cwd=str(PHASE0_DIR), progress_bar=False, execution_timeout=timeout)
    except papermill.PapermillExecutionError as err:
        error = f"{err.ename}: {err.evalue}"
    except TimeoutError as err:  # nbclient's CellTimeoutError
        error = f"{type(err).__name__}: a cell ran longer than {timeout} s ({err})"
    result = result_line(executed) if executed else None
    if error is None and result is None:
        error = "no RESULT line: the notebook did not reach its last cell's report"
    elif error is None and result.get("status") not in expect:
        error = (f"status {result.get('status')!r} in its RESULT line, "
                 f"expected {' or '.join(expect)}")
    return {"notebook": path.name, "ok": error is None, "seconds": round(time.time() - start, 1),
            "result": result, "error": error, "output": str(output)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="EPOCHS for every training notebook")
    parser.add_argument("--only", nargs="*", default=(), help="notebook numbers, e.g. 1.0 1.1")
    parser.add_argument("--language", choices=LANGUAGES, help="run the translations instead")
    parser.add_argument("--kernel", default=KERNEL)
    parser.add_argument("--timeout", type=int, default=TIMEOUT, help="seconds a cell may run")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="extra parameter (value parsed as JSON when it can be)")
    args = parser.parse_args(argv)
    parameters = {"INSTALL": False}
    if args.epochs:
        parameters["EPOCHS"] = args.epochs
    for name, value in args.p:
        try:
            parameters[name] = json.loads(value)
        except json.JSONDecodeError:
            parameters[name] = value
    failed = 0
    for path in notebooks(args.only, args.language):
        if not args.only and kernel_for(path) == KERNEL_SDK3:  # SDK v3 needs Docker or AWS
            print(f"skipped {path.name}: SageMaker SDK v3 has no process mode; run it with "
                  f"--only {path.name[:3]} -p MODE local (Docker) or -p MODE host", flush=True)
            continue
        outcome = execute(path, parameters, kernel=args.kernel, timeout=args.timeout)
        failed += not outcome["ok"]
        status = "passed" if outcome["ok"] else "FAILED"
        headline = json.dumps(outcome["result"]) if outcome["ok"] else outcome["error"]
        print(f"{status:6}  {outcome['seconds']:7.1f}s  {path.name:45}  {headline}", flush=True)
    print(f"executed notebooks: {RUNS_DIR / 'notebooks'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
