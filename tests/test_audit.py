"""The audit log on a real SQLite file: rows, text only when asked, retention, WAL,
where the file goes, and a full queue that is reported, not silent."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from voice_agent.audit import AuditLog, AuditRecord, audit_path, turn_record
from voice_agent.config import AuditConfig, load_config
from voice_agent.errors import ConfigError
from voice_agent.server.protocol import TurnDone

pytestmark = pytest.mark.timeout(30)


def rows(path: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM turns ORDER BY id")]
    finally:
        db.close()


def record(turn_id: int = 1, **kw: Any) -> AuditRecord:
    base: dict[str, Any] = dict(session_id="s1", turn_id=turn_id, started_at=100.0,
                                ended_at=101.5, client="10.0.0.7", engine="llama_cpp:x",
                                status="ok", error_codes=[], timings_ms={"asr_ms": 150.0},
                                transcript="what time is it", reply_text="It is noon.")
    base.update(kw)
    return AuditRecord(**base)


def test_rows_hold_the_turn_but_no_text_by_default(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    log = AuditLog(path).open()
    log.record(record(1))
    log.record(record(2, status="error", error_codes=["llm_failed"]))
    log.close()
    got = rows(path)
    assert [r["turn_id"] for r in got] == [1, 2]
    first = got[0]
    assert (first["session_id"], first["client"], first["engine"], first["status"]) == (
        "s1", "10.0.0.7", "llama_cpp:x", "ok")
    assert (first["started_at"], first["ended_at"]) == (100.0, 101.5)
    assert json.loads(first["timings_ms"]) == {"asr_ms": 150.0}
    assert json.loads(got[1]["error_codes"]) == ["llm_failed"]
    assert first["transcript"] is None and first["reply_text"] is None
    assert b"what time" not in path.read_bytes()


def test_text_is_recorded_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    log = AuditLog(path, text=True).open()
    log.record(record(1))
    log.close()
    assert (rows(path)[0]["transcript"], rows(path)[0]["reply_text"]) == (
        "what time is it", "It is noon.")


def test_the_file_is_in_wal_mode_and_appends_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "audit.sqlite3"
    for turn_id in (1, 2):
        log = AuditLog(path).open()
        log.record(record(turn_id))
        log.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    assert [r["turn_id"] for r in rows(path)] == [1, 2]


def test_old_rows_are_pruned_past_max_rows(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    log = AuditLog(path, max_rows=5).open()
    for turn_id in range(1, 13):
        log.record(record(turn_id))
    log.close()
    kept = [r["turn_id"] for r in rows(path)]
    assert kept[-1] == 12 and len(kept) <= 5 + 4 and 1 not in kept


def test_a_full_queue_drops_with_an_error_not_silently(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = AuditLog(tmp_path / "audit.sqlite3", queue_size=1)  # not opened: nothing drains
    log.record(record(1))
    with caplog.at_level(logging.ERROR, logger="voice_agent.audit"):
        log.record(record(2))
    assert log.dropped == 1
    assert "turn 2 of session s1 NOT recorded" in caplog.text


def test_turn_record_combines_fallback_and_turn_error_codes() -> None:
    done = TurnDone(turn_id=3, status="error", transcript="t", reply_text="r", engine="b",
                    audio_samples=0, timings_ms={"total_ms": 2500.0},
                    fallbacks={"a": "engine_timeout"})
    row = turn_record(done, session_id="s", client="::1",
                      error_codes=["llm_failed", "engine_timeout"], ended_at=1000.0)
    assert row.error_codes == ["engine_timeout", "llm_failed"]
    assert (row.started_at, row.ended_at) == (997.5, 1000.0)


def test_where_the_log_goes(tmp_path: Path) -> None:
    assert audit_path(AuditConfig(), {}) is None  # a workstation run writes nothing
    state = {"STATE_DIRECTORY": f"{tmp_path}:/elsewhere"}
    assert audit_path(AuditConfig(), state) == tmp_path / "audit.sqlite3"
    assert audit_path(AuditConfig(path="x.db"), state) == Path("x.db")
    assert audit_path(AuditConfig(enabled=False, path="x.db"), state) is None


def test_audit_settings_are_validated() -> None:
    config = load_config(env={"VOICE_AGENT_AUDIT__TEXT": "true",
                              "VOICE_AGENT_AUDIT__PATH": "a.db"})
    assert config.audit.text and config.audit.path == "a.db"
    with pytest.raises(ConfigError):
        load_config(env={}, overrides={"audit": {"max_rows": -1}})
    with pytest.raises(ConfigError):
        load_config(env={}, overrides={"audit": {"queue_size": 0}})
