"""The experts an agent can serve, and the ones it holds loaded.

An agent holds the experts of its plan; a job for another one (a prompt that names an expert
the plan leaves out, a newcomer being profiled) loads it on demand. When that would pass the
memory budget, ``evictions`` says which idle experts to unload first: the ones outside the plan
before the planned ones (reloaded at their next job), least recently used first; never one
with a job running. The budget itself is never passed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent.backends.base import Backend
from agent.models import resolve_model
from agent.onnx.artifact import read_artifact
from agent.requantize import requantize
from agent.settings import ExpertConfig
from messages.capabilities import ExpertInfo

log = logging.getLogger(__name__)


class UnknownExpert(KeyError):
    """An expert id this agent is not configured to serve."""

    def __str__(self) -> str:
        return str(self.args[0])


class MemoryBudgetExceeded(RuntimeError):
    """Loading one more expert would pass the agent's expert memory budget."""


@dataclass
class _Loaded:
    backend: Backend
    quantisation: str | None
    memory_bytes: int | None
    context_length: int
    chat_template: bool
    providers: list[str] | None


def evictions(
    need: int,
    budget: int | None,
    held: dict[str, int],
    busy: set[str],
    planned: set[str],
) -> list[str] | None:
    """Which experts to unload so that ``need`` more bytes fit within ``budget``.

    ``held``: bytes of each expert held or about to be (loaded, or with a job started), least
    recently used first; ``busy``: those with a job running (never unloaded); ``planned``: the
    plan's (unloaded only after every other idle one). Returns [] when it fits as it is (or
    cannot fit at all: ``need`` alone is over the budget, and the load says so), the experts to
    unload, or None when it fits only once a running job ends (the job waits)."""
    if budget is None or need > budget:
        return []
    used = sum(held.values())
    idle = [e for e in held if e not in busy]
    order = [e for e in idle if e not in planned] + [e for e in idle if e in planned]
    chosen: list[str] = []
    for expert in order:
        if used + need <= budget:
            break
        chosen.append(expert)
        used -= held[expert]
    return chosen if used + need <= budget else None


def model_location(config: ExpertConfig) -> Path:
    """The GGUF file (llama.cpp) or the checked export folder (onnxruntime) of an expert."""
    if config.backend == "onnxruntime":
        from agent.backends.onnx_runtime import check_onnxruntime

        folder = Path(config.model).expanduser()
        read_artifact(folder)  # a clear ModelNotFound unless it is a finished export
        check_onnxruntime()
        return folder
    path = resolve_model(config.model)
    return requantize(path, config.quantize) if config.quantize else path


def size_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


def open_backend(config: ExpertConfig, path: Path) -> Backend:
    """Load the expert's model with its engine (imported only when used)."""
    if config.backend == "onnxruntime":
        from agent.backends.onnx_runtime import OnnxBackend, OnnxOptions

        return OnnxBackend(
            path,
            OnnxOptions(
                n_ctx=config.n_ctx,
                n_threads=config.n_threads,
                providers=tuple(config.providers) if config.providers else None,
                chat_template=config.chat_template,
                stop=tuple(config.stop),
            ),
        )
    from agent.backends.llama_cpp import LlamaCppBackend, LlamaOptions

    return LlamaCppBackend(
        path,
        LlamaOptions(
            n_ctx=config.n_ctx,
            n_threads=config.n_threads,
            n_gpu_layers=config.n_gpu_layers,
            chat_template=config.chat_template,
            stop=tuple(config.stop),
            parallel=config.parallel,
        ),
    )


def slots(config: ExpertConfig) -> int:
    """Jobs the expert serves at once: ``parallel`` for llama.cpp; the ONNX export's graph
    takes one sequence (batch 1, its KV cache bound per session), so one at a time."""
    return config.parallel if config.backend == "llama.cpp" else 1


class ExpertPool:
    """Resolves every configured model at start, loads and unloads backends on request."""

    def __init__(self, configs: list[ExpertConfig], budget_mb: float | None = None) -> None:
        self.budget_bytes = None if budget_mb is None else int(budget_mb * 1e6)
        self.configs = {c.id: c for c in configs}
        self.paths: dict[str, Path] = {c.id: model_location(c) for c in configs}
        self._loaded: dict[str, _Loaded] = {}  # in the order last used, least recent first
        self._seen: dict[str, _Loaded] = {}  # facts learnt at a first load, kept after unload
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # one load at a time: concurrent jobs load once
        for config in configs:
            if config.backend != "llama.cpp" and config.parallel > 1:
                log.warning(
                    "expert %s: parallel = %d, but onnxruntime serves one job at a time",
                    config.id,
                    config.parallel,
                )

    def check(self, expert_id: str) -> ExpertConfig:
        try:
            return self.configs[expert_id]
        except KeyError:
            known = ", ".join(sorted(self.configs)) or "none"
            raise UnknownExpert(
                f"unknown expert {expert_id!r} (this agent serves: {known})"
            ) from None

    @property
    def loaded_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._loaded)

    def is_loaded(self, expert_id: str) -> bool:
        with self._lock:
            return expert_id in self._loaded

    def get(self, expert_id: str) -> tuple[Backend, float]:
        """The expert's backend, loading it first if needed; and the seconds spent loading."""
        config = self.check(expert_id)
        with self._lock:
            if expert_id in self._loaded:
                return self._used(expert_id), 0.0
        with self._loading:
            with self._lock:
                if expert_id in self._loaded:  # loaded by another job meanwhile
                    return self._used(expert_id), 0.0
            return self._load(expert_id, config)

    def _used(self, expert_id: str) -> Backend:
        """Under _lock: the loaded expert's backend, now the most recently used."""
        entry = self._loaded.pop(expert_id)
        self._loaded[expert_id] = entry
        return entry.backend

    def held_bytes(self, also: list[str]) -> dict[str, int]:
        """Bytes of each loaded expert, least recently used first, then of ``also`` (experts
        about to be loaded) not loaded yet: what ``evictions`` weighs."""
        with self._lock:
            loaded = list(self._loaded)
        ids = loaded + [e for e in also if e not in loaded and e in self.configs]
        return {e: self.memory_bytes(e) for e in ids}

    def _load(self, expert_id: str, config: ExpertConfig) -> tuple[Backend, float]:
        if self.budget_bytes is not None:
            after = self.memory_needed([*self.loaded_ids, expert_id])
            if after > self.budget_bytes:
                raise MemoryBudgetExceeded(
                    f"loading {expert_id} would hold {after / 1e6:.0f} MB of experts, over the "
                    f"budget of {self.budget_bytes / 1e6:.0f} MB"
                )
        start = time.monotonic()
        backend = open_backend(config, self.paths[expert_id])
        entry = _Loaded(
            backend=backend,
            quantisation=backend.quantisation,
            memory_bytes=backend.memory_bytes,
            context_length=backend.context_length,
            chat_template=backend.uses_chat_template,
            providers=backend.providers,
        )
        with self._lock:
            self._loaded[expert_id] = entry
            self._seen[expert_id] = entry
        load_s = time.monotonic() - start
        log.info("loaded expert %s from %s in %.2f s", expert_id, self.paths[expert_id], load_s)
        return backend, load_s

    def memory_bytes(self, expert_id: str) -> int:
        """Resident size when loaded: measured once it has been, else the file's size."""
        seen = self._seen.get(expert_id)
        if seen is not None and seen.memory_bytes is not None:
            return seen.memory_bytes
        return size_on_disk(self.paths[expert_id])

    def memory_needed(self, expert_ids: list[str]) -> int:
        return sum(self.memory_bytes(e) for e in expert_ids if e in self.configs)

    def unload(self, expert_id: str) -> None:
        with self._lock:
            entry = self._loaded.pop(expert_id, None)
        if entry is not None:
            entry.backend.close()
            log.info("unloaded expert %s", expert_id)

    def close(self) -> None:
        for expert_id in self.loaded_ids:
            self.unload(expert_id)

    def info(self) -> list[ExpertInfo]:
        out = []
        for expert_id, config in self.configs.items():
            seen = self._seen.get(expert_id)
            out.append(
                ExpertInfo(
                    expert_id=expert_id,
                    model=config.model,
                    backend=config.backend,
                    format="onnx" if config.backend == "onnxruntime" else "gguf",
                    file_size_bytes=size_on_disk(self.paths[expert_id]),
                    memory_bytes=seen.memory_bytes if seen else None,
                    quantisation=seen.quantisation if seen else None,
                    context_length=seen.context_length if seen else config.n_ctx,
                    chat_template=seen.chat_template if seen else config.chat_template,
                    template=config.template,
                    providers=seen.providers if seen else None,
                    parallel=slots(config),
                )
            )
        return out
