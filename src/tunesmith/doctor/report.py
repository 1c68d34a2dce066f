"""What `tunesmith doctor` reports: one `Check` per question, grouped by section, in a `DoctorReport`.

A check passes (nothing to do), warns (works, but worse than it could: read the fix) or fails (the run
would stop, or train wrongly: apply the fix). `tunesmith doctor` exits 1 when any check fails.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Status = Literal["pass", "warn", "fail"]


class Check(BaseModel):
    """One answer: what was checked (`name`), where it belongs (`section`), what was found, and the fix."""

    name: str
    section: str
    status: Status
    detail: str
    fix: str | None = None


class DoctorReport(BaseModel):
    """Every check of one `tunesmith doctor` call, in the order they ran."""

    checks: list[Check]

    @property
    def failed(self) -> list[Check]:
        """The checks that failed (empty when the machine, model and recipe are ready)."""
        return [check for check in self.checks if check.status == "fail"]

    @property
    def warned(self) -> list[Check]:
        return [check for check in self.checks if check.status == "warn"]

    def sections(self) -> dict[str, list[Check]]:
        """The checks grouped by section, sections in first-seen order."""
        grouped: dict[str, list[Check]] = {}
        for check in self.checks:
            grouped.setdefault(check.section, []).append(check)
        return grouped
