"""`domainfm notebooks`: run the analysts' notebooks top to bottom and keep them as .ipynb and .html.

Each notebook in `notebooks/` starts with one cell tagged `parameters` (paths to an export and to
input files, class names, a query): that cell is the only one a user changes to run it on their
own files. This command runs a notebook as it is, or with values given here injected in a cell
right after it (as papermill does), in a fresh kernel, so no hidden state survives between runs.
The executed notebook and an HTML rendering (pictures included) go to OUT.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from pipelines.errors import InputError
from pipelines.io.atomic import atomic_write_text

PARAMETERS_TAG = "parameters"


def inject(notebook: Any, values: dict[str, Any]) -> Any:
    """The notebook with a cell setting `values` inserted after its `parameters` cell (an error if it has none)."""
    import nbformat

    cells = notebook.cells
    index = next((i for i, c in enumerate(cells) if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])), None)
    if index is None:
        raise InputError("the notebook has no cell tagged 'parameters' to override")
    source = "# Parameters injected by `domainfm notebooks`\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    cells.insert(index + 1, cell)
    return notebook


def run_notebook(path: Path, out_dir: Path, values: Optional[dict[str, Any]] = None, timeout_s: int = 1800,
                 cwd: Optional[Path] = None) -> tuple[Path, Path]:
    """Execute one notebook (with `values` injected) and write OUT/<name>.ipynb and OUT/<name>.html.

    Raises InputError naming the notebook and the failing cell's error when a cell fails; nothing
    is written then.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    if values:
        inject(notebook, values)
    client = NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd or Path.cwd())}})
    try:
        client.execute()
    except CellExecutionError as exc:
        raise InputError(f"{path}: a cell failed: {str(exc).strip().splitlines()[-1]}") from None
    html, _ = HTMLExporter().from_notebook_node(notebook)
    out_dir = Path(out_dir)
    ipynb, page = out_dir / f"{path.stem}.ipynb", out_dir / f"{path.stem}.html"
    atomic_write_text(ipynb, nbformat.writes(notebook))
    atomic_write_text(page, html)
    return ipynb, page


def notebooks_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the executed notebooks (.ipynb and .html).")],
    notebooks: Annotated[Optional[list[Path]], typer.Argument(help="Notebooks to run (default: every notebooks/*.ipynb).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="NAME=JSON value injected after the parameters cell (repeatable).")] = None,
) -> None:
    """Run notebooks top to bottom in fresh kernels and keep them as .ipynb and .html."""
    paths = list(notebooks or sorted(Path("notebooks").glob("*.ipynb")))
    if not paths:
        raise InputError("no notebooks given and none found in notebooks/")
    values: dict[str, Any] = {}
    for item in set_ or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--set {item!r}: expected NAME=VALUE")
        try:
            values[name] = json.loads(value)
        except json.JSONDecodeError:
            values[name] = value
    for path in paths:
        ipynb, page = run_notebook(path, out, values)
        typer.echo(f"{path} -> {ipynb}, {page}")
