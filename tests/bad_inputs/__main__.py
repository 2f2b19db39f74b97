"""`python tests/bad_inputs --domainfm .venv/bin/domainfm [--only NAME ...] [--json OUT]`: run the corpus."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bad_inputs import all_cases, dump, run_case, subprocess_runner, summarise  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--domainfm", required=True, help="The domainfm executable to test.")
parser.add_argument("--only", nargs="*", help="Case names (default: all).")
parser.add_argument("--json", type=Path, help="Write every case's outcome here.")
args = parser.parse_args()
runner = subprocess_runner(args.domainfm, Path.cwd())
results = {}
for case in all_cases():
    if args.only and case.name not in args.only:
        continue
    with tempfile.TemporaryDirectory() as tmp:
        results[case.name] = run_case(case, Path(tmp), runner)
    print(f"{results[case.name][0]:15s} {case.name}  {results[case.name][1][:200]}", flush=True)
print(summarise(results))
if args.json:
    args.json.write_text(dump(results))
