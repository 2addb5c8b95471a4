"""Dependency audit of the installed environment (.venv): pip-audit against PyPI's advisory data.

`pip-audit --vulnerability-service pypi` asks PyPI's JSON API for each installed version
(`/pypi/<name>/<version>/json`). Where that per-version document is not served (this workplace's
PyPI proxy answers 404 for it, so pip-audit skips every package), the project document
(`/pypi/<name>/json`) is read instead: its `vulnerabilities` are those of the latest release, so
they are exact for every package installed at its latest version; a package behind its latest
release is listed as not auditable here rather than passed silently.

Findings fail the test unless their ID is in pip_audit_ignore.txt with a reason (the same file
feeds pip-audit's --ignore-vuln). docs/reliability.md has the last run's numbers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from common.repository import REPO_ROOT
from tests.reliability.conftest import FuzzSettings

IGNORE_FILE = Path(__file__).with_name("pip_audit_ignore.txt")
PYPI = "https://pypi.org/pypi"
PROJECT_NAME = "aidetect"  # this repository, installed editable: not on PyPI


def ignored_ids() -> dict[str, str]:
    """ID -> reason, from `ID  # reason` lines; an entry without a reason is refused."""
    ignored = {}
    for line in IGNORE_FILE.read_text().splitlines():
        entry = line.split("#", 1)
        if not entry[0].strip():
            continue
        reason = entry[1].strip() if len(entry) > 1 else ""
        if not reason:
            raise ValueError(f"{IGNORE_FILE.name}: {entry[0].strip()} is ignored without a reason")
        ignored[entry[0].strip()] = reason
    return ignored


@dataclass
class AuditReport:
    audited_by_pip_audit: list[str] = field(default_factory=list)
    audited_from_project_data: list[str] = field(default_factory=list)
    not_auditable: dict[str, str] = field(default_factory=dict)  # name -> why
    findings: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def run_pip_audit(ignored: dict[str, str], output: Path) -> dict[str, object]:
    command = [
        str(Path(sys.executable).with_name("pip-audit")),
        "--vulnerability-service=pypi",
        "--format=json",
        "--progress-spinner=off",
        "--skip-editable",
        f"--output={output}",
        *(f"--ignore-vuln={vulnerability}" for vulnerability in ignored),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if not output.exists():
        raise AssertionError(f"pip-audit failed ({result.returncode}): {result.stderr[-3000:]}")
    document: dict[str, object] = json.loads(output.read_text())
    return document


def project_vulnerabilities(
    client: httpx.Client, name: str, version: str
) -> tuple[str, list[dict[str, Any]]]:
    """("latest" | "behind <latest>" | "unknown <why>", the latest release's vulnerabilities)."""
    try:
        response = client.get(f"{PYPI}/{canonicalize_name(name)}/json")
    except httpx.HTTPError as error:
        return f"unknown ({type(error).__name__})", []
    if response.status_code != 200:
        return f"unknown (PyPI answered {response.status_code})", []
    document = response.json()
    latest = document["info"]["version"]
    if Version(latest) != Version(version):
        return f"behind {latest}", []
    return "latest", [item for item in document.get("vulnerabilities") or [] if not item.get("withdrawn")]


def audit(ignored: dict[str, str], workspace: Path) -> AuditReport:
    report = AuditReport()
    document = run_pip_audit(ignored, workspace / "pip-audit.json")
    skipped: list[tuple[str, str]] = []
    for dependency in document["dependencies"]:  # type: ignore[attr-defined]
        name = dependency["name"]
        if "skip_reason" in dependency:
            if canonicalize_name(name) != PROJECT_NAME:
                skipped.append((name, metadata.version(name)))
            continue
        report.audited_by_pip_audit.append(name)
        for vulnerability in dependency.get("vulns", []):
            fixes = ", ".join(vulnerability.get("fix_versions", [])) or "no fixed version"
            report.findings.append(
                f"{name} {dependency['version']}: {vulnerability['id']} (fixed in {fixes})"
            )
    with httpx.Client(timeout=30, follow_redirects=True) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda item: project_vulnerabilities(client, *item), skipped))
    for (name, version), (standing, vulnerabilities) in zip(skipped, answers, strict=True):
        if standing != "latest":
            report.not_auditable[name] = f"{version} installed, {standing}"
            continue
        report.audited_from_project_data.append(name)
        for vulnerability in vulnerabilities:
            identifiers = {str(vulnerability["id"]), *map(str, vulnerability.get("aliases") or [])}
            known = sorted(identifiers & set(ignored))
            if known:
                report.ignored.append(f"{name} {version}: {known[0]} ({ignored[known[0]]})")
                continue
            fixes = ", ".join(map(str, vulnerability.get("fixed_in") or [])) or "no fixed version"
            report.findings.append(f"{name} {version}: {vulnerability['id']} (fixed in {fixes})")
    return report


def pypi_reachable() -> bool:
    try:
        return httpx.get(f"{PYPI}/pip/json", timeout=15).status_code == 200
    except httpx.HTTPError:
        return False


def test_installed_dependencies_have_no_known_vulnerabilities(tmp_path: Path, fuzz: FuzzSettings) -> None:
    if not pypi_reachable():
        if os.environ.get("CI"):
            pytest.fail("PyPI is not reachable: the dependency audit cannot run in CI")
        pytest.skip("PyPI is not reachable (offline): dependency audit skipped")
    ignored = ignored_ids()
    report = audit(ignored, tmp_path)
    audited = len(report.audited_by_pip_audit) + len(report.audited_from_project_data)
    summary = {
        "audited_by_pip_audit": len(report.audited_by_pip_audit),
        "audited_from_project_data": len(report.audited_from_project_data),
        "not_auditable": report.not_auditable,
        "findings": report.findings,
        "ignored": report.ignored,
    }
    fuzz.record("dependency_audit", summary)
    print(json.dumps(summary, indent=2))  # shown with -s, and in the report of a failure
    assert audited > 0, "nothing could be audited: is PyPI's JSON API reachable?"
    assert not report.findings, "known vulnerabilities (upgrade, or ignore with a reason):\n" + "\n".join(
        report.findings
    )


def test_ignore_file_entries_have_reasons() -> None:
    for vulnerability, reason in ignored_ids().items():
        assert re.fullmatch(r"[A-Z]+-[\w-]+", vulnerability), vulnerability
        assert len(reason) > 10, (vulnerability, reason)


# ---------------------------------------------------------------- the lock (issue 13)

LOCK_LINE = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", re.MULTILINE)


def locked(path: Path) -> dict[str, Version]:
    return {
        canonicalize_name(name): Version(version) for name, version in LOCK_LINE.findall(path.read_text())
    }


def test_the_environment_is_exactly_the_lock() -> None:
    """`make setup` installs requirements.lock with --require-hashes: every locked package is
    installed at its locked version (a lock out of step with .venv shows here)."""
    lock = locked(REPO_ROOT / "requirements.lock")
    assert len(lock) > 100
    text = (REPO_ROOT / "requirements.lock").read_text()
    assert text.count("--hash=sha256:") >= len(lock)
    installed = {
        canonicalize_name(distribution.metadata["Name"]): Version(distribution.version)
        for distribution in metadata.distributions()
    }
    wrong = {
        name: (version, installed.get(name))
        for name, version in lock.items()
        if installed.get(name) != version
    }
    assert not wrong, f"locked vs installed: {wrong} (run `make setup` after `make lock`)"


def test_the_locks_cover_every_declared_dependency() -> None:
    """Every requirement of every extra in pyproject.toml is in requirements.lock at a version
    it allows (a dependency added without `make lock` fails here), and the gateway image's lock
    takes the same versions."""
    from packaging.requirements import Requirement

    lock = locked(REPO_ROOT / "requirements.lock")
    missing = []
    for line in metadata.requires(PROJECT_NAME) or []:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == PROJECT_NAME:
            continue  # one extra naming others
        if name not in lock or not requirement.specifier.contains(lock[name], prereleases=True):
            missing.append(f"{line} (locked: {lock.get(name)})")
    assert not missing, missing
    gateway = locked(REPO_ROOT / "gateway" / "requirements.lock")
    assert gateway and all(lock[name] == version for name, version in gateway.items())
