"""Dates in the EHR and reports tables: one day/month order per file, inferred from all its values.

Accepted values (a time, if any, is dropped: the code window counts whole days):
- year first: `2021-03-04`, `2021/03/04`, `2021.03.04`, `20210304`, with an optional time
  (`2021-03-04 10:00`, `2021-03-04T10:00:00.5`) and time zone (`Z`, `UTC`, `+01:00`, `-0500`);
- day and month as numbers: `04/03/2021`, `4-3-21`, `04.03.2021 10:30`, with the same optional
  time and zone. Two-digit years follow strptime's %y (69-99 -> 1900s, 00-68 -> 2000s);
- month names: `4 March 2021`, `Mar 4, 2021`, `04-Mar-2021`.

The day/month order of numeric dates is decided once per file, never per row (a row-by-row parser
reads "12/04/2021" as 4 December next to "25/03/2021" read as 25 March). With `date_order: auto`:
the order under which every numeric value is a valid date wins; when both orders read every value
and some value reads differently (12/04 with 12 != 04), the file is refused with an InputError
naming it and example rows (by number: values are dates of care, never quoted), unless
`date_order` (day-first | month-first) says which; when no order reads every value (one row only
valid day-first, another only month-first), the file mixes orders and is refused the same way. A
value that is a date under no order is an unparseable row.

Time zones: the calendar date as written is kept ("2021-03-04T23:30:00-05:00" is 4 March), as the
place of care recorded it; converting to UTC would move late-evening events to the next day.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Literal, Optional, Sequence

from dateutil import parser as dateutil_parser

from pipelines.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

DateOrder = Literal["auto", "day-first", "month-first"]
DATE_ORDERS = ("auto", "day-first", "month-first")

_VALUE = re.compile(
    r"^(?P<date>\d{8}|\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2}))"
    r"(?:(?:T|\s+)(?P<time>\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:\s*[AaPp][Mm])?))?"
    r"\s*(?P<tz>Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?$"
)
_YEAR_FIRST = re.compile(r"^(\d{4})[-/.]?(\d{1,2})[-/.]?(\d{1,2})$")
_NUMERIC = re.compile(r"^(\d{1,2})([-/.])(\d{1,2})\2(\d{4}|\d{2})$")
_MONTH_NAME = re.compile(r"[A-Za-z]{3,}")


class DateFormatError(InputError):
    """A date column whose day/month order cannot be decided (ambiguous or mixed)."""


@dataclass
class ParsedDates:
    """A date column read with one order: dates (midnight Timestamps, NaT where unparseable), and notes."""

    dates: pd.Series  # aligned with the input values
    order: Optional[str]  # "day-first" | "month-first" | None (no numeric day/month values)
    warnings: list[str] = field(default_factory=list)
    empty: list[int] = field(default_factory=list)  # positions of empty cells


@dataclass
class _Reading:
    """One value as read: a date if unambiguous, or both readings of a numeric day/month date."""

    fixed: Optional[date] = None  # year-first or month-name date
    day_first: Optional[date] = None
    month_first: Optional[date] = None
    numeric: bool = False  # a dd/mm vs mm/dd value
    zoned: bool = False


def _make(year: int, month: int, day: int) -> Optional[date]:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _year(text: str) -> int:
    y = int(text)
    if len(text) == 2:
        return 1900 + y if y >= 69 else 2000 + y
    return y


def _read(value: str) -> _Reading:
    text = value.strip()
    m = _VALUE.match(text)
    if m is None:
        if _MONTH_NAME.search(text):
            try:
                parsed = dateutil_parser.parse(text, dayfirst=False)
            except (ValueError, OverflowError):
                return _Reading()
            return _Reading(fixed=parsed.date(), zoned=parsed.tzinfo is not None)
        return _Reading()
    zoned = m.group("tz") is not None
    part = m.group("date")
    numeric = _NUMERIC.match(part)
    if numeric:
        a, b, y = int(numeric.group(1)), int(numeric.group(3)), _year(numeric.group(4))
        return _Reading(day_first=_make(y, b, a), month_first=_make(y, a, b), numeric=True, zoned=zoned)
    ymd = _YEAR_FIRST.match(part)
    if ymd:
        return _Reading(fixed=_make(int(ymd.group(1)), int(ymd.group(2)), int(ymd.group(3))), zoned=zoned)
    return _Reading()


def _examples(rows: Sequence[tuple[int, str]], limit: int = 3) -> str:
    # row numbers only: a value is a date of care, an identifier that messages must not copy
    return ", ".join(f"row {r}" for r, _ in rows[:limit])


def parse_dates(values: Sequence[str], source: str, column: str, order: str = "auto") -> ParsedDates:
    """Read a column of dates with one day/month order for the whole file.

    `source` names the file in messages; rows are 1-based data rows (header excluded).
    Raises DateFormatError when `order` is "auto" and the column is ambiguous or mixes orders.
    """
    if order not in DATE_ORDERS:
        raise InputError(f"date_order must be one of {', '.join(DATE_ORDERS)}, got {order!r}")
    values = [str(v) for v in values]
    readings = {v: _read(v) for v in dict.fromkeys(values)}  # dates repeat: read each text once
    numeric_rows = [(i, v) for i, v in enumerate(values, start=1) if readings[v].numeric
                    and (readings[v].day_first or readings[v].month_first)]
    only_day = [(i, v) for i, v in numeric_rows if readings[v].month_first is None]
    only_month = [(i, v) for i, v in numeric_rows if readings[v].day_first is None]
    differ = [(i, v) for i, v in numeric_rows if readings[v].day_first and readings[v].month_first
              and readings[v].day_first != readings[v].month_first]
    hint = "set ct.curate.date_order to day-first or month-first"
    warnings: list[str] = []
    chosen: Optional[str] = None
    if numeric_rows:
        if order != "auto":
            chosen = order
            warnings.append(f"{source}: dates in column {column!r} read {order} "
                            f"({'DD/MM' if order == 'day-first' else 'MM/DD'}/YYYY, as set by date_order)")
        elif only_day and only_month:
            raise DateFormatError(
                f"{source}: column {column!r} mixes day-first and month-first dates (only valid day-first: {_examples(only_day, 2)}; "
                f"only valid month-first: {_examples(only_month, 2)}); fix the file or {hint}"
            )
        elif only_day or only_month:
            chosen = "day-first" if only_day else "month-first"
            proof = (only_day or only_month)[0]
            warnings.append(f"{source}: dates in column {column!r} read {chosen} ({'DD/MM' if only_day else 'MM/DD'}/YYYY; "
                            f"row {proof[0]} is only valid that way)")
        elif differ:
            raise DateFormatError(
                f"{source}: dates in column {column!r} are ambiguous: every one reads both day-first and month-first, "
                f"and they disagree ({_examples(differ)}); {hint}"
            )
        else:
            chosen = "day-first"  # every numeric value has day == month: both orders agree
    zoned = [(i, v) for i, v in enumerate(values, start=1) if readings[v].zoned]
    if zoned:
        warnings.append(f"{source}: {len(zoned)} value(s) in column {column!r} carry a time zone ({_examples(zoned, 1)}); "
                        "the calendar date as written is used")

    def resolve(v: str) -> Optional[date]:
        r = readings[v]
        if r.numeric:
            return r.day_first if chosen == "day-first" else r.month_first
        return r.fixed

    import pandas as pd  # here: this module is imported where no date is parsed (`predict ct`, by the EHR module)

    dates = pd.Series([pd.Timestamp(d) if (d := resolve(v)) is not None else pd.NaT for v in values], dtype="datetime64[ns]")
    empty = [i for i, v in enumerate(values) if not v.strip()]
    return ParsedDates(dates=dates, order=chosen, warnings=warnings, empty=empty)
