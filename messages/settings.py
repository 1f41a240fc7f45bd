"""Settings every process shares: which broker, which MQTT version, which fleet.

Values come, from weakest to strongest, from a TOML config file, ``MOE2_*`` environment
variables, and command-line flags. Unknown keys in a config file are an error.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from messages.base import TOPIC_LEVEL_PATTERN
from messages.bus import BrokerEndpoint, MqttVersion

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on JetPack 6
    import tomli as tomllib

S = TypeVar("S", bound="FleetSettings")


def cache_root() -> Path:
    """Where every moe2 process keeps what it can rebuild (prompt embeddings, re-quantised
    models): ``$MOE2_CACHE_DIR``, else ``$XDG_CACHE_HOME/moe2``, else ``~/.cache/moe2``."""
    explicit = os.environ.get("MOE2_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moe2"


class ConfigError(ValueError):
    """A config file, variable or flag that cannot be used; the message says which and why."""


class FleetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOE2_", extra="forbid", env_nested_delimiter="__")
    config_file: ClassVar[Path | None] = None

    broker: str = Field(
        default="mqtt://127.0.0.1:1883", description="mqtt://host:port, or mqtts://host:port (TLS)"
    )
    mqtt_version: MqttVersion = Field(default="5", description='"5" or "3.1.1"')
    fleet: str = Field(default="default", pattern=TOPIC_LEVEL_PATTERN)
    keepalive_s: int = Field(default=10, ge=2, le=3600, description="MQTT keepalive")
    session_expiry_s: int = Field(
        default=3600,
        ge=0,
        le=7 * 86400,
        description="How long the broker keeps a service's session (subscriptions and QoS 1 "
        "messages) while it is away; MQTT 3.1.1 brokers keep it until they choose",
    )
    reconnect_max_s: float = Field(
        default=2.0,
        ge=1,
        le=300,
        description="Longest wait between two tries of an unreachable broker (backoff from 1 s)",
    )
    username: str | None = Field(default=None, min_length=1, description="MQTT username")
    password: SecretStr | None = Field(default=None, description="MQTT password")
    password_file: Path | None = Field(
        default=None, description="A file holding the MQTT password (instead of password)"
    )
    ca_file: Path | None = Field(
        default=None, description="CA certificate for mqtts:// (default: the system's CAs)"
    )

    @model_validator(mode="after")
    def _password_once(self) -> FleetSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if self.password_file is not None and not self.password_file.is_file():
            raise ValueError(f"password_file {self.password_file} does not exist")
        if (self.password is not None or self.password_file is not None) and not self.username:
            raise ValueError("a password needs a username")
        return self

    @field_validator("broker")
    @classmethod
    def _broker_parses(cls, value: str) -> str:
        BrokerEndpoint.parse(value)
        return value

    @property
    def endpoint(self) -> BrokerEndpoint:
        if self.password_file is not None:
            password: str | None = self.password_file.read_text().strip("\r\n")
        else:
            password = self.password.get_secret_value() if self.password else None
        return replace(
            BrokerEndpoint.parse(self.broker, self.mqtt_version),
            username=self.username,
            password=password,
            ca_file=str(self.ca_file) if self.ca_file else None,
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.config_file))
        return tuple(sources)

    @classmethod
    def load(cls: type[S], config_file: Path | None = None, **flags: Any) -> S:
        """Settings from file, environment and flags (``None`` flags are not given)."""
        if config_file is not None:
            if not config_file.is_file():
                raise ConfigError(f"config file {config_file} does not exist")
            try:
                tomllib.loads(config_file.read_text())
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
        bound = type(cls.__name__, (cls,), {"config_file": config_file})
        given = {k: v for k, v in flags.items() if v is not None}
        try:
            return bound(**given)  # type: ignore[return-value]
        except ValidationError as exc:
            where = f" (config {config_file})" if config_file else ""
            lines = [
                f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors(include_url=False)
            ]
            raise ConfigError(f"invalid settings{where}:\n" + "\n".join(lines)) from None
