"""`tunesmith doctor`: toolchain, accelerator, model access, chat template and recipe checks, each with its fix.

The package root imports nothing heavy, so `train` can run `version_checks()` before torch loads.
`run_doctor` (tunesmith.doctor.run) runs everything; `recipe_checks` (tunesmith.doctor.recipe) is the
hook for what doctor says about a recipe.
"""

from tunesmith.doctor.report import Check, DoctorReport
from tunesmith.doctor.versions import known_bad_findings, refuse_known_bad_versions, version_checks

__all__ = ["Check", "DoctorReport", "known_bad_findings", "refuse_known_bad_versions", "version_checks"]
