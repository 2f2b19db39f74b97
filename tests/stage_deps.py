"""Which project files each DVC stage loads, against the deps dvc.yaml declares for it.

`IMPORT_LOGGER` is a sitecustomize.py: with DOMAINFM_IMPORT_LOG set, every Python process appends
its argv and the files of its loaded modules to that log at exit. `undeclared` then closes each
`domainfm` command's loaded project files over every import statement they contain (function-level
ones too, since a worker process or a branch not taken in the demo may run them) and returns the
files no declared dep covers.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

IMPORT_LOGGER = '''
import atexit, json, os, sys
_LOG = os.environ.get("DOMAINFM_IMPORT_LOG")
if _LOG:
    def _dump():
        files = sorted({f for m in list(sys.modules.values()) if (f := getattr(m, "__file__", None))})
        with open(_LOG, "a") as out:
            out.write(json.dumps({"argv": sys.argv, "files": files}) + "\\n")
    atexit.register(_dump)
'''
PACKAGES = ("pipelines", "domains")


def module_file(root: Path, module: str) -> Path | None:
    """The project file of a dotted module name, if it is one."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, root: Path) -> set[str]:
    """Dotted modules an import statement anywhere in `path` may load (parents included)."""
    rel = path.relative_to(root).with_suffix("")
    package = rel.parts[:-1] if rel.name != "__init__" else rel.parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = list(package[: len(package) - node.level + 1]) if node.level > 1 else list(package)
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    with_parents = set()
    for name in found:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return with_parents


def closure(files: set[Path], root: Path) -> set[Path]:
    """Every project file reachable from `files` through import statements."""
    todo, seen = list(files), set(files)
    while todo:
        for module in _imports(todo.pop(), root):
            target = module_file(root, module)
            if target is not None and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def covered(path: Path, deps: list[Path]) -> bool:
    """Whether a declared dep (a file, or a folder above it) covers `path`."""
    return any(path == d or d in path.parents for d in deps)


def read_log(log: Path, root: Path) -> dict[str, set[Path]]:
    """{command line after `domainfm`: loaded project files} for every `domainfm` process logged."""
    commands: dict[str, set[Path]] = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if not entry["argv"] or Path(entry["argv"][0]).name != "domainfm":
            continue
        files = {Path(f) for f in entry["files"]}
        mine = {f for f in files if root in f.parents and f.relative_to(root).parts[0] in PACKAGES}
        commands.setdefault(" ".join(entry["argv"][1:]), set()).update(mine)
    return commands


def undeclared(root: Path, log: Path) -> dict[str, list[str]]:
    """{stage: project files it may import that its deps do not cover}, from dvc.yaml and the log."""
    from dvc.repo import Repo

    loaded = read_log(log, root)
    missing: dict[str, list[str]] = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            cmd = " ".join(str(stage.cmd).split())
            if not cmd.startswith("domainfm "):
                continue
            files = loaded.get(cmd[len("domainfm "):])
            if files is None:
                missing[stage.addressing] = ["<no import log for this stage's command>"]
                continue
            deps = [Path(d.fs_path) for d in stage.deps]
            gaps = sorted(str(f.relative_to(root)) for f in closure(files, root) if not covered(f, deps))
            if gaps:
                missing[stage.addressing] = gaps
    return missing
