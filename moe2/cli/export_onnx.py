"""``moe2 export-onnx``: make the folder an onnxruntime expert serves (see ``export``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from agent.models import ModelNotFound
from moe2.cli.options import fail


def export_onnx_command(
    model: Annotated[
        str, typer.Argument(help="smollm2-135m, gemma3-270m or a path to a .gguf file")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the export into")],
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset", min=14, max=21)] = 17,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an earlier export in --out")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the export's metadata")] = False,
) -> None:
    """Export a GGUF model to ONNX (float32, KV cache in and out) for the onnxruntime backend."""
    from agent.onnx.export import ExportError, export_onnx

    err = Console(stderr=True)
    try:
        artifact = export_onnx(
            model, out_dir, opset=opset, force=force, say=lambda line: err.print(escape(line))
        )
    except (ExportError, ModelNotFound) as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(artifact.model_dump(), indent=2))
    else:
        Console().print(
            escape(
                f"{out_dir}: {artifact.architecture}, {artifact.num_layers} layers, from "
                f"{artifact.source_file} ({artifact.source_quantisation}); serve it with "
                f'[[experts]] model = "{out_dir}" (backend onnxruntime)'
            ),
            highlight=False,
        )
