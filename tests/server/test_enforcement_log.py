"""The enforcement log an admin adds to the event bus keeps enforcement events only."""

from __future__ import annotations

import json
import logging

import yaml
from jupyter_events import EventLogger

from jupyter_tfgpu.server.events import ENFORCEMENT_EVENT, ENFORCEMENT_SCHEMA, enforcement_log

OTHER_EVENT = "https://example.org/events/other/v1"
OTHER_SCHEMA = {
    "$id": OTHER_EVENT,
    "version": "1",
    "title": "another event on the same bus",
    "type": "object",
    "properties": {"what": {"type": "string"}},
}
DECISION = {"kernel_id": "k1", "rule": "memory_cap", "action": "warn", "reason": "over its cap"}


def bus(handler) -> EventLogger:
    """An event bus like jupyter_server's, with the enforcement schema and another one."""
    logger = EventLogger(handlers=[handler])
    logger.register_event_schema(ENFORCEMENT_SCHEMA)
    logger.register_event_schema(OTHER_SCHEMA)
    return logger


def test_the_constant_is_the_schemas_id():
    """The id the server emits under is the one in the shipped schema."""
    assert yaml.safe_load(ENFORCEMENT_SCHEMA.read_text())["$id"] == ENFORCEMENT_EVENT


def test_only_enforcement_events_are_written_one_json_line_each(tmp_path):
    """Other events of the bus (kernel actions, contents) stay out of the audit trail."""
    # Given the handler on a bus that carries two kinds of event
    path = tmp_path / "enforcement.jsonl"
    handler = enforcement_log(path)
    events = bus(handler)
    try:
        # When both kinds are emitted
        events.emit(schema_id=OTHER_EVENT, data={"what": "a kernel started"})
        events.emit(schema_id=ENFORCEMENT_EVENT, data=DECISION)
        events.emit(schema_id=OTHER_EVENT, data={"what": "a file saved"})
        handler.flush()
    finally:
        handler.close()
    # Then the file holds the enforcement event alone, as JSON with the bus's capsule
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    written = json.loads(lines[0])
    assert written["__schema__"] == ENFORCEMENT_EVENT and written["reason"] == "over its cap"


def test_a_missing_folder_is_made_with_the_first_event(tmp_path):
    """The store's folder may not exist yet when the server starts: the log makes it."""
    path = tmp_path / "tfgpu" / "enforcement.jsonl"
    handler = enforcement_log(path)
    try:
        bus(handler).emit(schema_id=ENFORCEMENT_EVENT, data=DECISION)
        handler.flush()
    finally:
        handler.close()
    assert json.loads(path.read_text())["rule"] == "memory_cap"


def test_a_folder_that_cannot_be_made_is_said_and_stops_nothing(tmp_path, caplog):
    """The bus goes on; the admin is told at start, and once when an event cannot be written."""
    # Given a log file whose folder cannot be made (a file stands where it would go)
    (tmp_path / "taken").write_text("")
    path = tmp_path / "taken" / "tfgpu" / "enforcement.jsonl"
    with caplog.at_level(logging.WARNING, logger="jupyter_tfgpu.server.events"):
        handler = enforcement_log(path)
    assert any("cannot be written" in r.getMessage() for r in caplog.records)
    events = bus(handler)
    try:
        # When events are emitted
        for _ in range(3):
            events.emit(schema_id=ENFORCEMENT_EVENT, data=DECISION)
        handler.flush()
    finally:
        handler.close()
    # Then emitting did not fail, nothing was written, and the failure was logged once
    assert not path.exists()
    failures = [r for r in caplog.records if "cannot write the enforcement log" in r.getMessage()]
    assert len(failures) == 1
