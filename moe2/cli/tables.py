"""The tables that more than one command prints: an answer (``moe2 ask``, ``moe2 demo``) and the
costs the controller holds (``moe2 costs``, ``moe2 demo``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from messages.expert_key import expert_key

if TYPE_CHECKING:
    from messages.answers import Answer
    from messages.costs import CostTable


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
    """One row per expert: its state, energy and delays now, where they come from, how many
    results they rest on and how far they moved from the profile."""
    categories = sorted({c for r in table.experts for c in r.delay_s})
    limits = table.budgets.delay_s
    view = Table(title=f"expert costs now (budgets: {budgets_line(table)})")
    for col in ("expert", "state", "energy J", "source"):
        view.add_column(col)
    for c in categories:
        view.add_column(f"{c} s" + (f" (≤{limits[c]:g})" if c in limits else ""))
    for col in ("samples", "× profile"):
        view.add_column(col)
    for r in table.experts:
        state = ("planned" if r.planned else "online") if r.online else "offline"
        if not r.in_gate:
            state += ", " + (r.profiling or "not in the gate")
        if r.energy_j is None:
            energy = "?"
        else:
            energy = f"{r.energy_j:.2f}" + (" est." if r.energy_estimated else "")
        source = r.origin if r.origin != "live" else f"live ({r.energy_source or 'delay only'})"
        delays = [f"{r.delay_s[c]:.3f}" if c in r.delay_s else "?" for c in categories]
        view.add_row(
            r.key,
            state,
            energy,
            source,
            *delays,
            f"{r.delay_samples} delay / {r.energy_samples} energy",
            f"delay {r.delay_ratio:.2f}, energy {r.energy_ratio:.2f}",
        )
    return view
