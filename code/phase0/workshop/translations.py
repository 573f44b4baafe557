"""The notebooks in other languages, generated from the English ones, which stay the source.

  python -m workshop.translations check [ko]   what is missing, stale or left to do; exit 1 if any
  python -m workshop.translations todo [ko]    add a to-do block for each missing or stale cell
  python -m workshop.translations build [ko]   write the translated notebooks (none while any
                                               problem is left)

A translated notebook is the English one with each markdown cell's text replaced; code cells,
metadata and order stay byte for byte, so it runs like the English one from the same folder
(``1.2.Train_Keras_Local_Script_Mode.ko.ipynb`` beside ``1.2.Train_Keras_Local_Script_Mode.ipynb``).
The text comes from ``translations/<language>/<notebook>.md``: one block per markdown cell,
under a header naming the cell's id and a hash of the English text it translates::

    <!-- cell e0b6bf82 en:3f9c0a1b2d4e -->
    # 1.2 SageMaker 스크립트 모드의 Keras

Editing an English markdown cell changes its hash, so its translation is reported stale until
someone updates the text and the header (``todo`` writes the new English beside the old text).
Editing a code cell needs nothing: ``build`` copies it.
"""

import argparse
import hashlib
import re
import sys
from pathlib import Path

import nbformat

from . import PHASE0_DIR
from .files import write_atomic
from .run_notebooks import LANGUAGES
from .run_notebooks import notebooks as english_notebooks

TRANSLATIONS_DIR = PHASE0_DIR / "translations"
HEADER = re.compile(r"^<!-- cell (?P<id>[\w-]+) en:(?P<hash>[0-9a-f]{12}) -->$", re.M)
TODO = "<!-- TODO: translate the English below, then delete this line and the English -->"
# A translation must contain the language's own script (a block left in English is not done).
SCRIPTS = {"ko": re.compile(r"[\uac00-\ud7a3]")}


def english_hash(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def translated_path(english, language):
    return english.with_name(f"{english.stem}.{language}.ipynb")


def translation_file(english, language, folder=None):
    return Path(folder or TRANSLATIONS_DIR) / language / f"{english.stem}.md"


def read_blocks(path):
    """{cell id: (English hash, text)} of a translation file, in file order; a missing file is
    empty. Raises ValueError naming the id when a cell has two blocks."""
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    headers = list(HEADER.finditer(text))
    blocks = {}
    for header, following in zip(headers, headers[1:] + [None]):
        body = text[header.end():following.start() if following else len(text)].strip("\n")
        if header["id"] in blocks:
            raise ValueError(f"{path}: cell {header['id']} has two blocks; keep one")
        blocks[header["id"]] = (header["hash"], body)
    return blocks


def problems(english, language, folder=None):
    """What stops ``english``'s translation from being built: a list of strings, each naming the
    notebook, the cell and what to do."""
    path = translation_file(english, language, folder)
    blocks = read_blocks(path)
    cells = nbformat.read(english, as_version=4).cells
    markdown = {c.id: c.source for c in cells if c.cell_type == "markdown"}
    found = []
    for cell_id, source in markdown.items():
        where = f"{path.name}: cell {cell_id} ({_first_line(source)})"
        if cell_id not in blocks:
            found.append(f"{where}: no translation (`todo` adds a block to fill in)")
            continue
        hash_, text = blocks[cell_id]
        if hash_ != english_hash(source):
            found.append(f"{where}: stale, the English changed since it was translated "
                         f"(`todo` puts the new English beside it)")
        elif TODO in text:
            found.append(f"{where}: still to do (translate it, delete the TODO line and the "
                         f"English)")
        elif not SCRIPTS[language].search(text):
            found.append(f"{where}: has no {language} text")
    for cell_id in blocks.keys() - markdown.keys():
        found.append(f"{path.name}: cell {cell_id} is not a markdown cell of {english.name} "
                     f"(any more): delete its block")
    return found


def translate(english, language, folder=None):
    """The translated notebook's text; raises ValueError listing the problems if any."""
    found = problems(english, language, folder)
    if found:
        raise ValueError("\n".join(found))
    blocks = read_blocks(translation_file(english, language, folder))
    notebook = nbformat.read(english, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = blocks[cell.id][1]
    return nbformat.writes(notebook) + "\n"


def add_todos(english, language, folder=None):
    """Rewrite the translation file in the notebook's cell order: blocks that are fine stay as
    they are; a missing cell gets a to-do block with the English; a stale one gets the new hash,
    a to-do line and the new English above its old translation. Returns how many it added."""
    path = translation_file(english, language, folder)
    blocks = read_blocks(path)
    out, added = [], 0
    for cell in nbformat.read(english, as_version=4).cells:
        if cell.cell_type != "markdown":
            continue
        hash_, text = blocks.get(cell.id, (None, None))
        new_hash = english_hash(cell.source)
        if hash_ != new_hash and TODO not in (text or ""):
            text = "\n\n".join(part for part in (TODO, cell.source, text) if part)
            added += 1
        out.append(f"<!-- cell {cell.id} en:{new_hash} -->\n{text}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "\n".join(out))
    return added


def build(language, folder=None):
    """Write every translated notebook (atomically); raises ValueError, writing none, if any
    translation has a problem. Returns the paths written."""
    texts = {}
    found = []
    for english in english_notebooks():
        try:
            texts[translated_path(english, language)] = translate(english, language, folder)
        except ValueError as err:
            found.append(str(err))
    if found:
        raise ValueError("\n".join(found))
    for path, text in texts.items():
        write_atomic(path, text)
    return list(texts)


def _first_line(source):
    line = source.strip().splitlines()[0] if source.strip() else ""
    return line[:60] + ("..." if len(line) > 60 else "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("check", "todo", "build"))
    parser.add_argument("language", nargs="?", default="ko", choices=LANGUAGES)
    args = parser.parse_args(argv)
    if args.command == "todo":
        for english in english_notebooks():
            added = add_todos(english, args.language)
            if added:
                print(f"{translation_file(english, args.language)}: {added} to do")
        return 0
    if args.command == "build":
        try:
            written = build(args.language)
        except ValueError as err:
            print(err, file=sys.stderr)
            return 1
        print(f"wrote {len(written)} notebooks ({args.language})")
        return 0
    found = [p for english in english_notebooks() for p in problems(english, args.language)]
    for problem in found:
        print(problem)
    print(f"{len(found)} problems ({args.language})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
