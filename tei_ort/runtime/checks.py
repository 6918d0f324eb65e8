"""The cache of what was measured on this machine for a package: each candidate variant's verdict
(its figures, re-validated here or as recorded) and trial speeds, so that a server's later starts
re-validate and time nothing. One file, checks.json, kept in the package when it is writable (a
package shared between machines keeps an entry per machine), else in a fallback folder by the
manifest's digest. Entries are keyed by the CPU, its core count, the thread setting and the
engines' versions, and hold the digest of the manifest they were measured for: a re-export or an
upgrade measures again."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tei_ort.package import CHECKS_FILE, MANIFEST_FILE, Validation
from tei_ort.runtime.cpu import CpuInfo
from tei_ort.runtime.providers import available, engine_name

logger = logging.getLogger(__name__)

CHECKS_VERSION = 1


@dataclass(frozen=True)
class Verdict:
    """One candidate on this machine: the figures that decide, and its trial speed."""

    provider: str
    variant: str
    validation: Validation | None  # None: it could not be loaded here (see note)
    checked_here: bool  # re-validated on this machine (else: the manifest's own figures)
    tokens_per_s: float | None = None
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.validation is not None and self.validation.passed

    @property
    def label(self) -> str:
        return f"{self.provider}:{self.variant}"


class ChecksCache:
    """checks.json: {"version", "machines": {machine key: {"manifest": sha256,
    "verdicts": {"cpu:int8": {...}}}}}. Kept in the package when it is writable, else in
    `fallback_dir` by the manifest's digest; a damaged file is ignored."""

    def __init__(
        self, package: Path, cpu: CpuInfo, threads: int | None, fallback_dir: Path | None
    ) -> None:
        self._digest = hashlib.sha256((package / MANIFEST_FILE).read_bytes()).hexdigest()
        engines = ", ".join(engine_name(p) for p in sorted(available(), key=lambda p: p.value))
        self._key = (
            f"{cpu.describe()} | {cpu.cores} cores | threads {threads or 'default'} | {engines}"
        )
        self._paths = [package / CHECKS_FILE]
        if fallback_dir is not None:
            self._paths.append(fallback_dir / f"{self._digest[:32]}.json")
        self._data = self._load()
        entry = self._data["machines"].get(self._key, {})
        if entry.get("manifest") != self._digest:
            entry = {"manifest": self._digest, "verdicts": {}}
        self._data["machines"][self._key] = entry
        self._entry: dict[str, Any] = entry
        self._verdicts: dict[str, Any] = entry["verdicts"]
        self._dirty = False

    def get(self, label: str) -> Verdict | None:
        raw = self._verdicts.get(label)
        if not isinstance(raw, dict):
            return None
        try:
            validation = Validation(**raw["validation"]) if raw.get("validation") else None
            return Verdict(**{**raw, "validation": validation})
        except TypeError:
            return None

    def put(self, verdict: Verdict) -> None:
        self._verdicts[verdict.label] = asdict(verdict)
        self._dirty = True

    def get_budgets(self, label: str) -> dict[int, float] | None:
        rates = self.get_rates("batch_tokens", label)
        try:
            return {int(budget): rate for budget, rate in rates.items()} if rates else None
        except ValueError:
            return None

    def put_budgets(self, label: str, rates: dict[int, float]) -> None:
        self.put_rates("batch_tokens", label, {str(b): r for b, r in rates.items()})

    def get_rates(self, section: str, label: str) -> dict[str, float] | None:
        """A trial's figures (tokens/s per contender) cached under `section` for `label`."""
        table = self._entry.get(section)
        raw = table.get(label) if isinstance(table, dict) else None
        if not isinstance(raw, dict) or not raw:
            return None
        try:
            return {str(key): float(rate) for key, rate in raw.items()}
        except (TypeError, ValueError):
            return None

    def put_rates(self, section: str, label: str, rates: dict[str, float]) -> None:
        self._entry.setdefault(section, {})[label] = dict(rates)
        self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        text = json.dumps(self._data, indent=2, sort_keys=True)
        for path in self._paths:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_text(text, encoding="utf-8")
                tmp.replace(path)
                return
            except OSError:
                continue
        logger.warning("could not cache the variant checks (no writable place); they run again")

    def _load(self) -> dict[str, Any]:
        for path in self._paths:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if (
                isinstance(data, dict)
                and data.get("version") == CHECKS_VERSION
                and isinstance(data.get("machines"), dict)
            ):
                return data
        return {"version": CHECKS_VERSION, "machines": {}}
