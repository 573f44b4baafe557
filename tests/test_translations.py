"""The Korean notebooks are what `python -m workshop.translations build ko` makes of the English
ones and the translation files: none is stale, none misses a cell, none differs in code."""

import shutil

import nbformat
import pytest

from workshop import run_notebooks, translations

ENGLISH = run_notebooks.notebooks()


def test_every_notebook_has_a_korean_twin():
    korean = run_notebooks.notebooks(language="ko")
    assert [p.name for p in korean] == [translations.translated_path(p, "ko").name
                                        for p in ENGLISH]


@pytest.mark.parametrize("english", ENGLISH, ids=lambda p: p.name)
def test_korean_notebook_is_what_the_command_generates(english):
    assert translations.problems(english, "ko") == []
    korean = translations.translated_path(english, "ko")
    assert korean.read_text(encoding="utf-8") == translations.translate(english, "ko"), (
        f"{korean.name} differs from what its English notebook and "
        f"translations/ko/{english.stem}.md make: run `python -m workshop.translations build ko`")


@pytest.mark.parametrize("english", ENGLISH, ids=lambda p: p.name)
def test_korean_code_cells_are_the_english_ones(english):
    """What papermill runs of a Korean notebook is the English one's: the same kernel and
    notebook metadata, the same code cells with the same tags, in the same order (markdown
    never runs). So the suite runs the English notebooks, not their twins as well."""
    notebook = nbformat.read(english, as_version=4)
    twin = nbformat.read(translations.translated_path(english, "ko"), as_version=4)
    assert (twin.metadata, twin.nbformat, twin.nbformat_minor) == (
        notebook.metadata, notebook.nbformat, notebook.nbformat_minor)
    cells, twins = notebook.cells, twin.cells
    assert [(c.id, c.cell_type) for c in twins] == [(c.id, c.cell_type) for c in cells]
    for cell, twin in zip(cells, twins):
        if cell.cell_type == "code":
            assert (twin.source, twin.metadata) == (cell.source, cell.metadata)
        else:
            assert translations.SCRIPTS["ko"].search(twin.source), f"cell {cell.id} is not Korean"


@pytest.fixture
def copy_of_1_2(tmp_path):
    """1.2 and its Korean translation file, copied where a test may change them."""
    english = next(p for p in ENGLISH if p.name.startswith("1.2."))
    copy = tmp_path / english.name
    shutil.copy(english, copy)
    (tmp_path / "ko").mkdir()
    shutil.copy(translations.translation_file(english, "ko"), tmp_path / "ko")
    return copy, tmp_path


def edit_cell(path, cell_type, index, change):
    """Apply ``change`` to the source of the ``index``-th cell of that type; returns its id."""
    notebook = nbformat.read(path, as_version=4)
    cell = [c for c in notebook.cells if c.cell_type == cell_type][index]
    cell.source = change(cell.source)
    nbformat.write(notebook, path)
    return cell.id


def test_a_changed_english_sentence_makes_its_translation_stale(copy_of_1_2):
    english, folder = copy_of_1_2
    assert translations.problems(english, "ko", folder) == []
    cell_id = edit_cell(english, "markdown", 1, lambda s: s + "\n\nA sentence added in English.")
    (problem,) = translations.problems(english, "ko", folder)
    assert f"cell {cell_id}" in problem and "stale" in problem
    with pytest.raises(ValueError, match=f"cell {cell_id}"):
        translations.translate(english, "ko", folder)
    # `todo` puts the new English beside the old Korean and takes the new hash; the cell is
    # then "still to do" until someone translates it and deletes the to-do line.
    assert translations.add_todos(english, "ko", folder) == 1
    (problem,) = translations.problems(english, "ko", folder)
    assert f"cell {cell_id}" in problem and "still to do" in problem
    _, text = translations.read_blocks(folder / "ko" / f"{english.stem}.md")[cell_id]
    assert "A sentence added in English." in text and translations.SCRIPTS["ko"].search(text)


def test_a_new_english_cell_without_translation_is_named(copy_of_1_2):
    english, folder = copy_of_1_2
    notebook = nbformat.read(english, as_version=4)
    notebook.cells.insert(1, nbformat.v4.new_markdown_cell("A new paragraph.", id="new-cell"))
    nbformat.write(notebook, english)
    (problem,) = translations.problems(english, "ko", folder)
    assert "cell new-cell" in problem and "no translation" in problem


def test_a_block_left_in_english_is_not_done(copy_of_1_2):
    english, folder = copy_of_1_2
    path = folder / "ko" / f"{english.stem}.md"
    blocks = translations.read_blocks(path)
    cell_id, (hash_, _) = next(iter(blocks.items()))
    path.write_text(path.read_text().replace(blocks[cell_id][1], "# 1.2 Keras in script mode"))
    (problem,) = translations.problems(english, "ko", folder)
    assert f"cell {cell_id}" in problem and "no ko text" in problem


def test_a_changed_code_cell_needs_no_korean_edit(copy_of_1_2):
    english, folder = copy_of_1_2
    edit_cell(english, "code", 0, lambda s: s + "\n# a comment added in English")
    assert translations.problems(english, "ko", folder) == []
    korean = nbformat.reads(translations.translate(english, "ko", folder), as_version=4)
    assert "# a comment added in English" in [c for c in korean.cells
                                              if c.cell_type == "code"][0].source
