"""The state file: round trip, every kind of damage, and kill -9 in the middle of writes."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from dbus_aggregate_batteries.shell.persist import SavedState, StateFile, decode, encode

STATE = SavedState(charge_ah=123.456, last_balanced=date(2024, 2, 29), balancing_phase="hold",
                   feed_in_saved=1)


def test_round_trip(tmp_path: Path) -> None:
    sf = StateFile(tmp_path / "sub")
    assert sf.load() is None  # missing directory and file: a normal first start
    sf.save(STATE)
    assert sf.load() == STATE
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name != "state.json"]


def _damaged(raw: bytes) -> dict[str, bytes]:
    doc = json.loads(raw)
    wrong_version = dict(doc, version=99)
    edited = dict(doc, charge_ah=1.0)
    return {
        "empty": b"",
        "truncated": raw[: len(raw) // 2],
        "garbage": b"\x00\xff\x13binary",
        "list": b"[1, 2]",
        "wrong-version": json.dumps(wrong_version).encode(),
        "edited": json.dumps(edited).encode(),
    }


@pytest.mark.parametrize("kind", ["empty", "truncated", "garbage", "list", "wrong-version",
                                  "edited"])
def test_damaged_file_is_moved_aside(tmp_path: Path, kind: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    sf = StateFile(tmp_path)
    sf.path.write_bytes(_damaged(encode(STATE))[kind])
    assert sf.load() is None
    assert "unusable" in caplog.text
    assert not sf.path.exists()
    assert len(list(tmp_path.glob("state.json.bad-*"))) == 1
    with pytest.raises(ValueError):
        decode(_damaged(encode(STATE))[kind])


WRITER = """
import sys, time
from dbus_aggregate_batteries.shell.persist import SavedState, StateFile
sf = StateFile(sys.argv[1])
for n in range(int(sys.argv[2]), int(sys.argv[3])):
    sf.save(SavedState(charge_ah=float(n)))
    print(n, flush=True)
    time.sleep(0.001)
"""


def test_kill_9_during_200_writes_leaves_old_or_new(tmp_path: Path) -> None:
    sf = StateFile(tmp_path)
    rng = random.Random(1234)
    next_n = 0
    kills = 0
    deadline = time.monotonic() + 60
    while next_n < 200 and time.monotonic() < deadline:
        # At most 20 writes per process, so that most processes die in the middle of writing.
        stop = str(min(200, next_n + 20))
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(next_n), stop],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.03, 0.15))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        kills += proc.returncode == -signal.SIGKILL
        confirmed = [int(line) for line in out.split()]
        last_confirmed = confirmed[-1] if confirmed else next_n - 1
        saved = sf.load()  # never corrupt: load() would move a bad file aside and say None
        if last_confirmed < 0:
            assert saved is None or saved.charge_ah == 0.0
            continue
        assert saved is not None, f"state lost after a kill at write {last_confirmed + 1}"
        # The write in flight either happened completely or not at all.
        assert saved.charge_ah in (float(last_confirmed), float(last_confirmed + 1))
        next_n = int(saved.charge_ah or 0) + 1
        assert not list(tmp_path.glob("state.json.bad-*"))
    assert next_n >= 200
    assert kills >= 5
