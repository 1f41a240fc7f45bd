"""``moe2 schema``: JSON Schemas of the fleet's messages and a machine-readable topic table, for
clients not written in Python."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from messages.topics import PREFIX, TOPICS
from moe2.cli.options import console


def schema(
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write one JSON Schema file per message here")
    ] = None,
) -> None:
    """JSON Schemas of every message and the topic table, for non-Python clients."""
    if out_dir is None:
        print(json.dumps(topic_table(), indent=2))
        return
    written = write_schemas(out_dir)
    console().print(f"wrote {len(written)} files to {out_dir}")


def topic_table() -> list[dict[str, Any]]:
    """Every topic: its full pattern, message, QoS, whether it is retained, what it carries."""
    return [
        {
            "topic": f"{PREFIX}/{{fleet}}/{t.pattern}",
            "message": t.message.__name__ if t.message else "text/plain; charset=utf-8",
            "qos": t.qos,
            "retained": t.retained,
            "description": t.description,
        }
        for t in TOPICS
    ]


def write_schemas(out_dir: Path) -> list[Path]:
    """One JSON Schema file per message (and the suite's items), and topics.json, in
    ``out_dir``; the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for message in sorted({t.message for t in TOPICS if t.message}, key=lambda m: m.__name__):
        path = out_dir / f"{message.__name__}.schema.json"
        path.write_text(json.dumps(message.model_json_schema(mode="validation"), indent=2) + "\n")
        written.append(path)
    from controller.suite import SuiteItem  # the suite format, for a user's own labelled data

    suite = out_dir / "SuiteItem.schema.json"
    suite.write_text(json.dumps(SuiteItem.model_json_schema(mode="validation"), indent=2) + "\n")
    written.append(suite)
    table = out_dir / "topics.json"
    table.write_text(json.dumps(topic_table(), indent=2) + "\n")
    written.append(table)
    return written
