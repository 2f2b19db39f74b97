"""Bad pathology inputs (the cases are added with the readers that handle them)."""
from __future__ import annotations

from bad_inputs import Case

CASES: list[Case] = []
