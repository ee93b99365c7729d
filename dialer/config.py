"""Configuration: built-in defaults < dialer.toml < DIALER_* environment (nested with __).

The file comes from ``--config PATH``, else ``DIALER_CONFIG``, else ``./dialer.toml``; a
missing default file means built-in defaults, a missing named file is an error. Unknown
keys are refused, so a typo does not silently fall back to a default.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from billing.errors import BillingError
from billing.tariff import DEFAULT_INCREMENT_SECONDS, Tariff
from dialer.errors import ConfigError as ConfigError
from sip.protocol import check_sources, check_user_agent
from sip.uri import check_host

DEFAULT_CONFIG_FILE = Path("dialer.toml")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseConfig(Section):
    url: str = "sqlite:///dialer.db"


class SipConfig(Section):
    bind_address: str = "127.0.0.1"
    port: int = Field(default=5060, ge=0, le=65535)  # 0: any free port per line
    lines: int = Field(default=4, ge=1, le=256)
    rtp_port_base: int = Field(default=20000, ge=1024, le=65000)
    # SIP requests are taken only from the trunks' (and their proxies') addresses, agents
    # being dialled, and these IPv4 addresses/networks/host names: the rest is dropped
    # unanswered. ["0.0.0.0/0"] takes them from anyone (not recommended).
    allow_from: list[str] = Field(default_factory=list, max_length=256)
    user_agent: str = Field(default="campaign-dialer", min_length=1, max_length=64)
    campaign_header: bool = False  # send X-Campaign: <name> with every INVITE

    @field_validator("bind_address")
    @classmethod
    def _address(cls, value: str) -> str:
        # it goes into the lines' SIP transports and their Contact/From URIs
        return check_host(value, "an address")

    # the lines' own rules, so that a bad value stops `dialer worker` at its config
    _sources = field_validator("allow_from")(classmethod(lambda cls, v: check_sources(v)))
    _agent = field_validator("user_agent")(classmethod(lambda cls, v: check_user_agent(v)))


class MqttConfig(Section):
    url: str | None = None  # mqtt://host:1883 or mqtts://host:8883; none: no MQTT
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    ca_file: str | None = None  # CA bundle for TLS (default: the system's)
    buffer_events: int = Field(default=10_000, ge=100, le=10_000_000)
    #: the largest MQTT packet the worker takes (announced in CONNECT; bigger ones are
    #: dropped by the broker, or end the connection before their body is read)
    max_packet_bytes: int = Field(default=64 * 1024, ge=1024, le=268_435_455)


class ScriptsConfig(Section):
    #: The folder a script's `say: {wav: NAME}` files are read from at `campaign create`
    #: (NAME relative to it; nothing outside it). None: the script file's own folder.
    prompts_dir: str | None = Field(default=None, min_length=1, max_length=4096)


class WorkerConfig(Section):
    #: A stable id (one per worker): after a crash the restarted worker settles its
    #: previous run's calls at once. None: ``<host name>:<SIP port>`` (stable per host and
    #: port; a random id per run when the SIP port is 0), see dialer.liveness.
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    #: A worker whose heartbeat (every dead_after / 6 s, at most 5 s) has not moved for
    #: this long is dead: any other worker settles its calls (dialer.liveness)
    dead_after: float = Field(default=30.0, ge=3.0, le=3600.0)


class OpsConfig(Section):
    """GET /metrics (Prometheus) and /health of a running worker; no port: off."""

    bind_address: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=0, le=65535)


class BillingConfig(Section):
    increment_seconds: int = Field(default=DEFAULT_INCREMENT_SECONDS, ge=1, le=3600)
    period: Literal["month"] = "month"
    #: {"platform": {"telephony": ["bot", "agent"], ...}, "customer": {...}}; omitted = default
    tariff: dict[str, dict[str, list[str]]] = Field(default_factory=dict)

    @field_validator("tariff")
    @classmethod
    def _tariff_is_valid(
        cls, value: dict[str, dict[str, list[str]]]
    ) -> dict[str, dict[str, list[str]]]:
        try:
            Tariff.from_table(value)
        except BillingError as exc:
            raise ValueError(str(exc)) from None
        return value

    def make_tariff(self) -> Tariff:
        return Tariff.from_table(self.tariff, increment_seconds=self.increment_seconds)


class LoggingConfig(Section):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DIALER_", env_nested_delimiter="__", extra="forbid"
    )

    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    sip: SipConfig = Field(default_factory=SipConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    ops: OpsConfig = Field(default_factory=OpsConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    scripts: ScriptsConfig = Field(default_factory=ScriptsConfig)
    billing: BillingConfig = Field(default_factory=BillingConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first, then the file (passed in as init kwargs by load_settings).
        return (env_settings, init_settings)


def config_path(explicit: str | os.PathLike[str] | None) -> tuple[Path, bool]:
    """(path, named): named paths must exist; the default one may be absent."""
    if explicit:
        return Path(explicit), True
    from_env = os.environ.get("DIALER_CONFIG")
    if from_env:
        return Path(from_env), True
    return DEFAULT_CONFIG_FILE, False


def load_settings(explicit: str | os.PathLike[str] | None = None) -> Settings:
    path, named = config_path(explicit)
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path}: cannot be read: {exc}") from None
    elif named:
        raise ConfigError(f"config file {path} does not exist")
    try:
        return Settings(**data)
    except SettingsError:
        # e.g. a section given as malformed JSON in DIALER_MQTT: name it, never echo it
        names = sorted(k for k in os.environ if k.startswith("DIALER_") and k != "DIALER_CONFIG")
        raise ConfigError(
            f"environment: cannot parse {', '.join(names) or 'a DIALER_ variable'}: "
            "a section variable must hold a JSON object"
        ) from None
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(p) for p in error["loc"]]
        where = ".".join(loc)
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{_source_of(loc, path)}: {where}: {error['msg']}{more}") from None


def _source_of(loc: list[str], path: Path) -> str:
    """Where a bad value came from: an environment variable wins over the file."""
    for depth in range(len(loc), 0, -1):
        name = "DIALER_" + "__".join(loc[:depth]).upper()
        if name in os.environ:
            return f"environment {name}"
    return f"config file {path}" if path.exists() else "configuration"
