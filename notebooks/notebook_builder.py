"""Shared by the build_*.py scripts: write a list of cells as a Python 3 notebook without outputs."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_notebook


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def write(cells, name: str) -> Path:
    """Write ``cells`` to notebooks/``name`` and return its path."""
    path = Path(__file__).resolve().parent / name
    nbformat.write(build(cells), path)
    print("wrote", path)
    return path
