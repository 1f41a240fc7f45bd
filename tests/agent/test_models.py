"""resolve_model: shipped model names to their GGUF files, paths as given, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.models import SHIPPED_MODELS, ModelNotFound, resolve_model

GGUF_MAGIC = b"GGUF"


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_shipped_models_resolve_to_gguf_files(name: str) -> None:
    path = resolve_model(name)
    assert path.is_file()
    assert path.suffix == ".gguf"
    assert path.stat().st_size > 50_000_000  # real weights, not a pointer file
    with path.open("rb") as f:
        assert f.read(4) == GGUF_MAGIC


def test_shipped_model_resolution_is_stable() -> None:
    assert resolve_model("smollm2-135m") == resolve_model("smollm2-135m")
    assert resolve_model("smollm2-135m") != resolve_model("gemma3-270m")


def test_shipped_models_are_the_two_names() -> None:
    assert set(SHIPPED_MODELS) == {"smollm2-135m", "gemma3-270m"}


def test_unknown_name_names_the_shipped_models() -> None:
    with pytest.raises(ModelNotFound) as info:
        resolve_model("llama-70b")
    message = str(info.value)
    assert "'llama-70b'" in message
    assert "smollm2-135m" in message
    assert "gemma3-270m" in message
    assert "nor a file" in message


def test_missing_gguf_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="is neither a shipped model"):
        resolve_model(str(tmp_path / "absent.gguf"))


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    folder = tmp_path / "weights.gguf"
    folder.mkdir()
    with pytest.raises(ModelNotFound, match="nor a file"):
        resolve_model(str(folder))


def test_non_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"onnx")
    with pytest.raises(ModelNotFound) as info:
        resolve_model(str(path))
    assert str(info.value) == f"model file {path} is not a .gguf file"


def test_model_not_found_is_a_file_not_found_error() -> None:
    with pytest.raises(FileNotFoundError):
        resolve_model("no-such-model")


def test_gguf_path_is_returned_as_is(tmp_path: Path) -> None:
    path = tmp_path / "custom.gguf"
    path.write_bytes(GGUF_MAGIC + b"\0" * 16)
    assert resolve_model(str(path)) == path


def test_gguf_suffix_is_case_insensitive(tmp_path: Path) -> None:
    path = tmp_path / "CUSTOM.GGUF"
    path.write_bytes(GGUF_MAGIC)
    assert resolve_model(str(path)) == path


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m.gguf").write_bytes(GGUF_MAGIC)
    assert resolve_model("~/m.gguf") == tmp_path / "m.gguf"
