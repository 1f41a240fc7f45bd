"""Reading solver instances (selection, caching) from JSON with errors that say where."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

# At most this many problems are listed in one error message.
MAX_LISTED_ERRORS = 8


def join_problems(problems: list[str]) -> str:
    shown = problems[:MAX_LISTED_ERRORS]
    more = len(problems) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{loc}: {message}" if loc else message)
    return join_problems(problems)


def parse_model(
    model: type[M], data: str | bytes | dict[str, Any], error: type[ValueError], what: str
) -> M:
    """Validate a JSON text or a decoded object; raises ``error`` naming every problem."""
    try:
        if isinstance(data, dict):
            return model.model_validate(data)
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise error(f"invalid {what}: {describe(exc)}") from None


def load_model(model: type[M], path: Path | str, error: type[ValueError], what: str) -> M:
    """Read and validate a JSON file; a missing, unreadable or non-JSON file is ``error`` too."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} file {path} is a directory") from None
    except OSError as exc:
        raise error(f"cannot read {what} file {path}: {exc.strerror}") from None
    try:
        json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON: {exc}") from None
    try:
        return parse_model(model, text, error, what)
    except error as exc:
        raise error(f"{path}: {exc}") from None
