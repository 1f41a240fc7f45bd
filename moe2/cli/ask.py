"""``moe2 ask``: publish one prompt to the fleet and print the answer (a table, or JSON)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from moe2.cli.connection import Connection, with_connection
from moe2.cli.options import EXIT_FAILURE, console, fail

if TYPE_CHECKING:
    from messages.answers import Answer
    from messages.prompts import Prompt


@with_connection()
def ask(
    prompt: Annotated[str, typer.Argument(help="The prompt")],
    connection: Connection,
    choice: Annotated[
        list[str] | None, typer.Option("--choice", help="An answer choice (repeat, 2-26)")
    ] = None,
    expert: Annotated[
        list[str] | None,
        typer.Option("--expert", help="Only this expert, EXPERT or EXPERT@AGENT (repeat)"),
    ] = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="Most tokens to generate (free-text prompts)")
    ] = 64,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the answer")
    ] = 60.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the answer object as JSON")
    ] = False,
) -> None:
    """Publish a prompt to the fleet and print the answer."""
    from pydantic import ValidationError

    from messages.prompts import Prompt
    from moe2.client.ask import Asker, AskError

    settings = connection.settings()
    try:
        request = Prompt(
            prompt=prompt,
            choices=choice or None,
            experts=expert or None,
            max_tokens=max_tokens,
            timeout_s=timeout,
        )
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    try:
        with Asker(settings.endpoint, settings.fleet) as asker:
            asker.require_controller()
            answer = asker.ask(request)
    except (AskError, ConnectionError) as exc:
        fail(str(exc), code=EXIT_FAILURE)
    if as_json:
        print(answer.model_dump_json(indent=2))
    else:
        _print_answer(answer, request)
    raise typer.Exit(0 if answer.status != "failed" else 1)


def _print_answer(answer: Answer, request: Prompt) -> None:
    from moe2.cli.tables import answer_table

    console().print(answer_table(answer, request.choices))
    console().print(
        f"[bold]answer:[/] {answer.answer}" if answer.answer else f"[red]{answer.error}[/]"
    )
    console().print(f"end to end {answer.latency_s:.2f} s", style="dim")
