"""A controller's side of the fleet configuration, between messages: the configuration it
brought (its command line's) and the one it holds in force, the fleet's retained one, the
chunks of the fleet's artefacts fetched so far, and why it may not lead (``problem``).

The service feeds it the retained ``controller/config`` and chunks, ticks it, and asks it what
to publish; it answers with ``Step``s: a line to report, and a configuration whose artefacts
are fetched, verified and stored, ready to load. Loading (torch, the encoder) is the service's,
off the MQTT thread; it says how that went with ``installed`` or ``install_failed``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from controller.fleet_config import (
    ConfigError,
    LocalConfig,
    check_config,
    decide,
    describe,
    missing,
    reassemble,
    short,
    store,
    stored,
)
from messages.fleet_config import ConfigArtefact, ConfigChunk, FleetConfig

# chunks of artefacts no configuration names yet are kept up to this many base64 characters
MAX_LOOSE_TEXT = 64 * 1024 * 1024
MAX_PROBLEM = 4000  # ControllerStatus.config_problem's limit


@dataclass(frozen=True)
class Ready:
    """The fleet's configuration with its artefacts verified and stored: load it."""

    config: FleetConfig
    profile: Path
    gate: Path


@dataclass(frozen=True)
class Step:
    report: str | None = None  # a line to log and publish as a ``config`` event
    ready: Ready | None = None


class ConfigSync:
    def __init__(
        self, own: LocalConfig | None, replace: bool, folder: Path, fetch_timeout_s: float
    ) -> None:
        self.own = own  # brought on the command line (None: started bare)
        self.held = own  # in force here: our own, or the fleet's once adopted
        self.replace = replace
        self.folder = folder  # where fetched artefacts are kept, by hash
        self.fetch_timeout_s = fetch_timeout_s
        self.fleet: FleetConfig | None = None
        self._problem: str | None = None
        self._heard_at = 0.0  # monotonic: when the fleet configuration we fetch came
        self._chunks: dict[str, dict[int, ConfigChunk]] = {}
        self._verified: dict[str, Path] = {}
        self._loading: str | None = None  # the config id handed out as Ready
        self._late_reported = False
        self._published: str | None = None
        self._lock = threading.Lock()

    @property
    def problem(self) -> str | None:
        """Why this controller may not lead now (None: it may), as its status carries it."""
        problem = self._problem
        return (
            problem
            if problem is None or len(problem) <= MAX_PROBLEM
            else problem[: MAX_PROBLEM - 1] + "…"
        )

    @property
    def held_id(self) -> str | None:
        return self.held.config.config_id if self.held else None

    def _own_problem(self, fleet: FleetConfig) -> str:
        assert self.own is not None
        return (
            f"started with {describe(self.own.config)}, but the fleet's is {describe(fleet)} "
            f"(published by {fleet.controller_id}): refusing to lead with another "
            "configuration; start without --profile/--gate to adopt the fleet's, or with "
            "--replace-config to replace it"
        )

    def on_config(self, config: FleetConfig, now: float) -> Step:
        """The retained fleet configuration (again, or a new one)."""
        with self._lock:
            if self.fleet is not None and self.fleet.config_id == config.config_id:
                self.fleet = config
                return Step()
            self.fleet, self._heard_at, self._late_reported = config, now, False
            decision = decide(self.own.config if self.own else None, config, self.replace)
            if decision == "keep":
                self._problem = None
                return Step()
            if decision == "refuse":
                self._problem = self._own_problem(config)
                return Step(report=self._problem)
            if decision == "replace":
                self._problem = None
                return Step(report=f"replacing the fleet's {describe(config)} with ours")
            if self.held_id == config.config_id:  # adopted earlier: held already
                self._problem = None
                return Step()
            return self._start_fetch(config)

    def _start_fetch(self, config: FleetConfig) -> Step:
        """Adopt the fleet's configuration: check it, then fetch what is not stored yet."""
        try:
            check_config(config)
        except ConfigError as exc:
            self._problem = f"cannot adopt the fleet's configuration: {exc}"
            return Step(report=self._problem)
        self._prune({config.profile.sha256, config.gate.sha256})
        self._problem = f"fetching the fleet's {describe(config)}"
        report = f"adopting the fleet's {describe(config)} from {config.controller_id}"
        step = self._advance(config)
        if step.report is not None:
            return step
        if step.ready is not None:
            report += " (stored here already)"
        return Step(report=report, ready=step.ready)

    def on_chunk(self, chunk: ConfigChunk, now: float) -> Step:
        """A chunk (retained, or just published): kept while its artefact is wanted, or while
        no configuration names it yet (a publisher sends the chunks before the configuration)."""
        if self.own is not None:
            return Step()  # we never adopt: our own, or none
        with self._lock:
            wanted = self._wanted()
            if wanted is not None and chunk.sha256 not in wanted:
                return Step()
            if wanted is None and self._loose_text() > MAX_LOOSE_TEXT:
                self._chunks.clear()
            self._chunks.setdefault(chunk.sha256, {})[chunk.index] = chunk
            if wanted is None or self.fleet is None:
                return Step()
            return self._advance(self.fleet, chunk.sha256)

    def _advance(self, config: FleetConfig, digest: str | None = None) -> Step:
        """The configuration ready to load once both artefacts are stored; a reassembly that
        fails is reported and its chunks dropped (a corrected copy may come)."""
        try:
            return Step(ready=self._try_ready(config))
        except (ConfigError, OSError) as exc:
            for dropped in (digest,) if digest else (config.profile.sha256, config.gate.sha256):
                self._chunks.pop(dropped, None)
            self._problem = f"cannot adopt the fleet's configuration: {exc}"
            return Step(report=self._problem)

    def _loose_text(self) -> int:
        return sum(len(c.data) for chunks in self._chunks.values() for c in chunks.values())

    def _wanted(self) -> set[str] | None:
        """The artefacts being fetched (None: none, or no configuration heard yet)."""
        fleet = self.fleet
        if fleet is None or self.own is not None or self.held_id == fleet.config_id:
            return None
        return {fleet.profile.sha256, fleet.gate.sha256}

    def _prune(self, keep: set[str]) -> None:
        for digest in list(self._chunks):
            if digest not in keep:
                del self._chunks[digest]

    def _artefact(self, artefact: ConfigArtefact) -> Path | None:
        """The artefact stored and verified, from earlier or from its chunks now (ConfigError
        when its chunks are all here and wrong); None while chunks are missing."""
        path = self._verified.get(artefact.sha256) or stored(self.folder, artefact)
        if path is not None:
            self._verified[artefact.sha256] = path
            return path
        chunks = self._chunks.get(artefact.sha256, {})
        if missing(chunks) != []:
            return None
        path = store(self.folder, artefact, reassemble(artefact, chunks))
        self._verified[artefact.sha256] = path
        self._chunks.pop(artefact.sha256, None)
        return path

    def _try_ready(self, config: FleetConfig) -> Ready | None:
        if self._loading == config.config_id:
            return None
        profile, gate = self._artefact(config.profile), self._artefact(config.gate)
        if profile is None or gate is None:
            return None
        self._loading = config.config_id
        self._problem = f"loading the fleet's {describe(config)}"
        return Ready(config, profile, gate)

    def tick(self, now: float) -> Step:
        """A fetch that has not completed within the timeout is reported, once; the fetch goes
        on (a chunk that comes later still completes it)."""
        with self._lock:
            fleet = self.fleet
            if fleet is None or self._wanted() is None or self._loading == fleet.config_id:
                return Step()
            if self._late_reported or now - self._heard_at < self.fetch_timeout_s:
                return Step()
            self._late_reported = True
            parts = [self._progress(a) for a in (fleet.profile, fleet.gate)]
            self._problem = (
                f"the fleet's {describe(fleet)} could not be fetched within "
                f"{self.fetch_timeout_s:g} s ({'; '.join(p for p in parts if p)}): standing by "
                "without it (a controller started with --profile/--gate --replace-config "
                "can publish a configuration again)"
            )
            return Step(report=self._problem)

    def _progress(self, artefact: ConfigArtefact) -> str | None:
        if artefact.sha256 in self._verified:
            return None
        chunks = self._chunks.get(artefact.sha256, {})
        gaps = missing(chunks)
        if gaps is None:
            return f"{artefact.name} {short(artefact.sha256)}: no chunk came"
        total = len(gaps) + len(chunks)
        return f"{artefact.name} {short(artefact.sha256)}: {len(gaps)} of {total} chunks missing"

    def installed(self, held: LocalConfig) -> bool:
        """Whether to put this configuration in force now: it is still the fleet's (then it is
        held, and the problem is over); False when the fleet moved on meanwhile."""
        with self._lock:
            if self._loading == held.config.config_id:
                self._loading = None
            if self.fleet is None or self.fleet.config_id != held.config.config_id:
                return False
            self.held, self._problem = held, None
            return True

    def install_failed(self, config: FleetConfig, why: str) -> str | None:
        """The fleet's configuration did not load: the problem (None: it is not the fleet's
        any more, so nothing to say)."""
        with self._lock:
            if self._loading == config.config_id:
                self._loading = None
            if self.fleet is None or self.fleet.config_id != config.config_id:
                return None
            self._problem = f"cannot adopt the fleet's {describe(config)}: {why}"
            return self._problem

    def cleared(self) -> None:
        """The fleet's configuration was cleared: what we hold is published when we lead."""
        with self._lock:
            self.fleet, self._published, self._loading = None, None, None
            self._problem = None

    def to_publish(self, leading: bool) -> LocalConfig | None:
        """The configuration to publish now: ours when we lead and the fleet has none (or the
        fleet lost it), or at once when told to replace the fleet's; None otherwise."""
        with self._lock:
            held = self.held
            if held is None or self._problem is not None:
                return None
            if self.fleet is not None and self.fleet.config_id == held.config.config_id:
                return None
            if self._published == held.config.config_id:
                return None  # sent: its echo is on its way
            replacing = self.replace and held is self.own
            if not (leading or replacing):
                return None
            self._published = held.config.config_id
            return held
