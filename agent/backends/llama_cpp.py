"""llama.cpp through llama-cpp-python: greedy generation and choice scoring over a shared prefix."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.backends.base import (
    GREEDY,
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
)
from agent.backends.llama_batch import BatchedContext
from agent.models import quantisation_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LlamaOptions:
    n_ctx: int = 2048
    n_threads: int | None = None
    n_gpu_layers: int = 0
    chat_template: bool = True
    stop: tuple[str, ...] = ()
    parallel: int = 1  # jobs decoded together (agent/backends/llama_batch.py); 1: one at a time


class LlamaCppBackend:
    """One GGUF model in one llama.cpp context. With ``parallel`` 1 not thread-safe: one job
    at a time. With ``parallel`` > 1 thread-safe: up to that many jobs are decoded together in
    a second, multi-sequence context (continuous batching), the rest wait for a slot."""

    def __init__(self, model_path: Path, options: LlamaOptions) -> None:
        from llama_cpp import Llama, llama_chat_format
        from llama_cpp import llama_cpp as lib

        self._lib = lib
        self.model_path = model_path
        self.options = options
        threads = options.n_threads or max(1, (os.cpu_count() or 2) // 2)
        self.llm = Llama(
            model_path=str(model_path),
            n_ctx=options.n_ctx,
            n_threads=threads,
            # The same for prompt batches: llama-cpp-python's default (every core) oversubscribes
            # a box that runs several agents, and OpenMP's spinning barriers then cost 20x.
            n_threads_batch=threads,
            n_gpu_layers=options.n_gpu_layers,
            verbose=False,
        )
        if options.n_gpu_layers != 0 and not lib.llama_supports_gpu_offload():
            log.warning(
                "n_gpu_layers=%d, but this llama-cpp-python was built without GPU offload: the "
                "model runs on the CPU (rebuild: CMAKE_ARGS=-DGGML_CUDA=on, docs/backends.md)",
                options.n_gpu_layers,
            )
        self._batched: BatchedContext | None = None
        if options.parallel > 1:
            self._batched = BatchedContext(
                self.llm._model.model,
                self.llm.context_params,
                options.parallel,
                options.n_ctx,
                self.llm.n_vocab(),
            )
        template = self.llm.metadata.get("tokenizer.chat_template")
        self._formatter = None
        if options.chat_template and template:
            vocab = self.llm._model
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=vocab.token_get_text(self.llm.token_eos()),
                bos_token=vocab.token_get_text(self.llm.token_bos()),
            )

    # -- facts --------------------------------------------------------------------------

    @property
    def uses_chat_template(self) -> bool:
        return self._formatter is not None

    @property
    def quantisation(self) -> str | None:
        file_type = self.llm.metadata.get("general.file_type")
        return quantisation_name(file_type)

    @property
    def providers(self) -> list[str] | None:
        return None

    @property
    def parallel(self) -> int:
        """Jobs this backend runs at once."""
        return self.options.parallel if self._batched is not None else 1

    @property
    def offloads_to_gpu(self) -> bool:
        """Whether layers run on a GPU: asked for, and this llama.cpp build can."""
        return self.options.n_gpu_layers != 0 and bool(self._lib.llama_supports_gpu_offload())

    @property
    def memory_bytes(self) -> int | None:
        batched = self._batched.state_bytes if self._batched is not None else 0
        return (
            int(self.llm._model.size())
            + int(self._lib.llama_state_get_size(self.llm.ctx))
            + batched
        )

    @property
    def context_length(self) -> int:
        return self.llm.n_ctx()

    # -- inference ----------------------------------------------------------------------

    def _prompt_tokens(self, prompt: str, messages: Turns | None = None) -> list[int]:
        """The prompt, or the chat turns, through the model's chat template (llama.cpp's own
        Jinja2 formatter, as its chat completion does); without a template, the prompt as it
        is, or the turns as a plain transcript."""
        turns = messages or [{"role": "user", "content": prompt}]
        if self._formatter is not None:
            text = self._formatter(messages=turns).prompt
            return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        text = prompt if messages is None else plain_transcript(messages)
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def _tokens(self, tokens: list[int], sampling: Sampling) -> Iterator[int]:
        if sampling.greedy:
            return self.llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0)
        # A fresh seed for every unseeded draw: llama.cpp would otherwise reuse the last one.
        seed = sampling.seed if sampling.seed is not None else random.getrandbits(31)
        if sampling.seed is not None:
            # The prompt decoded from scratch: logits of a reused prefix differ in the last
            # bits, enough to tip a seeded draw, and the same seed must draw the same text.
            self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
            self.llm.n_tokens = 0
        self.llm.set_seed(seed)
        return self.llm.generate(
            tokens,
            temp=sampling.temperature,
            top_k=sampling.top_k,  # 0: the whole vocabulary
            top_p=sampling.top_p,
            min_p=0.0,
            repeat_penalty=1.0,
        )

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
        room = self.llm.n_ctx() - len(tokens)
        if room < 1:
            raise PromptTooLong(
                f"prompt of {len(tokens)} tokens does not fit the context of {self.llm.n_ctx()}"
            )
        vocab = self.llm._model.vocab
        if self._batched is not None:
            return self._batched.generate(
                tokens,
                min(max_tokens, room),
                deadline_s,
                cancel,
                sampling=sampling,
                is_eog=lambda token: bool(self._lib.llama_vocab_is_eog(vocab, token)),
                detokenize=lambda ids: self.llm.detokenize(ids).decode("utf-8", errors="replace"),
                stop=(*self.options.stop, *sampling.stop),
                on_text=on_text,
            )
        return greedy_generation(
            self._tokens(tokens, sampling),
            prompt_tokens=len(tokens),
            budget=min(max_tokens, room),
            deadline_s=deadline_s,
            cancel=cancel,
            is_eog=lambda token: bool(self._lib.llama_vocab_is_eog(vocab, token)),
            detokenize=lambda ids: self.llm.detokenize(ids).decode("utf-8", errors="replace"),
            stop=(*self.options.stop, *sampling.stop),
            on_text=on_text,
        )

    def _abandon_scoring(self, prefix_len: int) -> None:
        """Leave the context holding the prefix only, as a finished scoring does."""
        self.llm._ctx.kv_cache_seq_rm(-1, prefix_len, -1)
        self.llm.n_tokens = prefix_len

    def score_choices(
        self,
        prefix_text: str,
        continuations_text: list[str],
        deadline_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> ChoiceScores:
        """Sum of log-probabilities of each continuation's tokens after the prefix.

        The prefix is decoded once (reusing whatever prefix the context already holds); each
        continuation is then decoded after it in one batch and removed from the KV cache again.
        """
        start = time.monotonic()
        prefix = self.llm.tokenize(prefix_text.encode("utf-8"), add_bos=True, special=False)
        continuations = [
            self.llm.tokenize(c.encode("utf-8"), add_bos=False, special=False)
            for c in continuations_text
        ]
        if any(not c for c in continuations):
            raise ValueError("every continuation must have at least one token")
        longest = max(len(c) for c in continuations)
        if len(prefix) + longest > self.llm.n_ctx():
            raise PromptTooLong(
                f"prompt of {len(prefix)} tokens plus a choice of {longest} does not fit the "
                f"context of {self.llm.n_ctx()}"
            )
        if self._batched is not None:
            return self._batched.score(prefix, continuations, deadline_s, cancel)
        last_logits = self._decode_prefix(prefix)
        first_score_s = time.monotonic() - start
        first_logprobs = log_softmax(last_logits)
        logprobs: list[float] = []
        for tokens in continuations:
            if past(deadline_s, cancel):
                self._abandon_scoring(len(prefix))
                raise DeadlineExceeded(
                    f"scored {len(logprobs)} of {len(continuations)} choices before the deadline"
                )
            total = float(first_logprobs[tokens[0]])
            if len(tokens) > 1:
                self.llm._ctx.kv_cache_seq_rm(-1, len(prefix), -1)  # drop the previous choice
                rows = log_softmax(self._decode(tokens[:-1], len(prefix), all_logits=True))
                total += float(rows[np.arange(len(tokens) - 1), tokens[1:]].sum())
            logprobs.append(total)
        self.llm._ctx.kv_cache_seq_rm(-1, len(prefix), -1)
        self.llm.n_tokens = len(prefix)
        return ChoiceScores(
            logprobs=logprobs,
            probs=normalise_logprobs(logprobs),
            prompt_tokens=len(prefix),
            first_score_s=first_score_s,
        )

    def _decode_prefix(self, prefix: list[int]) -> np.ndarray:
        """Decode the prompt, reusing the longest prefix already in the context; last logits."""
        held = self.llm.input_ids[: self.llm.n_tokens].tolist()
        keep = 0
        for a, b in zip(held, prefix, strict=False):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(prefix) - 1)  # always decode at least the last token for its logits
        self.llm._ctx.kv_cache_seq_rm(-1, keep, -1)
        logits = self._decode(prefix[keep:], keep, all_logits=False)
        self.llm.input_ids[: len(prefix)] = prefix
        self.llm.n_tokens = len(prefix)
        return logits[-1]

    def _decode(self, tokens: list[int], n_past: int, all_logits: bool) -> np.ndarray:
        """Decode tokens at positions n_past.. and return their logits (all rows, or the last)."""
        n_vocab = self.llm.n_vocab()
        rows: list[np.ndarray] = []
        step = self.llm.n_batch
        for i in range(0, len(tokens), step):
            chunk = tokens[i : i + step]
            self.llm._batch.set_batch(batch=chunk, n_past=n_past + i, logits_all=all_logits)
            self.llm._ctx.decode(self.llm._batch)
            count = len(chunk) if all_logits else 1
            flat = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(count * n_vocab,))
            rows.append(flat.reshape(count, n_vocab).copy())
        return np.concatenate(rows) if all_logits else rows[-1]

    def close(self) -> None:
        if self._batched is not None:
            self._batched.close()
        self.llm.close()
