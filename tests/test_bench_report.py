"""benchmarks/report.py renders the contract's JSON files into one table; run_all.py finds the benchmarks that follow it."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _row(**kw) -> dict:
    row = {"figure": "tiles read", "unit": "tiles/s", "ours": 300.0, "peer": "torchgeo 0.8.1 RasterDataset", "peer_value": 150.0,
           "ratio": 2.0, "bar": 1.5, "repeats": 5, "notes": "max abs difference 1"}
    row.update(kw)
    return row


def test_report_renders_rows_bars_and_refuses_broken_files(tmp_path: Path) -> None:
    report = _module("report")
    rows = [_row(), _row(figure="slides", ratio=0.5, bar=1.0, peer="histolab 0.7.0"), _row(figure="before -> after", bar=None, ratio=1.3)]
    payload = {"benchmark": "a", "command": "python benchmarks/a.py --json x", "machine": "CPU X, 2 cores", "rows": rows}
    (tmp_path / "a.json").write_text(json.dumps(payload))
    (tmp_path / "b.json").write_text(json.dumps({"benchmark": "b", "rows": []}))
    text = report.render(sorted(tmp_path.glob("*.json")))
    table = [line for line in text.splitlines() if line.startswith("| tiles read") or line.startswith("| slides")
             or line.startswith("| before")]
    assert len(table) == 3
    assert "torchgeo 0.8.1 RasterDataset" in table[0] and "| 2 |" in table[0] and "| yes |" in table[0]
    assert "| **no** |" in table[1]  # 0.5 < bar 1.0
    assert "| - |" in table[2]  # no bar
    assert "`python benchmarks/a.py --json x`" in table[0]
    assert "CPU X, 2 cores: a" in text
    assert "b.json: missing command, machine" in text  # not rendered, and says why


def test_run_all_finds_the_contract_benchmarks() -> None:
    run_all = _module("run_all")
    stems = {p.stem for p in run_all.contract_scripts(ROOT / "benchmarks")}
    assert {"rs_tiles", "wsi_tiles"} <= stems
    assert "unit_costs" not in stems and "run_all" not in stems and "report" not in stems
