"""Continuous batching for llama.cpp: many jobs of one expert decoded together.

One scheduler thread owns a llama.cpp context with ``n_seq_max = parallel`` sequences, each
with a KV cache of its own ``n_ctx`` (``kv_unified`` off: a sequence's cells sit where they
would in a one-sequence context, so its attention sums in the same order and greedy tokens are
bit-for-bit those of the one-at-a-time path; a unified cache gave different tokens in 4 of 8
prompts). Between decode steps it admits new jobs into free slots (continuous batching); each
step is one ``llama_decode`` holding the next token of every live generation, the whole prompt
of every newly admitted job, and one multi-token continuation of every choice-scoring job
whose prompt is decoded (decoded after the prompt in the job's own sequence and removed again,
as the one-at-a-time path does; single-token continuations need no decoding at all). The
weights are read once per step, not once per sequence.

The callers are the jobs' own threads: ``generate`` hands its prompt to the scheduler and takes
its tokens back from a queue through ``greedy_generation``, so stop strings, streaming, budgets,
deadlines and cancellation behave exactly as in the one-at-a-time path. Greedy tokens are the
argmax of the logits; sampled tokens are drawn per sequence with ``sample_token`` and a
generator of the job's own (seeded when the job gives a seed).
"""

from __future__ import annotations

import ctypes
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from agent.backends.base import (
    ChoiceScores,
    DeadlineExceeded,
    Generation,
    Sampling,
    TextSink,
    greedy_generation,
    log_softmax,
    normalise_logprobs,
    past,
    sample_token,
)

log = logging.getLogger(__name__)

_DONE = -1  # end of a generation's token queue
# A free slot keeps the prompt it last decoded; a new prompt that starts with at least this many
# of the same tokens (a chat template's system turn, a question's shared opening) decodes only
# the rest, as the one-at-a-time path reuses its context's prefix. A shorter shared start (the
# BOS token and a word) saves next to nothing and is decoded again, so that a short prompt has
# exactly the logits of a fresh decode.
MIN_REUSE = 4


@dataclass(eq=False)
class _Gen:
    tokens: list[int]
    budget: int
    sampling: Sampling
    is_eog: Callable[[int], bool]
    out: queue.Queue[int] = field(default_factory=queue.Queue)
    abandoned: threading.Event = field(default_factory=threading.Event)
    rng: np.random.Generator | None = None
    seq: int = -1
    n_past: int = 0
    produced: int = 0
    last: int = -1
    error: BaseException | None = None


@dataclass(eq=False)
class _Score:
    prefix: list[int]
    continuations: list[list[int]]
    deadline_s: float | None
    cancel: threading.Event | None
    done: threading.Event = field(default_factory=threading.Event)
    result: list[float] | None = None
    first_score_s: float = 0.0
    started: float = field(default_factory=time.monotonic)
    error: BaseException | None = None
    seq: int = -1
    totals: list[float] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # multi-token choices still to decode


class BatchedContext:
    """A multi-sequence llama.cpp context over an already loaded model, served by one
    scheduler thread. Thread-safe: any number of callers; ``parallel`` run at once, the rest
    wait for a slot."""

    def __init__(self, model: Any, base: Any, parallel: int, n_ctx: int, n_vocab: int) -> None:
        """``base``: the ``llama_context_params`` of the expert's one-at-a-time context, so
        both decode alike (threads, attention kernels); only the sequences and sizes differ."""
        from llama_cpp import llama_cpp as lib

        self._lib = lib
        self.parallel = parallel
        self.n_ctx = n_ctx  # per job
        self.n_vocab = n_vocab
        params = lib.llama_context_params()
        ctypes.pointer(params)[0] = base
        params.n_ctx = n_ctx * parallel
        params.n_batch = max(n_ctx, parallel)  # a whole prompt, or a token of every slot
        params.n_ubatch = min(512, params.n_batch)
        params.n_seq_max = parallel
        params.kv_unified = False
        self.ctx = lib.llama_init_from_model(model, params)
        if self.ctx is None:
            raise RuntimeError(f"llama.cpp could not make a context of {params.n_ctx} tokens")
        self.memory = lib.llama_get_memory(self.ctx)
        self._capacity = params.n_batch
        self._batch = lib.llama_batch_init(self._capacity, 0, 1)
        self._free_slots = list(range(parallel))
        self._held: dict[int, list[int]] = {}  # slot -> the prompt its cache holds at 0..
        self._inbox: queue.Queue[_Gen | _Score] = queue.Queue()
        self._slots = threading.Semaphore(parallel)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llama-batch", daemon=True)
        self._thread.start()

    @property
    def state_bytes(self) -> int:
        return int(self._lib.llama_state_get_size(self.ctx)) if self.ctx else 0

    # -- callers ------------------------------------------------------------------------

    def generate(
        self,
        tokens: list[int],
        budget: int,
        deadline_s: float,
        cancel: threading.Event | None,
        *,
        sampling: Sampling,
        is_eog: Callable[[int], bool],
        detokenize: Callable[[list[int]], str],
        stop: tuple[str, ...],
        on_text: TextSink | None,
    ) -> Generation:
        rng = None
        if not sampling.greedy:
            seed = sampling.seed if sampling.seed is not None else random.getrandbits(31)
            rng = np.random.default_rng(seed)
        gen = _Gen(tokens, budget, sampling, is_eog, rng=rng)
        waited_out = False

        def stream() -> Iterator[int]:
            nonlocal waited_out
            while True:
                try:
                    token = gen.out.get(timeout=0.05)
                except queue.Empty:
                    if not self._thread.is_alive() and gen.out.empty():
                        raise RuntimeError("the expert was unloaded") from None
                    if past(deadline_s, cancel) and gen.produced == 0:
                        waited_out = True  # no first token before the deadline
                        return
                    continue
                if token == _DONE:
                    if gen.error is not None:
                        raise gen.error
                    return
                yield token

        with self._slot(deadline_s, cancel) as admitted:
            if not admitted:
                return Generation("", len(tokens), 0, None, "deadline")
            self._inbox.put(gen)
            try:
                result = greedy_generation(
                    stream(),
                    prompt_tokens=len(tokens),
                    budget=budget,
                    deadline_s=deadline_s,
                    cancel=cancel,
                    is_eog=is_eog,
                    detokenize=detokenize,
                    stop=stop,
                    on_text=on_text,
                )
            finally:
                gen.abandoned.set()  # the scheduler frees its sequence at the next step
        return replace(result, finish_reason="deadline") if waited_out else result

    def score(
        self,
        prefix: list[int],
        continuations: list[list[int]],
        deadline_s: float | None,
        cancel: threading.Event | None,
    ) -> ChoiceScores:
        task = _Score(prefix, continuations, deadline_s, cancel)
        with self._slot(deadline_s, cancel) as admitted:
            if not admitted:
                raise DeadlineExceeded(f"scored 0 of {len(continuations)} choices: no free slot")
            self._inbox.put(task)
            while not task.done.wait(0.1):
                if not self._thread.is_alive():  # closed under it
                    raise RuntimeError("the expert was unloaded")
        if task.error is not None:
            raise task.error
        assert task.result is not None
        return ChoiceScores(
            logprobs=task.result,
            probs=normalise_logprobs(task.result),
            prompt_tokens=len(prefix),
            first_score_s=task.first_score_s,
        )

    class _SlotGuard:
        def __init__(self, owner: BatchedContext, admitted: bool) -> None:
            self.owner, self.admitted = owner, admitted

        def __enter__(self) -> bool:
            return self.admitted

        def __exit__(self, *exc: object) -> None:
            if self.admitted:
                self.owner._slots.release()

    def _slot(self, deadline_s: float | None, cancel: threading.Event | None) -> _SlotGuard:
        """Wait for one of the ``parallel`` slots (callers beyond them queue here)."""
        while not self._slots.acquire(timeout=0.05):
            if past(deadline_s, cancel) or self._closed.is_set():
                return self._SlotGuard(self, False)
        return self._SlotGuard(self, True)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join(timeout=30)
        self._lib.llama_batch_free(self._batch)
        self._lib.llama_free(self.ctx)
        self.ctx = None

    # -- the scheduler ------------------------------------------------------------------

    def _loop(self) -> None:
        gens: list[_Gen] = []  # live generations (prompt decoded)
        waiting: list[_Gen | _Score] = []  # admitted, prompt not yet decoded
        scoring: list[_Score] = []  # prompt decoded, continuations next
        stalled = False
        while not self._closed.is_set():
            idle = not (gens or waiting or scoring)
            try:
                if idle or stalled:  # nothing to decode: wait for work, do not spin
                    item = self._inbox.get(timeout=0.1 if idle else 0.005)
                else:
                    item = self._inbox.get_nowait()
                waiting.append(item)
                while True:
                    waiting.append(self._inbox.get_nowait())
            except queue.Empty:
                pass
            for gen in [g for g in gens if g.abandoned.is_set()]:
                gens.remove(gen)
                self._release(gen.seq, gen.tokens)
            try:
                stalled = not self._step(gens, waiting, scoring)
            except Exception as exc:  # a failed decode fails the jobs in it, not the agent
                log.exception("batched decode failed")
                for item in [*gens, *waiting, *scoring]:
                    self._fail(item, exc)
                gens.clear()
                waiting.clear()
                scoring.clear()
                self._lib.llama_memory_clear(self.memory, True)
                self._free_slots = list(range(self.parallel))
                self._held.clear()
        while True:  # jobs handed over but never taken: they must not wait forever
            try:
                waiting.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for item in [*gens, *waiting, *scoring]:
            self._fail(item, RuntimeError("the expert was unloaded"))

    def _fail(self, item: _Gen | _Score, exc: BaseException) -> None:
        item.error = exc
        if isinstance(item, _Gen):
            item.out.put(_DONE)
        else:
            item.done.set()

    def _release(self, seq: int, prompt: list[int] | None = None) -> None:
        """Free a slot; its cache keeps ``prompt`` (at positions 0..) for the next job."""
        if seq >= 0:
            keep = len(prompt) if prompt else 0
            self._lib.llama_memory_seq_rm(self.memory, seq, keep, -1)
            self._held[seq] = list(prompt or [])
            self._free_slots.append(seq)

    def _take_slot(self, tokens: list[int]) -> tuple[int, int]:
        """The free slot whose cache shares the longest start with ``tokens`` (then the lowest),
        and how many of its tokens to keep. When another slot, free or busy, shares a longer
        start, its cache is copied into the one taken first (llama.cpp copies a sequence's
        whole buffer between per-sequence caches, at the next decode: a few MB, against a
        prompt decoded again), so a cold slot starts from a warm one's prompt."""

        def shared(seq: int) -> int:
            n = 0
            for a, b in zip(self._held.get(seq, ()), tokens, strict=False):
                if a != b:
                    break
                n += 1
            n = min(n, len(tokens) - 1)  # the last token is decoded again, for its logits
            return n if n >= MIN_REUSE else 0

        seq = max(sorted(self._free_slots), key=shared)  # max keeps the first of equals
        self._free_slots.remove(seq)
        keep = shared(seq)
        source = max(sorted(self._held), key=shared, default=seq)
        if shared(source) > keep:
            self._lib.llama_memory_seq_cp(self.memory, source, seq, -1, -1)
            keep = shared(source)
        self._lib.llama_memory_seq_rm(self.memory, seq, keep, -1)
        self._held[seq] = list(tokens)
        return seq, keep

    def _add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        b, i = self._batch, self._batch.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i] = token, pos, 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits
        b.n_tokens = i + 1
        return i

    def _logits(self, i: int) -> np.ndarray:
        ptr = self._lib.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def _decode(self) -> None:
        rc = self._lib.llama_decode(self.ctx, self._batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _step(
        self, gens: list[_Gen], waiting: list[_Gen | _Score], scoring: list[_Score]
    ) -> bool:
        """One round: a decode holding the next token of every live generation, then each
        new prompt and each scoring job's next multi-token continuation in a decode of its own.

        Separate calls because llama.cpp splits a batch over per-sequence caches into ubatches
        of equal length per sequence and of consecutive sequence ids: a prompt beside
        one-token sequences would be decoded one token and then the rest (other logits than
        the one-at-a-time path's), and prompts are compute-bound, so batching them gains
        nothing on a CPU anyway. The generation tokens go in sequence order, and slots are
        handed out lowest first, so they are one ubatch as long as the live slots are
        consecutive. Returns whether anything was decoded."""
        decoded = bool(gens)
        if gens:
            self._batch.n_tokens = 0
            live = sorted(gens, key=lambda g: g.seq)
            rows = [(gen, self._add(gen.last, gen.n_past, gen.seq, True)) for gen in live]
            self._decode()
            for gen, row in rows:
                gen.n_past += 1  # its last token is in the cache now
                self._next_token(gen, self._logits(row), gens)
        # Choice scoring, second half: the next multi-token continuation of each job, after
        # its prompt in its own sequence (then removed again); every row of logits is needed.
        for task in list(scoring):
            if past(task.deadline_s, task.cancel):
                scoring.remove(task)
                self._release(task.seq, task.prefix)
                done = len(task.continuations) - len(task.pending)
                self._fail(
                    task,
                    DeadlineExceeded(
                        f"scored {done} of {len(task.continuations)} choices before the deadline"
                    ),
                )
                continue
            decoded = True
            choice = task.pending.pop(0)
            cont = task.continuations[choice]
            self._lib.llama_memory_seq_rm(self.memory, task.seq, len(task.prefix), -1)
            self._batch.n_tokens = 0
            for j, token in enumerate(cont[:-1]):
                self._add(token, len(task.prefix) + j, task.seq, True)
            self._decode()
            got = log_softmax(np.stack([self._logits(j) for j in range(len(cont) - 1)]))
            task.totals[choice] += float(got[np.arange(len(cont) - 1), cont[1:]].sum())
            if not task.pending:
                self._finish_scoring(task, scoring)
        # New prompts, oldest first, while slots are free: the whole prompt, logits for its
        # last token.
        for item in list(waiting):
            if isinstance(item, _Gen) and item.abandoned.is_set():
                waiting.remove(item)
                item.out.put(_DONE)
                continue
            if isinstance(item, _Score) and past(item.deadline_s, item.cancel):
                waiting.remove(item)
                self._fail(item, DeadlineExceeded("scored 0 choices before the deadline"))
                continue
            if not self._free_slots:
                break
            waiting.remove(item)
            decoded = True
            tokens = item.tokens if isinstance(item, _Gen) else item.prefix
            item.seq, keep = self._take_slot(tokens)
            self._batch.n_tokens = 0
            for pos in range(keep, len(tokens)):
                self._add(tokens[pos], pos, item.seq, pos == len(tokens) - 1)
            self._decode()
            logits = self._logits(len(tokens) - 1 - keep)
            if isinstance(item, _Gen):
                item.n_past = len(item.tokens)
                gens.append(item)
                self._next_token(item, logits, gens)
                continue
            item.first_score_s = time.monotonic() - item.started
            first = log_softmax(logits)
            item.totals = [float(first[c[0]]) for c in item.continuations]
            item.pending = [i for i, c in enumerate(item.continuations) if len(c) > 1]
            scoring.append(item)
            if not item.pending:
                self._finish_scoring(item, scoring)
        return decoded

    def _finish_scoring(self, task: _Score, scoring: list[_Score]) -> None:
        scoring.remove(task)
        self._release(task.seq, task.prefix)
        task.result = task.totals
        task.done.set()

    def _next_token(self, gen: _Gen, logits: np.ndarray, gens: list[_Gen]) -> None:
        if gen.rng is None:
            token = int(np.argmax(logits))
        else:
            token = sample_token(logits, gen.sampling, gen.rng)
        gen.out.put(token)
        gen.produced += 1
        gen.last = token  # decoded at position n_past in the next step
        if gen.is_eog(token) or gen.produced >= gen.budget or gen.n_past >= self.n_ctx:
            gen.out.put(_DONE)
            gens.remove(gen)
            self._release(gen.seq, gen.tokens)

