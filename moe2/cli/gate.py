"""``moe2 profile`` and ``moe2 gate ...``: measure the fleet on the suite, train the gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from moe2.cli.connection import Connection, with_connection
from moe2.cli.options import EXIT_FAILURE, fail

out = Console()
err = Console(stderr=True)

gate_app = typer.Typer(help="Train and check the MoE² gate.", no_args_is_help=True)


@with_connection()
def profile(
    out_path: Annotated[Path, typer.Option("--out", help="Profile file (resumed if it exists)")],
    suite: Annotated[
        Path | None, typer.Option("--suite", help="Suite JSONL [default: data/suite.jsonl]")
    ] = None,
    *,
    connection: Connection,
    limit: Annotated[
        int | None,
        typer.Option("--limit", help="Only the first N items of each category in each split"),
    ] = None,
    window: Annotated[int, typer.Option("--window", help="Prompts in flight at once")] = 4,
) -> None:
    """Send the suite to every active expert through the controller; store what each answered."""
    from controller.profile import ProfileError, suite_digest
    from controller.suite import DEFAULT_SUITE, SuiteError, load_suite, stratified
    from moe2.client.ask import AskError
    from moe2.client.profiling import run_profile

    settings = connection.settings()
    try:
        items = load_suite(suite or DEFAULT_SUITE)
    except SuiteError as exc:
        fail(str(exc))
    digest = suite_digest(items)  # of the whole suite: a later run may profile more of it
    if limit is not None:
        items = stratified(items, limit)
    try:
        run = run_profile(
            settings.endpoint, settings.fleet, items, out_path, digest=digest, window=window
        )
    except (ProfileError, AskError, ConnectionError) as exc:
        fail(str(exc), code=EXIT_FAILURE)  # no controller, no active expert: the fleet's state
    complete = len(run.profile.complete_items())
    out.print(
        f"asked {run.asked} prompts, stored {run.measured} measurements ({run.failed} failed); "
        f"{complete}/{len(items)} items measured on all {len(run.profile.experts)} experts "
        f"-> {out_path}"
    )


@gate_app.command("train")
def gate_train(
    profile_path: Annotated[Path, typer.Option("--profile", help="Fleet profile (moe2 profile)")],
    out_path: Annotated[Path, typer.Option("--out", help="Gate checkpoint to write")],
    hidden: Annotated[int, typer.Option("--hidden", help="Hidden units of the gate network")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed of initialisation and training")] = 0,
) -> None:
    """Train the gate once on every expert of the profile."""
    import numpy as np

    from controller.gate.dataset import GateData
    from controller.gate.encoder import EncoderUnavailable, PromptEncoder
    from controller.gate.gate import Gate, file_sha256
    from controller.gate.training import TrainConfig, evaluate, logits_of, train_gate
    from controller.profile import ProfileError, load_profile

    try:
        profile = load_profile(profile_path)
        data = GateData.from_profile(profile, PromptEncoder())
    except (ProfileError, EncoderUnavailable) as exc:
        fail(str(exc))
    net, _ = train_gate(
        data.splits["train"], data.splits["val"], TrainConfig(hidden=hidden, seed=seed)
    )
    gate = Gate(net, data.expert_keys, profile.fleet, file_sha256(profile_path))
    gate.save(out_path)
    _warn_small_training(data.splits["train"])
    table = Table(title=f"gate over {len(data.expert_keys)} experts -> {out_path}")
    for col in ("split", "items", "gate loss", "gate acc", "uniform loss", "uniform acc"):
        table.add_column(col)
    everyone = list(range(len(data.expert_keys)))
    for name, split in data.splits.items():
        if not len(split):
            continue
        loss, acc = evaluate(logits_of(net, split), split, everyone)
        uloss, uacc = evaluate(np.zeros((len(split), len(everyone))), split, everyone)
        table.add_row(
            name, str(len(split)), f"{loss:.3f}", f"{acc:.3f}", f"{uloss:.3f}", f"{uacc:.3f}"
        )
    out.print(table)


@gate_app.command("preservation")
def gate_preservation(
    profile_path: Annotated[Path, typer.Option("--profile", help="Fleet profile (moe2 profile)")],
    gate_path: Annotated[Path, typer.Option("--gate", help="Gate checkpoint (moe2 gate train)")],
    subsets: Annotated[int, typer.Option("--subsets", help="Random subsets S to compare")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the subsets and training")] = 0,
    markdown: Annotated[
        Path | None, typer.Option("--markdown", help="Write the table here")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON")] = False,
) -> None:
    """Show optimality preservation: a gate trained on S alone against the full gate on S."""
    from controller.gate.dataset import GateData
    from controller.gate.encoder import EncoderUnavailable, PromptEncoder
    from controller.gate.errors import GateError
    from controller.gate.gate import Gate
    from controller.gate.preservation import preservation_table, to_markdown
    from controller.profile import ProfileError, load_profile

    try:
        profile = load_profile(profile_path)
        gate = Gate.load(gate_path)
        profile.check_fleet(gate.fleet)
        data = GateData.from_profile(profile, PromptEncoder(), keys=gate.expert_keys)
    except (ProfileError, GateError, EncoderUnavailable) as exc:
        fail(str(exc))
    rows = preservation_table(gate, data, subsets=subsets, seed=seed)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(to_markdown(rows, data.expert_keys))
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
        return
    table = Table(title="full gate restricted to S vs gate trained on S alone (test split)")
    for col in ("S", "loss restricted", "loss trained", "gap", "acc restricted", "acc trained"):
        table.add_column(col)
    table.caption = "S lists expert numbers: " + ", ".join(
        f"{n} {key}" for n, key in enumerate(data.expert_keys)
    )
    for r in rows:
        table.add_row(
            ",".join(map(str, r.subset)),
            f"{r.loss_restricted:.4f}",
            f"{r.loss_trained:.4f}",
            f"{r.loss_gap:+.4f}",
            f"{r.acc_restricted:.3f}",
            f"{r.acc_trained:.3f}",
        )
    out.print(table)


def sweep(
    profile_path: Annotated[Path, typer.Option("--profile", help="Fleet profile (moe2 profile)")],
    gate_path: Annotated[Path, typer.Option("--gate", help="Gate checkpoint (moe2 gate train)")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the CSV and PNG plots")],
    points: Annotated[int, typer.Option("--points", min=2, max=50, help="Budgets per axis")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random baseline")] = 0,
) -> None:
    """Test accuracy against the energy and the delay budget: MoE² beside every baseline."""
    from controller.gate.errors import GateError
    from controller.profile import ProfileError
    from controller.selection.from_profile import load_gated_profile
    from controller.selection.sweep import plot, report_markdown, write_csv
    from controller.selection.sweep import sweep as run_sweep

    try:
        gated = load_gated_profile(profile_path, gate_path)
    except (ProfileError, GateError) as exc:
        fail(str(exc))
    total = sum(c.energy_j for c in gated.costs.values()) + 1.0
    val = gated.instance("val", total, {})
    test = gated.instance("test", total, {})
    rows = run_sweep(val, test, points=points, seed=seed)
    write_csv(rows, out_dir / "sweep.csv")
    (out_dir / "sweep.md").write_text(report_markdown(rows))
    estimated = any(c.energy_estimated for c in gated.costs.values())
    pngs = plot(rows, out_dir, estimated)
    table = Table(title="test accuracy (chosen on validation)")
    table.add_column("axis", no_wrap=True)
    table.add_column("budget", no_wrap=True)
    algorithms = sorted({r.algorithm for r in rows}, key=lambda a: a != "moe2")
    for a in algorithms:
        table.add_column(a)
    units = {"energy": "J per query", "delay": "× slowest expert"}  # as in sweep.md
    for axis in ("energy", "delay"):
        budgets = sorted({r.budget for r in rows if r.axis == axis})
        for budget in budgets:
            cells = []
            for a in algorithms:
                hit = [
                    r for r in rows if r.axis == axis and r.budget == budget and r.algorithm == a
                ]
                acc = hit[0].test_accuracy if hit and hit[0].feasible else None
                cells.append("-" if acc is None else f"{acc:.3f}")
            table.add_row(axis, f"{budget:.3g} {units[axis]}", *cells)
    out.print(table)
    out.print(
        f"wrote {out_dir / 'sweep.csv'}, {out_dir / 'sweep.md'} and "
        + ", ".join(str(p) for p in pngs)
    )


def _warn_small_training(train: Any) -> None:
    """Say so when the gate was trained on too few prompts to mean much: with no more training
    prompts than the prompt embedding has dimensions, the gate's first layer alone can fit any
    answers to them."""
    dims = train.embeddings.shape[1]
    if len(train) <= dims:
        err.print(
            f"[yellow]warning:[/] the gate was trained on {len(train)} prompts, no more than the "
            f"{dims} dimensions of the prompt embedding: it can fit any answers to so few, so "
            "expect it to overfit. Profile more of the suite (moe2 profile without --limit; "
            "data/profile-lab.json has every suite prompt).",
            soft_wrap=True,
        )
