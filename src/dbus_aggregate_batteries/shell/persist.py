"""Crash-safe state file: the Coulomb counter, the balancing state, the remembered feed-in and
the bank history.

A write goes to a temporary file in the same directory, is fsynced, renamed over the old file
and the directory is fsynced, so after a power cut at any instant the file holds either the
old or the new complete content.  The content carries a format version and a SHA-256 checksum;
a file that fails either check is renamed aside (kept for inspection) and treated as absent.

The history is an optional ``history`` object in the same format version: files written before
it existed load with an empty history, and a version without it ignores the key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from dbus_aggregate_batteries.core.history import HistoryState, history_from_dict, history_to_dict

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILE_NAME = "state.json"


@dataclass(frozen=True, slots=True)
class SavedState:
    """What survives a restart."""

    charge_ah: float | None = None
    last_balanced: date | None = None
    balancing_phase: str = "idle"
    feed_in_saved: int | None = None
    history: HistoryState | None = None


def _checksum(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode(state: SavedState) -> bytes:
    """The file content for ``state``."""
    payload: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "charge_ah": state.charge_ah,
        "last_balanced": state.last_balanced.isoformat() if state.last_balanced else None,
        "balancing_phase": state.balancing_phase,
        "feed_in_saved": state.feed_in_saved,
    }
    if state.history is not None:
        payload["history"] = history_to_dict(state.history)
    doc = {**payload, "checksum": _checksum(payload)}
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def decode(raw: bytes) -> SavedState:
    """Parse and verify file content; raises ValueError with the reason when it is not valid."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    checksum = doc.pop("checksum", None)
    if doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"unsupported format version {doc.get('version')!r}")
    if checksum != _checksum(doc):
        raise ValueError("checksum mismatch (truncated or edited)")
    charge = doc.get("charge_ah")
    if charge is not None and (
        isinstance(charge, bool) or not isinstance(charge, (int, float)) or not 0 <= charge < 1e6
    ):
        raise ValueError(f"bad charge_ah {charge!r}")
    last = doc.get("last_balanced")
    phase = doc.get("balancing_phase", "idle")
    feed_in = doc.get("feed_in_saved")
    if phase not in ("idle", "active", "hold"):
        raise ValueError(f"bad balancing_phase {phase!r}")
    if feed_in is not None and (isinstance(feed_in, bool) or not isinstance(feed_in, int)):
        raise ValueError(f"bad feed_in_saved {feed_in!r}")
    history = doc.get("history")
    if history is not None and not isinstance(history, dict):
        raise ValueError(f"bad history {history!r}")
    return SavedState(
        charge_ah=float(charge) if charge is not None else None,
        last_balanced=date.fromisoformat(last) if isinstance(last, str) else None,
        balancing_phase=phase,
        feed_in_saved=feed_in,
        history=history_from_dict(history) if history is not None else None,
    )


class StateFile:
    """The state file in one directory.  Blocking I/O: call it from a worker thread."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME

    def load(self) -> SavedState | None:
        """The saved state, or None when there is none (first start) or it was unusable."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            log.info("no state file at %s: first start", self.path)
            return None
        except OSError as exc:
            log.warning("cannot read %s (%s): starting without saved state", self.path, exc)
            return None
        try:
            return decode(raw)
        except ValueError as exc:
            aside = self.path.with_name(f"{FILE_NAME}.bad-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.warning(
                "state file %s is unusable (%s); moved to %s, starting from the BMS SoC",
                self.path, exc, aside.name,
            )
            return None

    def save(self, state: SavedState) -> None:
        """Atomically replace the file with ``state``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        data = encode(state)
        fd, tmp = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
