"""Every number in the notebooks' text is traced: the README's "Numbers in the notebooks" table
lists it with what measures or fixes it, unless it names a notebook or a registry version.

A new sentence with an untraced figure ("reaches 85% accuracy") fails here until the figure is
measured by a command in the repo and listed in the README, or removed.
"""

import re

import nbformat
import pytest

from workshop import PHASE0_DIR, run_notebooks
from workshop.entry_points import ENTRY_POINTS

README = PHASE0_DIR.parents[1] / "README.md"
README_KO = README.with_name("README.ko.md")
# 60,000  2.15.1  32x32  32/64/128  0..9 ; not inside words (CIFAR-10, py312, ml.p3.2xlarge, TF2)
# Korean writes units and particles right after a figure (2개, 85%를): Hangul ends a number.
NOT_HANGUL_WORD = r"[^\W\uac00-\ud7a3]"
NUMBER = re.compile(rf"(?<!{NOT_HANGUL_WORD}|[.#/-])\d[\d,]*(?:(?:\.\.|[./x])\d+)*"
                    rf"(?!{NOT_HANGUL_WORD}|[/-])")


def numbers_in(text):
    text = re.sub(r"```.*?```", " ", text, flags=re.S)  # code blocks: log samples, not claims
    text = re.sub(r"`[^`]*`", " ", text)  # inline code: names
    text = re.sub(r"^\s*\d+\.\s", " ", text, flags=re.M)  # numbered list markers
    return {found.group(0).rstrip(",") for found in NUMBER.finditer(text)}


def readme_traced():
    """{number: "what | measured or fixed by"} from the README's numbers table."""
    section = README.read_text().split("## Numbers in the notebooks", 1)[1].split("\n## ", 1)[0]
    traced = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("number", "---"):
            for number in numbers_in(cells[0].replace("`", "")):
                traced[number] = cells[2]
    return traced


def names():
    notebooks = {".".join(p.name.split(".")[:2]) for p in run_notebooks.notebooks()}
    versions = {e.framework_version for e in ENTRY_POINTS}
    pythons = {e.py_version[2] + "." + e.py_version[3:] for e in ENTRY_POINTS}
    return notebooks | versions | pythons


def test_the_pattern_finds_figures_and_skips_names():
    assert numbers_in("about 85% on 40,000 images, 32x32, 0..9, TF 2.15.1 and Dense(512).") == \
        {"85", "40,000", "32x32", "0..9", "2.15.1", "512"}
    assert numbers_in("CIFAR-10 on ml.p3.16xlarge, py312, TF2, keras#20585, `epochs=20`") == set()
    assert numbers_in("2개의 워커로 85%를, 40,000개 중 15 에포크에") == {"2", "85", "40,000", "15"}


def test_every_readme_trace_says_where_it_comes_from():
    traced = readme_traced()
    assert {"60,000", "2.15.1", "3600"} <= set(traced)
    assert all(source for source in traced.values())


@pytest.mark.parametrize("path", run_notebooks.notebooks() + run_notebooks.notebooks(language="ko"),
                         ids=lambda p: p.name)
def test_every_number_in_notebook_text_is_traced(path):
    text = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells
                     if cell.cell_type == "markdown")
    untraced = numbers_in(text) - set(readme_traced()) - names()
    assert not untraced, (f"{path.name}: {sorted(untraced)} in the text are traced nowhere: list "
                          f"each in README's 'Numbers in the notebooks' table with the command "
                          f"that measures it, or remove it")


def test_the_korean_readme_has_no_number_the_english_one_lacks():
    """README.ko.md translates parts of README.md: a figure in it comes from README.md."""
    added = numbers_in(README_KO.read_text()) - numbers_in(README.read_text()) - names()
    assert not added, (f"README.ko.md has {sorted(added)}, which README.md does not: measure and "
                       f"state it in README.md first, or remove it")
