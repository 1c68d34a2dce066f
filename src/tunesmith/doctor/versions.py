"""Python and package versions against what tunesmith is tested with, and combinations known to break.

Both lists live in one data file, `known_versions.json` beside this module, each known-bad entry with
the page that documents it. Reading versions costs no imports (importlib.metadata only), so `train` can
call `version_checks()` before it loads anything heavy.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from functools import cache
from pathlib import Path
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from tunesmith.doctor.report import Check
from tunesmith.errors import TunesmithError

SECTION = "versions"
KNOWN_VERSIONS = Path(__file__).with_name("known_versions.json")


@cache
def known_versions() -> dict[str, Any]:
    """The tested ranges and known-bad combinations (known_versions.json)."""
    return json.loads(KNOWN_VERSIONS.read_text(encoding="utf-8"))


def installed_versions() -> dict[str, str]:
    """`python` and every package known_versions.json names that is installed, by its name there."""
    versions = {"python": platform.python_version()}
    for name in known_versions()["packages"]:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def version_checks(versions: dict[str, str] | None = None) -> list[Check]:
    """Python and each package against its tested range, then the known-bad combinations.

    `versions` maps a name to its version (a package missing from it counts as not installed); None reads
    what is installed. Python is checked when `versions` has a `python` entry.
    """
    versions = installed_versions() if versions is None else versions
    table = known_versions()
    checks = [range_check("python", versions["python"], table["python"])] if "python" in versions else []
    for name, spec in table["packages"].items():
        checks.append(range_check(name, versions[name], spec) if name in versions else missing_check(name, spec))
    return checks + known_bad_findings(versions)


def range_check(name: str, installed: str, spec: dict[str, Any]) -> Check:
    """fail outside pyproject's range, warn above the newest tested major.minor, pass otherwise."""
    try:
        version = Version(installed)
    except InvalidVersion:
        return Check(name=name, section=SECTION, status="warn", detail=f"{installed} (not a version number "
                     f"tunesmith can compare; tested {spec['requires']})", fix=None)
    if not SpecifierSet(spec["requires"]).contains(version, prereleases=True):
        fix = (f"Use Python {spec['requires']} (a new virtual environment)" if name == "python"
               else f"pip install '{pip_name(name)}{spec['requires']}'")
        return Check(name=name, section=SECTION, status="fail",
                     detail=f"{installed}, outside the range tunesmith requires ({spec['requires']})", fix=fix)
    newest = spec.get("tested_up_to")
    if newest and version.release[:2] > Version(newest).release[:2]:
        return Check(name=name, section=SECTION, status="warn",
                     detail=f"{installed}, newer than tested (up to {newest}.x); it may work",
                     fix=None if name == "python" else f"If it breaks: pip install '{pip_name(name)}<"
                                                       f"{next_minor(newest)}'")
    return Check(name=name, section=SECTION, status="pass", detail=f"{installed} (requires {spec['requires']})")


def missing_check(name: str, spec: dict[str, Any]) -> Check:
    """A required package missing fails; an optional one passes with what it is needed for."""
    if spec.get("needed_for"):
        return Check(name=name, section=SECTION, status="pass",
                     detail=f"not installed (needed for {spec['needed_for']})")
    return Check(name=name, section=SECTION, status="fail", detail="not installed; tunesmith needs it",
                 fix=f"pip install '{pip_name(name)}{spec['requires']}' (or reinstall tunesmith)")


def known_bad_findings(versions: dict[str, str] | None = None) -> list[Check]:
    """One check per known-bad entry whose every package constraint the versions meet; none when none match."""
    versions = installed_versions() if versions is None else versions
    return [Check(name="known bad: " + " + ".join(entry["packages"]), section=SECTION, status=entry["severity"],
                  detail=f"{describe(entry['packages'], versions)}: {entry['problem']} Source: {entry['source']}",
                  fix=entry["fix"])
            for entry in known_versions()["known_bad"] if matches(entry["packages"], versions)]


def matches(constraints: dict[str, str], versions: dict[str, str]) -> bool:
    """Every constrained package is installed at a version its specifier contains (local tags like +cpu count)."""
    for name, specifier in constraints.items():
        try:
            if name not in versions or not SpecifierSet(specifier).contains(Version(versions[name]), prereleases=True):
                return False
        except InvalidVersion:
            return False
    return True


def describe(constraints: dict[str, str], versions: dict[str, str]) -> str:
    return " with ".join(f"{name} {versions[name]}" for name in constraints)


def next_minor(version: str) -> str:
    """`5.24` → `5.25`: the first release series newer than the tested one."""
    major, minor = Version(version).release[:2]
    return f"{major}.{minor + 1}"


def pip_name(name: str) -> str:
    """The name pip installs (`llama_cpp_python` → `llama-cpp-python`)."""
    return name.replace("_", "-")


def refuse_known_bad_versions() -> None:
    """Stop before training on an installed package combination known to break it (the `fail` entries of
    known_versions.json); the warnings are left to `tunesmith doctor`. Raises TunesmithError naming the fix."""
    failing = [check for check in known_bad_findings() if check.status == "fail"]
    if failing:
        raise TunesmithError(failing[0].detail, f"{failing[0].fix} (`tunesmith doctor` lists every check.)")

