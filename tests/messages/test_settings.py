"""FleetSettings/AgentSettings: TOML file < MOE2_* environment < flags, and clear ConfigErrors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.settings import AgentSettings, ExpertConfig
from controller.settings import ControllerSettings
from messages.bus import BrokerEndpoint, BrokerUrlError
from messages.settings import ConfigError, FleetSettings, cache_root


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MOE2_* variable of the calling shell leaks in; no stray .env is read."""
    for key in list(os.environ):
        if key.upper().startswith("MOE2_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "moe2.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_file_env_or_flags() -> None:
    settings = FleetSettings.load()
    assert settings.broker == "mqtt://127.0.0.1:1883"
    assert settings.mqtt_version == "5"
    assert settings.fleet == "default"
    assert settings.keepalive_s == 10
    assert settings.endpoint == BrokerEndpoint("127.0.0.1", 1883, "5")


def test_file_values_apply(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'broker = "mqtt://broker.lan:1884"\nmqtt_version = "3.1.1"\n'
        'fleet = "lab"\nkeepalive_s = 30\n',
    )
    settings = FleetSettings.load(path)
    assert settings.fleet == "lab"
    assert settings.keepalive_s == 30
    assert settings.endpoint == BrokerEndpoint("broker.lan", 1884, "3.1.1")


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'fleet = "from-file"\nkeepalive_s = 30\n')
    monkeypatch.setenv("MOE2_FLEET", "from-env")
    settings = FleetSettings.load(path)
    assert settings.fleet == "from-env"
    assert settings.keepalive_s == 30  # not set in the environment: the file still applies


def test_env_applies_without_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOE2_FLEET", "env-fleet")
    monkeypatch.setenv("MOE2_KEEPALIVE_S", "25")
    monkeypatch.setenv("MOE2_BROKER", "mqtt://10.0.0.2")
    settings = FleetSettings.load()
    assert settings.fleet == "env-fleet"
    assert settings.keepalive_s == 25
    assert settings.endpoint.port == 1883


def test_flags_override_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'fleet = "from-file"\nbroker = "mqtt://file-host"\n')
    monkeypatch.setenv("MOE2_FLEET", "from-env")
    settings = FleetSettings.load(path, fleet="from-flag")
    assert settings.fleet == "from-flag"
    assert settings.endpoint.host == "file-host"


def test_none_flags_count_as_not_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'fleet = "from-file"\n')
    assert FleetSettings.load(path, fleet=None).fleet == "from-file"
    monkeypatch.setenv("MOE2_FLEET", "from-env")
    assert FleetSettings.load(path, fleet=None, broker=None).fleet == "from-env"


def test_loading_with_a_file_does_not_leak_into_later_loads(tmp_path: Path) -> None:
    path = write(tmp_path, 'fleet = "lab"\n')
    assert FleetSettings.load(path).fleet == "lab"
    assert FleetSettings.load().fleet == "default"
    assert FleetSettings.config_file is None


def test_unknown_key_in_file_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'fleet = "lab"\nbrokr = "mqtt://x"\n')
    with pytest.raises(ConfigError) as info:
        FleetSettings.load(path)
    message = str(info.value)
    assert "brokr" in message
    assert str(path) in message
    assert "Extra inputs are not permitted" in message


def test_key_of_another_process_is_unknown_to_fleet_settings(tmp_path: Path) -> None:
    path = write(tmp_path, "silence_factor = 4.0\n")
    assert ControllerSettings.load(path).silence_factor == 4.0
    with pytest.raises(ConfigError, match="silence_factor"):
        AgentSettings.load(path)


def test_invalid_value_in_file_names_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "keepalive_s = 1\n")
    with pytest.raises(ConfigError, match=r"keepalive_s: Input should be greater than or equal"):
        FleetSettings.load(path)


def test_invalid_fleet_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOE2_FLEET", "a/b")
    with pytest.raises(ConfigError, match="fleet"):
        FleetSettings.load()


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, 'fleet = "lab\n')
    with pytest.raises(ConfigError, match="is not valid TOML"):
        FleetSettings.load(path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'fleet = "\xff"\n')
    with pytest.raises(ConfigError, match="is not valid TOML"):
        FleetSettings.load(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml does not exist"):
        FleetSettings.load(path)


def test_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        FleetSettings.load(tmp_path)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://x", "scheme must be mqtt://"),
        ("ws://x:8883", "scheme must be mqtt:// or mqtts://"),
        ("mqtt://:99999", "has no host"),
        ("mqtt://:1883", "has no host"),
        ("mqtt://host:99999", "has an invalid port"),
        ("mqtt://host:port", "has an invalid port"),
    ],
)
def test_bad_broker_url(url: str, why: str, tmp_path: Path) -> None:
    with pytest.raises(BrokerUrlError, match=why):
        BrokerEndpoint.parse(url)
    with pytest.raises(ConfigError, match=why):
        FleetSettings.load(broker=url)
    path = write(tmp_path, f'broker = "{url}"\n')
    with pytest.raises(ConfigError, match=r"broker: "):
        FleetSettings.load(path)


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("mqtt://broker.lan:1884", "broker.lan", 1884),
        ("mqtt://broker.lan", "broker.lan", 1883),
        ("broker.lan:1999", "broker.lan", 1999),
        ("10.0.0.5", "10.0.0.5", 1883),
    ],
)
def test_good_broker_url(url: str, host: str, port: int) -> None:
    endpoint = BrokerEndpoint.parse(url, "3.1.1")
    assert (endpoint.host, endpoint.port, endpoint.mqtt_version) == (host, port, "3.1.1")
    assert endpoint.url == f"mqtt://{host}:{port}"


def test_bad_mqtt_version_flag() -> None:
    with pytest.raises(ConfigError, match="mqtt_version"):
        FleetSettings.load(mqtt_version="4")


# -- AgentSettings ----------------------------------------------------------------------------


def test_agent_experts_from_toml_tables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
agent_id = "orin-1"
fleet = "lab"
telemetry_interval_s = 0.5

[[experts]]
id = "smol"
model = "smollm2-135m"
n_ctx = 1024
n_gpu_layers = -1

[[experts]]
id = "gemma"
model = "gemma3-270m"
chat_template = false
stop = ["\\n"]
""",
    )
    settings = AgentSettings.load(path)
    assert isinstance(settings, AgentSettings)
    assert settings.agent_id == "orin-1"
    assert settings.fleet == "lab"
    assert settings.telemetry_interval_s == 0.5
    assert [(e.id, e.model) for e in settings.experts] == [
        ("smol", "smollm2-135m"),
        ("gemma", "gemma3-270m"),
    ]
    smol, gemma = settings.experts
    assert (smol.n_ctx, smol.n_gpu_layers, smol.chat_template) == (1024, -1, True)
    assert (gemma.n_ctx, gemma.chat_template, gemma.stop) == (2048, False, ["\n"])
    assert smol.backend == "llama.cpp"


def test_agent_experts_from_flag_strings() -> None:
    settings = AgentSettings.load(
        agent_id="pi-5", experts=["smol=smollm2-135m", "local=/models/x.gguf"]
    )
    assert settings.experts == [
        ExpertConfig(id="smol", model="smollm2-135m"),
        ExpertConfig(id="local", model="/models/x.gguf"),
    ]


def test_agent_experts_flags_replace_file_experts(tmp_path: Path) -> None:
    path = write(tmp_path, '[[experts]]\nid = "smol"\nmodel = "smollm2-135m"\n')
    settings = AgentSettings.load(path, experts=["gemma=gemma3-270m"])
    assert [e.id for e in settings.experts] == ["gemma"]


def test_agent_experts_from_env_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOE2_EXPERTS", '["smol=smollm2-135m", {"id": "g", "model": "gemma3-270m"}]')
    settings = AgentSettings.load()
    assert [(e.id, e.model) for e in settings.experts] == [
        ("smol", "smollm2-135m"),
        ("g", "gemma3-270m"),
    ]


def test_duplicate_expert_ids_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expert ids must be unique; repeated: smol"):
        AgentSettings.load(experts=["smol=smollm2-135m", "gemma=gemma3-270m", "smol=x.gguf"])
    path = write(
        tmp_path,
        '[[experts]]\nid = "a"\nmodel = "m1"\n[[experts]]\nid = "b"\nmodel = "m2"\n'
        '[[experts]]\nid = "b"\nmodel = "m3"\n[[experts]]\nid = "a"\nmodel = "m4"\n',
    )
    with pytest.raises(ConfigError, match="repeated: a, b"):
        AgentSettings.load(path)


def test_unknown_key_in_expert_table(tmp_path: Path) -> None:
    path = write(tmp_path, '[[experts]]\nid = "smol"\nmodel = "smollm2-135m"\nn_ctxx = 512\n')
    with pytest.raises(ConfigError, match=r"experts\.0\.n_ctxx"):
        AgentSettings.load(path)


def test_invalid_expert_id() -> None:
    with pytest.raises(ConfigError, match=r"experts\.0\.id"):
        AgentSettings.load(experts=[{"id": "a/b", "model": "smollm2-135m"}])


def test_bad_expert_flag_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="expected ID=MODEL"):
        AgentSettings.load(experts=["smollm2-135m"])


@pytest.mark.parametrize("spec", ["bad", "=smollm2-135m", "smol=", ""])
def test_parse_flag_rejects_malformed_specs(spec: str) -> None:
    with pytest.raises(ValueError) as info:
        ExpertConfig.parse_flag(spec)
    message = str(info.value)
    assert f"--expert {spec!r}" in message
    assert "expected ID=MODEL" in message
    assert "e.g. smol=smollm2-135m" in message


def test_parse_flag_splits_on_the_first_equals_sign() -> None:
    expert = ExpertConfig.parse_flag("smol=/models/a=b.gguf")
    assert (expert.id, expert.model) == ("smol", "/models/a=b.gguf")
    assert expert.n_ctx == 2048


def test_parse_flag_validates_the_id() -> None:
    with pytest.raises(ValueError, match="id"):
        ExpertConfig.parse_flag("a b=smollm2-135m")


def test_agent_id_default_is_a_valid_topic_level() -> None:
    settings = AgentSettings.load()
    assert settings.agent_id
    assert "/" not in settings.agent_id
    assert settings.experts == []


def test_mqtts_url_with_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert BrokerEndpoint.parse("mqtts://broker.lan").port == 8883
    assert BrokerEndpoint.parse("mqtts://broker.lan").tls
    assert not BrokerEndpoint.parse("mqtt://broker.lan").tls
    config = tmp_path / "c.toml"
    config.write_text(
        'broker = "mqtts://broker.lan:9883"\nusername = "a1"\nca_file = "/etc/moe2/ca.crt"\n'
    )
    monkeypatch.setenv("MOE2_PASSWORD", "s3cret")
    endpoint = FleetSettings.load(config).endpoint
    assert (endpoint.host, endpoint.port, endpoint.tls) == ("broker.lan", 9883, True)
    assert (endpoint.username, endpoint.password) == ("a1", "s3cret")
    assert endpoint.ca_file == "/etc/moe2/ca.crt"
    assert endpoint.url == "mqtts://broker.lan:9883"
    assert "s3cret" not in repr(endpoint)


def test_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    settings = FleetSettings.load(username="c1", password_file=secret)
    assert settings.endpoint.password == "from-file"
    with pytest.raises(ConfigError, match="not both"):
        FleetSettings.load(username="c1", password_file=secret, password="x")
    with pytest.raises(ConfigError, match="needs a username"):
        FleetSettings.load(password="x")


def test_one_cache_root_for_every_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Embeddings (controller) and re-quantised models (agent) live under one root."""
    from agent.requantize import cache_dir
    from controller.gate.cache import CachedEncoder

    monkeypatch.delenv("MOE2_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "moe2"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "moe2"
    monkeypatch.setenv("MOE2_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    assert cache_dir() == tmp_path / "mine" / "models"
    assert CachedEncoder(object()).path.parent == tmp_path / "mine"  # type: ignore[arg-type]
