"""Click parameter types shared by the commands in cli.py and those beside their code."""
from __future__ import annotations

import math

import click


class Real(click.FloatRange):
    """A FloatRange that also refuses nan and infinities: nan passes every range check
    (each comparison with it is false) and either would poison a run silently."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"must be a finite number, not {number}", param, ctx)
        return number

    def _describe_range(self) -> str:
        # click writes an unbounded range as "x<=None" in --help; say nothing instead.
        if self.min is None and self.max is None:
            return ""
        return super()._describe_range()
