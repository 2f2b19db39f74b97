"""The bad-input corpus: each case mixes one bad input with good ones in one `domainfm curate` run.

A case writes its inputs into a folder and says what must happen to the odd one: a rejects row
naming it with a reason (`expect="reject"`), a clear error naming it (`expect="error"`), either
(`expect="any"`), or, for inputs that are fine once read right (a Latin-1 transcript), a warning
in summary.json naming it while its pairs are curated (`expect="warning"`). Every good input must
still be curated, and `check` may look for outputs that are silently wrong (black tiles, mojibake
captions, a wrong spacing).

Outcomes:
- handled: the run did what the case expects;
- crashed: the run died with a traceback, or without naming the input;
- wrong reason: the input was refused, but the reason does not match, or the error does not name it;
- silently wrong: the run succeeded without a rejects row for the bad input, lost a good input,
  or `check` found a wrong output.

Cases only write files and run the CLI, so the same corpus measures any version of the project:
`python tests/bad_inputs --domainfm PATH/TO/domainfm` prints the counts (run from the repository).
"""
from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import pandas as pd
import yaml

Outcome = Literal["handled", "crashed", "wrong reason", "silently wrong"]
Runner = Callable[[list[str]], tuple[int, str]]  # curate CLI args -> (exit status, output)


@dataclass
class Case:
    """One bad input among good ones."""

    name: str
    domain: str
    build: Callable[[Path], list[str]]  # writes the inputs under a folder; returns the curate options (no --out/--params)
    bad: str  # what the rejects row or the error must name (a file name, or file name plus row/cue)
    reason: str  # regular expression the reason (or the error message) must match, case-insensitive
    good: list[str] = field(default_factory=list)  # names that must appear among the manifest's sources
    expect: Literal["reject", "error", "any", "warning"] = "reject"
    params: dict = field(default_factory=dict)  # the domain's `curate` section
    check: Callable[[Path], str | None] | None = None  # returns what is wrong with the output, if anything


def _clean(text: str) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def run_case(case: Case, folder: Path, runner: Runner) -> tuple[Outcome, str]:
    """Build the case's inputs under `folder`, curate them, and classify what happened."""
    inputs = folder / "inputs"
    inputs.mkdir(parents=True)
    args = case.build(inputs)
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump({case.domain: {"curate": {"workers": 0, **case.params}}}))
    out = folder / "out"
    status, output = runner([case.domain, *args, "--out", str(out), "--params", str(params)])
    text = _clean(output)
    reason = re.compile(case.reason, re.I)
    if status != 0:
        if "Traceback" in output and case.expect != "error":
            return "crashed", text[-600:]
        if case.expect in ("reject", "warning"):
            return "crashed", text[-600:]
        if case.bad in text and reason.search(text) and "Traceback" not in output:
            return "handled", ""
        return ("crashed" if "Traceback" in output else "wrong reason"), text[-600:]
    if case.expect == "error":
        return "silently wrong", "the run succeeded although it should have refused " + case.bad
    if case.expect == "warning":
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
        mentions = [w for w in summary.get("warnings", []) if case.bad in w]
        if not mentions:
            return "silently wrong", f"no warning names {case.bad}; warnings: {summary.get('warnings')}"
        if not any(reason.search(w) for w in mentions):
            return "wrong reason", f"{case.bad}: {mentions}"
    else:
        rejects = pd.read_csv(out / "rejects.csv", dtype=str, keep_default_na=False) if (out / "rejects.csv").is_file() else pd.DataFrame()
        mine = rejects[rejects["input"].str.contains(case.bad, regex=False)] if len(rejects) else rejects
        if mine.empty:
            return "silently wrong", f"no rejects row names {case.bad}; rejects: {rejects.to_dict('records')[:5]}"
        if not any(reason.search(f"{r['stage']}: {r['reason']}") for _, r in mine.iterrows()):
            return "wrong reason", f"{case.bad}: {mine[['stage', 'reason']].to_dict('records')}"
    sources = " ".join(pd.read_parquet(out / "manifest.parquet")["source"].astype(str)) if (out / "manifest.parquet").is_file() else ""
    lost = [g for g in case.good if g not in sources]
    if lost:
        return "silently wrong", f"good inputs not curated: {lost}"
    if case.check is not None and (problem := case.check(out)):
        return "silently wrong", problem
    return "handled", ""


def subprocess_runner(domainfm: str, cwd: Path) -> Runner:
    """Run `domainfm curate ...` as its own process (any installed version of the project)."""
    def run(args: list[str]) -> tuple[int, str]:
        done = subprocess.run([domainfm, "curate", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
        return done.returncode, done.stdout + done.stderr
    return run


def all_cases() -> list[Case]:
    """Every case of every domain module in this package."""
    from bad_inputs import ct, pairs, pathology, remote_sensing

    cases = [*remote_sensing.CASES, *pathology.CASES, *ct.CASES, *pairs.CASES]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def summarise(results: dict[str, tuple[Outcome, str]]) -> dict:
    """Counts per outcome, and per domain."""
    counts: dict[str, int] = {}
    for outcome, _ in results.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return {"cases": len(results), **counts}


def dump(results: dict[str, tuple[Outcome, str]]) -> str:
    """The results as JSON text."""
    return json.dumps({"summary": summarise(results), "cases": {k: {"outcome": o, "detail": d} for k, (o, d) in results.items()}},
                      indent=1)
