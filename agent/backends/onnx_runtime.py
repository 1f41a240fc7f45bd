"""ONNX Runtime: greedy generation and choice scoring on a decoder made by ``moe2 export-onnx``.

The KV cache lives in ONNX Runtime values bound to the session's device (``IOBinding``), so on
CUDA it stays on the GPU between steps; only the logits come back to the host. Execution
providers are tried in the order given (by default TensorRT, CUDA, CPU, those this onnxruntime
build has), and ``providers`` reports what the session really uses: onnxruntime-gpu falls back
to the CPU without an error when CUDA cannot start.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.base import (
    GREEDY,
    BackendUnavailable,
    ChoiceScores,
    DeadlineExceeded,
    Generation,
    PromptTooLong,
    Sampling,
    TextSink,
    Turns,
    greedy_generation,
    log_softmax,
    normalise_logprobs,
    past,
    plain_transcript,
    sample_token,
)
from agent.models import ModelNotFound
from agent.onnx.artifact import (
    META_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    io_names,
    read_artifact,
    weights_bytes,
)

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


@dataclass(frozen=True)
class OnnxOptions:
    n_ctx: int = 2048
    n_threads: int | None = None
    providers: tuple[str, ...] | None = None  # None: PREFERRED_PROVIDERS this build has
    chat_template: bool = True
    stop: tuple[str, ...] = ()


def check_onnxruntime() -> None:
    """Exactly one ONNX Runtime package must be installed: the two share the ``onnxruntime``
    module, and with both the import breaks or silently picks one."""
    installed = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        installed.append(dist)
    if len(installed) > 1:
        raise BackendUnavailable(
            "both onnxruntime and onnxruntime-gpu are installed and they overwrite each other: "
            "pip uninstall -y onnxruntime onnxruntime-gpu, then install one extra, "
            "moe2[onnx] (CPU) or moe2[onnx-gpu] (CUDA)"
        )
    if not installed or importlib.util.find_spec("tokenizers") is None:
        raise BackendUnavailable(
            "the onnxruntime backend needs the onnx extra: pip install 'moe2[onnx]' "
            "(or 'moe2[onnx-gpu]' on a CUDA box)"
        )


def choose_providers(wanted: tuple[str, ...] | None, available: list[str]) -> list[str]:
    """The providers to ask for, in order: the wanted ones this build has (CPU always last)."""
    order = list(wanted) if wanted else list(PREFERRED_PROVIDERS)
    chosen = [p for p in order if p in available]
    missing = [p for p in order if p not in available]
    if wanted and missing:
        log.warning("onnxruntime here has no %s (it has %s)", ", ".join(missing), available)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class _Cache:
    """The KV cache of the tokens decoded so far, as OrtValues on the session's device."""

    def __init__(self, tokens: list[int], values: list[Any]) -> None:
        self.tokens = tokens
        self.values = values


class OnnxBackend:
    """One exported decoder in one ONNX Runtime session. Not thread-safe: one job at a time."""

    def __init__(self, folder: Path, options: OnnxOptions) -> None:
        check_onnxruntime()
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self._ort = ort
        self.folder = folder
        self.options = options
        self.artifact = read_artifact(folder)
        self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self.tokenizer.encode_special_tokens = True  # prompt text is text, never control tokens
        self._n_ctx = min(options.n_ctx, self.artifact.context_length)
        session_options = ort.SessionOptions()
        threads = options.n_threads or max(1, (os.cpu_count() or 2) // 2)
        session_options.intra_op_num_threads = threads
        session_options.inter_op_num_threads = 1
        asked = choose_providers(options.providers, ort.get_available_providers())
        self.session = ort.InferenceSession(
            str(folder / MODEL_FILE), sess_options=session_options, providers=asked
        )
        self.providers: list[str] = self.session.get_providers()
        if self.providers[0] != asked[0]:
            log.warning("asked onnxruntime for %s, the session runs on %s", asked, self.providers)
        self._device = "cuda" if self.providers[0] in PREFERRED_PROVIDERS[:2] else "cpu"
        a = self.artifact
        self._inputs, self._outputs = io_names(a.num_layers)
        graph = (
            {i.name for i in self.session.get_inputs()},
            {o.name for o in self.session.get_outputs()},
        )
        if graph != (set(self._inputs), set(self._outputs)):
            raise ModelNotFound(
                f"{folder / MODEL_FILE} does not have the inputs and outputs its {META_FILE} "
                "describes; run moe2 export-onnx again"
            )
        empty = np.zeros((1, a.num_kv_heads, 0, a.head_dim), dtype=np.float32)
        self._empty = [self._value(empty) for _ in range(2 * a.num_layers)]
        self._cache = _Cache([], self._empty)
        self._formatter = self._chat_formatter() if options.chat_template else None

    # -- facts --------------------------------------------------------------------------

    @property
    def uses_chat_template(self) -> bool:
        return self._formatter is not None

    @property
    def quantisation(self) -> str | None:
        source = self.artifact.source_quantisation
        return f"{self.artifact.dtype} (from {source})" if source else self.artifact.dtype

    @property
    def memory_bytes(self) -> int | None:
        """Weights (the graph's size on disk) plus a full context of KV cache."""
        return weights_bytes(self.folder) + self._n_ctx * self.artifact.kv_bytes_per_token

    @property
    def context_length(self) -> int:
        return self._n_ctx

    # -- running the graph --------------------------------------------------------------

    def _value(self, array: np.ndarray) -> Any:
        return self._ort.OrtValue.ortvalue_from_numpy(array, self._device, 0)

    def _step(self, tokens: list[int], past: _Cache) -> tuple[np.ndarray, _Cache]:
        """Decode ``tokens`` after ``past``: their logits (len(tokens), vocab), the new cache."""
        n_past = len(past.tokens)
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.array([tokens], dtype=np.int64))
        positions = np.arange(n_past, n_past + len(tokens), dtype=np.int64)[None]
        binding.bind_cpu_input("position_ids", positions)
        for name, value in zip(self._inputs[2:], past.values, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self._outputs[1:]:
            binding.bind_output(name, self._device)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy()[0], _Cache(past.tokens + tokens, list(outputs[1:]))

    def _prefix(self, tokens: list[int]) -> tuple[np.ndarray, _Cache]:
        """Logits of the last token of ``tokens`` and their cache; the cache of the previous
        call is reused when ``tokens`` extends it (the same prompt scored again, say)."""
        held = self._cache.tokens
        if len(held) < len(tokens) and tokens[: len(held)] == held:
            logits, cache = self._step(tokens[len(held) :], self._cache)
        else:
            logits, cache = self._step(tokens, _Cache([], self._empty))
        self._cache = cache
        return logits[-1], cache

    # -- prompts ------------------------------------------------------------------------

    def _chat_formatter(self) -> Any:
        template = self.artifact.chat_template
        if not template:
            return None
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:  # chat templates call it on bad input
            raise ValueError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(template)

    def _encode(self, text: str, *, special: bool, bos: bool) -> list[int]:
        self.tokenizer.encode_special_tokens = not special
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        self.tokenizer.encode_special_tokens = True
        a = self.artifact
        if bos and a.add_bos and a.bos_token_id is not None:
            ids = [a.bos_token_id, *ids]
        return ids

    def _prompt_tokens(self, prompt: str, messages: Turns | None = None) -> list[int]:
        """The prompt, or the chat turns, through the model's chat template; without one, the
        prompt as it is, or the turns as a plain transcript."""
        if self._formatter is None and messages is not None:
            return self._encode(plain_transcript(messages), special=False, bos=True)
        if self._formatter is not None:
            text = self._formatter.render(
                messages=messages or [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                bos_token=self.artifact.bos_token or "",
                eos_token=self.artifact.eos_token or "",
            )
            return self._encode(text, special=True, bos=True)
        return self._encode(prompt, special=False, bos=True)

    # -- inference ----------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        max_tokens: int,
        deadline_s: float,
        cancel: threading.Event | None = None,
        *,
        messages: Turns | None = None,
        sampling: Sampling = GREEDY,
        on_text: TextSink | None = None,
    ) -> Generation:
        tokens = self._prompt_tokens(prompt, messages)
        room = self._n_ctx - len(tokens)
        if room < 1:
            raise PromptTooLong(
                f"prompt of {len(tokens)} tokens does not fit the context of {self._n_ctx}"
            )
        eog = set(self.artifact.eog_token_ids)
        return greedy_generation(
            self._sampled(tokens, sampling),
            prompt_tokens=len(tokens),
            budget=min(max_tokens, room),
            deadline_s=deadline_s,
            cancel=cancel,
            is_eog=eog.__contains__,
            detokenize=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False),
            stop=(*self.options.stop, *sampling.stop),
            on_text=on_text,
        )

    def _sampled(self, tokens: list[int], sampling: Sampling) -> Iterator[int]:
        """The next token, step after step: the most likely one (greedy), or one drawn under
        ``sampling`` (a fresh random draw without a seed); nothing is decoded past the last
        one the caller takes."""
        rng = np.random.default_rng(sampling.seed)
        logits, cache = self._prefix(tokens)
        while True:
            token = sample_token(logits, sampling, rng)
            yield token
            rows, cache = self._step([token], cache)
            logits = rows[-1]

    def _abandon_scoring(self, prefix_len: int) -> None:
        """Nothing to undo: choices are decoded on a copy of the prefix's cache."""

    def score_choices(
        self,
        prefix_text: str,
        continuations_text: list[str],
        deadline_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> ChoiceScores:
        """Sum of log-probabilities of each continuation's tokens after the prefix, which is
        decoded once; each continuation is decoded on the prefix's cache."""
        start = time.monotonic()
        prefix = self._encode(prefix_text, special=False, bos=True)
        continuations = [self._encode(c, special=False, bos=False) for c in continuations_text]
        if any(not c for c in continuations):
            raise ValueError("every continuation must have at least one token")
        longest = max(len(c) for c in continuations)
        if not prefix or len(prefix) + longest > self._n_ctx:
            raise PromptTooLong(
                f"prompt of {len(prefix)} tokens plus a choice of {longest} does not fit the "
                f"context of {self._n_ctx}"
            )
        last, cache = self._prefix(prefix)
        first_score_s = time.monotonic() - start
        first_logprobs = log_softmax(last)
        logprobs: list[float] = []
        for tokens in continuations:
            if past(deadline_s, cancel):
                self._abandon_scoring(len(prefix))
                raise DeadlineExceeded(
                    f"scored {len(logprobs)} of {len(continuations)} choices before the deadline"
                )
            total = float(first_logprobs[tokens[0]])
            if len(tokens) > 1:
                rows, _ = self._step(tokens[:-1], cache)
                picked = log_softmax(rows)[np.arange(len(tokens) - 1), tokens[1:]]
                total += float(picked.sum())
            logprobs.append(total)
        return ChoiceScores(
            logprobs=logprobs,
            probs=normalise_logprobs(logprobs),
            prompt_tokens=len(prefix),
            first_score_s=first_score_s,
        )

    def close(self) -> None:
        self._cache = _Cache([], [])
        self._empty = []
        del self.session
