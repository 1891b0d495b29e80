"""Settings: one validated object, built once and passed down explicitly.

Sources, highest precedence first: keyword arguments, ``PROVGRAPH_*`` environment
variables, a TOML file (``PROVGRAPH_CONFIG`` or ``./provgraph.toml``), defaults.
Invalid settings raise :class:`~provgraph.errors.ConfigError` naming the field and
what it accepts, when the settings are built (at start, never mid-run).
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError

__all__ = ["Settings", "default_data_dir", "load_settings"]

TransportName = Literal["auto", "store", "journal", "nats", "memory", "none"]
_FACILITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "provgraph"


def _default_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return "unknown"


class Settings(BaseSettings):
    """All of provgraph's configuration (env prefix ``PROVGRAPH_``)."""

    model_config = SettingsConfigDict(
        env_prefix="PROVGRAPH_", extra="forbid", validate_default=True, frozen=True
    )

    facility: str = Field(
        default="local",
        description="Name of this facility (letters, digits, '-' and '_'); part of every IRI.",
    )
    base_iri: str | None = Field(
        default=None,
        description="Base of every IRI this facility mints; default urn:provgraph:{facility}/",
    )
    campaign: str | None = Field(default=None, description="Campaign of runs that name none")
    data_dir: Path = Field(default_factory=default_data_dir)
    store_path: Path | None = Field(default=None, description="On-disk store; default data_dir/store")
    store_url: str | None = Field(
        default=None,
        description="Oxigraph server (http://host:7878) or SPARQL 1.1 store to use instead of the on-disk store",
    )
    store_token: str | None = Field(default=None, description="bearer token for store_url")
    transport: TransportName = "auto"
    nats_url: str | None = Field(default=None, description="nats://host:4222; unset = no NATS")
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    nats_nkey_seed: str | None = None
    nats_creds: Path | None = None
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    nats_stream: str = "PROVGRAPH"
    nats_consumer: str = "provgraph-integrator"
    nats_max_inflight: int = Field(default=64, ge=1, description="batches a publisher awaits PubAcks for at once")
    nats_ack_wait: float = Field(default=30.0, ge=1.0, description="seconds before JetStream redelivers "
                                 "a message the integrator did not ack (its commits in progress extend it)")
    integrator_fetch: int = Field(default=256, ge=1, description="messages the integrator fetches per commit")
    integrator_linger: float = Field(
        default=1.5, ge=0, le=10, description="seconds at most the integrator keeps gathering messages after its "
        "previous fetch while it holds fewer than integrator_commit_triples statements: a steady trickle is loaded "
        "in a few big bulk loads instead of many small ones, each of which costs new index files and a compaction; "
        "a message after a quiet spell is committed at once")
    integrator_commit_triples: int = Field(
        default=10_000, ge=1, description="statements in hand at which the integrator commits without lingering "
        "further: a fast stream is committed as soon as a load is big enough to be worth its fixed cost")
    integrator_commit: Literal["bulk", "transaction"] = Field(
        default="bulk", description="bulk: Oxigraph bulk loader per fetch (fast; acked after it returns); "
        "transaction: one ACID transaction per fetch")
    integrator_nice: int = Field(
        default=10, ge=0, le=19, description="scheduling niceness `provgraph serve` takes after starting "
        "nats-server: on a shared machine the science runs first, the integrator catches up when it can "
        "(0 = same priority)")
    journal_max_bytes: int = Field(default=1 << 30, ge=1 << 16)
    queue_size: int = Field(default=100_000, ge=16)
    batch_size: int = Field(default=2_000, ge=1)
    flush_interval: float = Field(default=0.5, gt=0, le=3600)
    publish_timeout: float = Field(default=5.0, gt=0)
    hash_files: bool = True
    hash_min_bytes: int = Field(default=32, ge=1,
                                description="bytes-like values this long or longer are content-hashed")
    hash_min_chars: int = Field(default=4096, ge=1, description="strings this long or longer are content-hashed")
    hash_dir_max_files: int = Field(default=10_000, ge=0)
    value_max_chars: int = Field(default=512, ge=16)
    max_yielded: int = Field(default=1_000, ge=0, description="items of a generator task recorded")
    telemetry: Literal["off", "task", "sampler"] = "off"
    telemetry_interval: float = Field(default=1.0, gt=0)
    user: str = Field(default_factory=_default_user)
    hostname: str = Field(default_factory=socket.gethostname)
    query_timeout: float = Field(default=30.0, gt=0)
    query_max_results: int = Field(default=100_000, ge=1)
    query_workers: int = Field(default=4, ge=1, description="SPARQL endpoint: queries run at once (worker threads)")
    http_host: str = Field(default="127.0.0.1", description="address the SPARQL endpoint binds")
    http_port: int = Field(default=7879, ge=0, le=65535, description="port of the SPARQL endpoint (0 = any)")
    update_token: str | None = Field(
        default=None, description="bearer token that enables SPARQL Update on the endpoint; unset = read-only")
    service_allowlist: list[str] = Field(
        default_factory=list, description="endpoint IRIs a query may reach with SERVICE (default: none)")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS (default: none)")

    @field_validator("facility")
    @classmethod
    def _facility_ok(cls, v: str) -> str:
        if not _FACILITY.match(v):
            raise ValueError("must be 1-63 letters, digits, '-' or '_' (starting alphanumeric)")
        return v

    @field_validator("base_iri")
    @classmethod
    def _base_ok(cls, v: str | None) -> str | None:
        if v is not None and (not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", v) or v[-1] not in "/#:"
                              or re.search(r"[\s<>\"{}|\\^`]", v)):
            raise ValueError("must be an absolute IRI ending in '/', '#' or ':' (e.g. https://lab.example/prov/)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.batch_size > self.queue_size:
            raise ValueError("batch_size must be less than or equal to queue_size")
        if self.transport == "nats" and not self.nats_url:
            raise ValueError("transport='nats' needs nats_url (PROVGRAPH_NATS_URL)")
        if self.integrator_linger >= self.nats_ack_wait:
            raise ValueError("integrator_linger must be shorter than nats_ack_wait: messages held while the "
                             "integrator lingers would be redelivered")
        return self

    @property
    def iri_base(self) -> str:
        return self.base_iri or f"urn:provgraph:{self.facility}/"

    @property
    def store_dir(self) -> Path:
        return self.store_path or (self.data_dir / "store")

    @property
    def journal_dir(self) -> Path:
        return self.data_dir / "journal"

    def resolved_transport(self) -> str:
        if self.transport != "auto":
            return self.transport
        return "nats" if self.nats_url else "store"


def _toml_values(path: Path | None) -> dict[str, Any]:
    if path is None:
        env = os.environ.get("PROVGRAPH_CONFIG")
        path = Path(env) if env else Path("provgraph.toml")
        if not env and not path.exists():
            return {}
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    section = data.get("provgraph", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [provgraph] must be a table")
    return section


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = err["msg"]
        ctx = err.get("ctx") or {}
        if "expected" in ctx:
            msg = f"{msg} (allowed: {ctx['expected']})"
        lines.append(f"  {field}: {msg} (got {err.get('input')!r})")
    return "invalid provgraph settings:\n" + "\n".join(lines)


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build and validate :class:`Settings` from overrides, environment and TOML file."""
    file_values = _toml_values(Path(config_file) if config_file else None)
    env_keys = {k[len("PROVGRAPH_"):].lower() for k in os.environ if k.startswith("PROVGRAPH_")}
    init = {k: v for k, v in file_values.items() if k not in env_keys}
    init.update(overrides)
    try:
        return Settings(**init)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None
