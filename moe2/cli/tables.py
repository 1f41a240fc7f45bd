"""The tables that more than one command prints: an answer (``moe2 ask``, ``moe2 demo``) and the
costs the controller holds (``moe2 costs``, ``moe2 demo``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.markup import escape
from rich.table import Table

from messages.expert_key import expert_key

if TYPE_CHECKING:
    from messages.answers import Answer
    from messages.costs import CostTable, ExpertCostRow


def answer_table(answer: Answer, choices: list[str] | None) -> Table:
    """One row per expert of an answer: its weight, output (the choice probabilities of a
    multiple-choice prompt), latency and energy; then the experts that failed or were left out."""
    table = Table(title=f"request {answer.request_id}: {answer.status}", show_lines=False)
    table.add_column("expert")
    table.add_column("weight", justify="right")
    table.add_column("output")
    table.add_column("latency s", justify="right")
    table.add_column("energy J", justify="right")
    for e in answer.experts:
        if e.choice_probs is not None and choices:
            output = ", ".join(f"{c}={p:.2f}" for c, p in zip(choices, e.choice_probs, strict=True))
        else:
            output = (e.text or "").replace("\n", " ")[:80]
        energy = f"{e.energy_j:.2f} ({e.energy_source})" if e.energy_j is not None else "n/a"
        key = expert_key(e.agent_id, e.expert_id)
        if e.profiling:  # a newcomer: not weighed by the gate yet, or still refined
            output += f"\n[dim]{escape(e.profiling)}[/]"
        table.add_row(key, f"{e.weight:.2f}", output, f"{e.latency_s:.2f}", energy)
    for f in answer.failed:
        key = expert_key(f.agent_id, f.expert_id)
        table.add_row(key, "-", f"[red]failed: {f.reason}[/]", "-", "-")
    for f in answer.left_out:
        key = expert_key(f.agent_id, f.expert_id)
        table.add_row(key, "-", f"[dim]left out: {f.reason}[/]", "-", "-")
    return table


def budgets_line(table: CostTable) -> str:
    """The budgets in force, as one line."""
    b = table.budgets
    parts = [f"energy {b.energy_j:.3g} J" if b.energy_j is not None else "energy unlimited"]
    parts += [f"{c} {s:.3g} s" for c, s in sorted(b.delay_s.items())]
    if b.top_k is not None:
        parts.append(f"top-{b.top_k}")
    return ", ".join(parts)


def costs_table(table: CostTable) -> Table:
    """One row per expert: its state (with a newcomer's profiling progress), energy and delays
    now, where they come from, how many results they rest on and how far they moved from the
    profile. Readable at 80 columns: the ``expert@agent`` key is never cut (the other columns
    fold onto more lines instead)."""
    categories = sorted({c for r in table.experts for c in r.delay_s})
    limits = table.budgets.delay_s
    view = Table(
        title=f"expert costs now (budgets: {budgets_line(table)})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    width = max((len(r.key) for r in table.experts), default=6)
    view.add_column("expert", no_wrap=True, min_width=width)
    view.add_column("state\nsource", overflow="fold", min_width=9)
    view.add_column("J", justify="right", overflow="fold")
    for c in categories:
        limit = f" ≤{limits[c]:g}" if c in limits else ""
        view.add_column(
            f"{c}\ns{limit}", justify="right", overflow="fold", min_width=min(len(c), 12)
        )
    view.add_column("n\nd/e", justify="right", overflow="fold")
    view.add_column("×\nd/e", justify="right", overflow="fold")
    for r in table.experts:
        view.add_row(
            r.key,
            f"{_state(r)}\n[dim]{_source(r)}[/]",
            _energy(r),
            *[f"{r.delay_s[c]:.3f}" if c in r.delay_s else "?" for c in categories],
            f"{r.delay_samples}/{r.energy_samples}",
            f"{r.delay_ratio:.2f}/\n{r.energy_ratio:.2f}",
        )
    return view


def _state(row: ExpertCostRow) -> str:
    """planned, online or offline; a newcomer: how far its profiling is."""
    state = ("planned" if row.planned else "online") if row.online else "offline"
    if row.profiled is not None and row.profile_of is not None:
        where = "in gate, refining" if row.in_gate else "profiling"
        return f"{state}\n{where}\n{row.profiled}/{row.profile_of}"
    if not row.in_gate:
        return f"{state}\n{row.profiling or 'not in the gate'}"
    return state


def _energy(row: ExpertCostRow) -> str:
    """The energy per query (est.: from a power model, not a sensor)."""
    if row.energy_j is None:
        return "?"
    return f"{row.energy_j:.2f}" + ("\nest." if row.energy_estimated else "")


def _source(row: ExpertCostRow) -> str:
    """Where the costs come from: the profile, results (and their energy's source), unknown."""
    return row.origin if row.origin != "live" else f"live ({row.energy_source or 'delay only'})"
