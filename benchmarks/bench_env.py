"""Link the benchmark environment `.venv-bench` to the project's `.venv`, so peers install next to the project, not over it.

    .venv/bin/python benchmarks/bench_env.py .venv-bench

Writes into the bench environment's site-packages a `.pth` file that adds the project venv's
site-packages after its own (so the project, torch and everything else installed there are shared,
and pip sees them as installed), and writes `<bench>/project-versions.txt`, the project venv's
exact versions, for pip's `-c`: a peer whose requirements would replace a shared package fails to
resolve instead of installing a second copy. Run with the project venv's python.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "domainfm-project-venv.pth"


def bench_site_packages(bench: Path) -> Path:
    """The bench venv's purelib folder, asked of its own python."""
    python = bench / "bin" / "python"
    if not python.is_file():
        raise SystemExit(f"{python}: not found; create the bench venv first (python -m venv {bench})")
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def main() -> None:
    """Write the .pth link and the version constraints."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path, help="the bench venv folder, e.g. .venv-bench")
    args = ap.parse_args()
    project_site = Path(sysconfig.get_paths()["purelib"]).resolve()
    target = bench_site_packages(args.bench)
    # "import" lines of a .pth run at start-up; addsitedir also runs the project venv's own .pth files (its editable install)
    (target / PTH_NAME).write_text(f"import site; site.addsitedir({str(project_site)!r})\n")
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    pins = [line for line in frozen if "==" in line and not line.startswith("-")]
    (args.bench / "project-versions.txt").write_text("\n".join(pins) + "\n")
    print(f"{target / PTH_NAME} -> {project_site}; {len(pins)} shared versions pinned in {args.bench / 'project-versions.txt'}")


if __name__ == "__main__":
    main()
