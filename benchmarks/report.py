"""Render reports/benchmarks.md from the benchmarks' JSON files (the contract below), one table for all.

    python benchmarks/report.py [--json-dir reports/benchmarks] [--out reports/benchmarks.md]

Contract (every benchmark's `--json PATH`):
{"benchmark": stem, "command": the command line, "machine": "cpu model, cores, torch version",
 "rows": [{"figure", "unit", "ours", "peer", "peer_value", "ratio" (> 1: ours is better; ours/peer for a rate, peer/ours for a cost),
           "bar" (the issue's bar or null), "repeats", "notes"}]}
A file that does not follow it is listed under "Not rendered" with the reason, never silently dropped.
"""
from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROW_KEYS = ("figure", "unit", "ours", "peer", "peer_value", "ratio", "bar", "repeats", "notes")


def load(path: Path) -> dict[str, Any]:
    """One benchmark's JSON, checked against the contract; ValueError naming the file and what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: not a JSON object")
    missing = [k for k in ("benchmark", "command", "machine", "rows") if k not in data]
    if missing:
        raise ValueError(f"{path.name}: missing {', '.join(missing)}")
    if not isinstance(data["rows"], list) or not data["rows"]:
        raise ValueError(f"{path.name}: rows must be a non-empty list")
    for i, row in enumerate(data["rows"]):
        gaps = [k for k in ROW_KEYS if k not in row]
        if gaps:
            raise ValueError(f"{path.name}: row {i} lacks {', '.join(gaps)}")
    return data


def number(value: Any) -> str:
    """3 significant digits, thousands kept whole; '-' for none."""
    if value is None:
        return "-"
    value = float(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def met(row: dict[str, Any]) -> str:
    """'yes' / 'no' against the bar, '-' without a bar or a ratio."""
    if row["bar"] is None or row["ratio"] is None:
        return "-"
    return "yes" if float(row["ratio"]) >= float(row["bar"]) else "**no**"


def cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(files: list[Path]) -> str:
    """The markdown report of these JSON files."""
    loaded, broken = [], []
    for path in files:
        try:
            loaded.append((path, load(path)))
        except ValueError as exc:
            broken.append(str(exc))
    lines = ["# Benchmarks", "",
             f"Rendered {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by `benchmarks/report.py` from "
             f"{len(loaded)} JSON file{'s' if len(loaded) != 1 else ''} in reports/benchmarks/ (`make bench` reruns them all). "
             "Ratio above 1: ours is better (ours / peer for a rate, peer / ours for a cost such as memory). "
             "Every figure is a median of interleaved repeats run in one command; "
             "peers run from `.venv-bench` (benchmarks/requirements-peers*.txt).", "",
             "| Figure | Ours | Peer | Peer value | Ratio | Bar | Met? | Unit | Repeats | Command |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for _, data in loaded:
        for row in data["rows"]:
            notes.append(f"{row['figure']}: {row['notes']}")
            lines.append(" | ".join(["", cell(row["figure"]) + f" [{len(notes)}]", number(row["ours"]), cell(row["peer"]),
                                     number(row["peer_value"]), number(row["ratio"]), number(row["bar"]), met(row),
                                     cell(row["unit"]), str(row["repeats"]), f"`{cell(data['command'])}`", ""]).strip())
    lines += ["", "## Notes", ""] + [f"{i}. {cell(n)}" for i, n in enumerate(notes, start=1)]
    machines = sorted({data["machine"] for _, data in loaded})
    lines += ["", "## Machine", ""] + [f"- {m}: {', '.join(d['benchmark'] for _, d in loaded if d['machine'] == m)}" for m in machines]
    if broken:
        lines += ["", "## Not rendered", ""] + [f"- {b}" for b in broken]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Render and write the report atomically."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json-dir", type=Path, default=Path("reports/benchmarks"))
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks.md"))
    args = ap.parse_args()
    files = sorted(args.json_dir.glob("*.json")) if args.json_dir.is_dir() else []
    text = render(files)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, args.out)
    print(f"{args.out}: {len(files)} benchmark file(s)")


if __name__ == "__main__":
    main()
