"""Errors in what the user gave (inputs, settings): reported as a message that names the input.

The `domainfm` command turns an `InputError` into `Error: <message>` and exit status 1, without a
traceback; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class InputError(Exception):
    """A problem with an input or a setting, explained by its message."""
