"""The bad-input corpus (tests/bad_inputs): every case handled, in-process for speed."""
from __future__ import annotations

import traceback
from pathlib import Path

import pytest
from bad_inputs import Case, all_cases, run_case
from typer.testing import CliRunner

from pipelines.cli import app


def _in_process(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["curate", *args])
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        output += "".join(traceback.format_exception(result.exception))
    return result.exit_code, output


@pytest.mark.parametrize("case", all_cases(), ids=lambda c: c.name)
def test_bad_input_is_named_and_good_inputs_survive(case: Case, tmp_path: Path) -> None:
    outcome, detail = run_case(case, tmp_path, _in_process)
    assert outcome == "handled", detail
