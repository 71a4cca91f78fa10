"""Typed settings: defaults <- TOML file <- command line, each value checked clearly."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from rpcd.endpoint_syntax import split_endpoint as _split_endpoint


class ConfigError(Exception):
    """A setting is wrong; the message is one line naming the key, the value and what is allowed."""


def _endpoints(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise ValueError(
            "a non-empty list of Twisted endpoint strings, e.g. tcp:5354:interface=127.0.0.1"
        )
    for endpoint in value:
        problem = endpoint_problem(endpoint)
        if problem is not None:
            raise ConfigError(f"invalid endpoint in listen: {endpoint}: {problem}")
    return tuple(value)


# Where the port sits among an endpoint type's arguments, and its keyword.
_PORT_TYPES = {"tcp": "port", "tcp6": "port", "ssl": "port"}


def endpoint_problem(endpoint: str) -> str | None:
    """What is wrong with a listening endpoint string, in a few words, or None.

    Checks what can be checked before listening: a TCP or SSL port that is a number in
    range, an SSL listener's certificate file, a UNIX socket's directory. Endpoint types rpcd
    does not know (plugins) are left to Twisted.
    """
    kind, args, kwargs = _split_endpoint(endpoint)
    if kind == "haproxy":
        inner = endpoint.split(":", 1)[1] if ":" in endpoint else ""
        return endpoint_problem(inner) if inner else "no endpoint after haproxy:"
    if kind == "unix":
        path = kwargs.get("address", args[0] if args else "")
        if not path:
            return "no path"
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            return f"the directory {directory} does not exist"
        return None
    if kind not in _PORT_TYPES:
        return None
    port = kwargs.get("port", args[0] if args else None)
    if port is None:
        return "no port"
    if not port.isdigit() or int(port) > 65535:
        return f"the port must be a number from 0 to 65535, not {port!r}"
    if kind == "ssl":
        if "privateKey" not in kwargs and not os.path.exists("server.pem"):
            return (
                "an ssl: listener needs a certificate: privateKey=FILE (key and certificate "
                "in one PEM file) or privateKey=KEY:certKey=CERT"
            )
        for option in ("privateKey", "certKey"):
            path = kwargs.get(option)
            if path and not os.access(path, os.R_OK):
                return f"cannot read {option} {path}"
    return None


def _modules(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("a list of module names, pkg.mod or pkg.mod:obj")
    return tuple(value)


def _integer(low: int, high: int | None = None) -> Callable[[Any], int]:
    allowed = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"

    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(allowed)
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(allowed) from None
        if isinstance(value, float) and value != number:
            raise ValueError(allowed)
        if number < low or (high is not None and number > high):
            raise ValueError(allowed)
        return number

    parse.allowed = allowed
    return parse


def _seconds(allow_zero: bool) -> Callable[[Any], float]:
    allowed = "a number of seconds >= 0 (0 = off)" if allow_zero else "a number of seconds > 0"

    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(allowed)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(allowed) from None
        if (
            number != number
            or number < 0
            or (number == 0 and not allow_zero)
            or number == float("inf")
        ):
            raise ValueError(allowed)
        return number

    parse.allowed = allowed
    return parse


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return value

    parse.allowed = "one of " + ", ".join(choices)
    return parse


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "true",
        "yes",
        "on",
        "1",
        "false",
        "no",
        "off",
        "0",
    ):
        return value.lower() in ("true", "yes", "on", "1")
    raise ValueError("true or false")


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError("a file path")
    return value


def _optional_path(value: Any) -> str:
    if not isinstance(value, str) or "\0" in value:
        raise ValueError("a file path, or empty for none")
    return value


def _processes(value: Any) -> int | str:
    # "auto" stays as it is: rpcd.supervisor resolves it to the number of cores.
    if value == "auto":
        return value
    try:
        return _integer(1, 1024)(value)
    except ValueError:
        raise ValueError("an integer from 1 to 1024, or auto (one per core)") from None


_processes.allowed = "an integer from 1 to 1024, or auto (one per core)"  # for --help


def _optional_endpoint(value: Any) -> str:  # seam (helper "ops"), for the metrics setting
    if not isinstance(value, str) or "\0" in value:
        raise ValueError("a Twisted endpoint string such as tcp:9354:interface=127.0.0.1, or empty")
    return value


def _setting(
    default: Any,
    parse: Callable[[Any], Any],
    help: str,
    *,
    flag: str | None = None,
    unit: str = "",
) -> Any:
    """A settings field: its default, its parser/validator, its help text.

    `flag` names a command-line switch that turns a default-true setting off; `unit` is what
    an integer counts, for the help text (a time is always in seconds).
    """
    return field(
        default=default, metadata={"parse": parse, "help": help, "flag": flag, "unit": unit}
    )


def allowed(f: Any) -> str:
    """What a setting accepts, with its unit, for help texts: "an integer >= 1024, in bytes"."""
    text = getattr(f.metadata["parse"], "allowed", "")
    return f"{text}, in {f.metadata['unit']}" if text and f.metadata["unit"] else text


MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Every operator setting, with its default. Keys in the TOML file are these names."""

    listen: tuple[str, ...] = _setting(
        ("tcp:5354:interface=127.0.0.1",),
        _endpoints,
        "endpoint to listen on (any Twisted endpoint string); repeat for several",
    )
    methods: tuple[str, ...] = _setting(
        (), _modules, "module whose @method functions to serve (pkg.mod or pkg.mod:obj); repeatable"
    )
    max_connections: int = _setting(
        1024, _integer(1), "maximum open connections, all listeners together"
    )
    max_connections_per_peer: int = _setting(
        0, _integer(0), "maximum open connections per peer address (0 = no limit)"
    )
    max_frame_bytes: int = _setting(
        4 * MiB, _integer(16, 2**32 - 1), "largest frame body accepted", unit="bytes"
    )
    idle_timeout: float = _setting(
        300.0, _seconds(True), "close a connection that sends no frame for this long"
    )
    call_timeout: float = _setting(
        30.0, _seconds(False), "a call running longer is stopped and answered -32001"
    )
    queue_size: int = _setting(
        10000, _integer(0), "calls that may wait for a worker; more are refused with -32000"
    )
    workers: int = _setting(
        1000, _integer(1), "maximum concurrent calls (worker greenlets, started on demand)"
    )
    workers_prestart: int = _setting(
        0, _integer(0), "worker greenlets started at start-up (at most workers); more on demand"
    )
    max_streams: int = _setting(
        1000, _integer(1), "streams open at once (each outside the workers); more get -32000"
    )
    max_inflight: int = _setting(
        128, _integer(1), "calls pending per connection before it is no longer read"
    )
    max_batch: int = _setting(100, _integer(1), "largest JSON-RPC batch accepted")
    max_method_bytes: int = _setting(
        128, _integer(16, 2**20), "longest method name accepted, in UTF-8 bytes (-32600, cut short)"
    )
    max_reply_bytes: int = _setting(
        0,
        _integer(0, 2**32 - 1),
        "largest reply body sent, in bytes; a larger result is answered -32603 "
        "(0 = max_frame_bytes)",
    )
    shutdown_grace: float = _setting(
        10.0, _seconds(True), "on SIGTERM, how long in-flight calls may take to finish"
    )
    byteorder: str = _setting(
        "big", _choice("big", "little"), "byte order of the 4-byte length prefix"
    )
    monkey_patch: bool = _setting(
        True, _boolean, "gevent monkey-patching of the standard library", flag="no-monkey-patch"
    )
    log_file: str = _setting(
        "rpcd.log", _path, "rpcd's log file (relative to the working directory at start-up)"
    )
    log_rotate_bytes: int = _setting(
        10 * MiB,
        _integer(1024),
        "rotate the log file when it would grow past this size",
        unit="bytes",
    )
    log_backups: int = _setting(
        5, _integer(0, 1000), "rotated log files kept: FILE.1 (newest) ... FILE.N"
    )
    log_level: str = _setting(
        "info",
        _choice("debug", "info", "warn", "error", "critical"),
        "lowest level written to the log file",
    )
    log_format: str = _setting(
        "text", _choice("text", "json"), "log line format (json: one object per line)"
    )
    access_log: bool = _setting(
        True, _boolean, "a log line per call (peer, method, id, ms, outcome)", flag="no-access-log"
    )
    max_outbuf: int = _setting(
        MiB,
        _integer(1024),
        "unsent reply bytes per connection before rpcd stops reading from it",
        unit="bytes",
    )
    write_timeout: float = _setting(
        30.0, _seconds(False), "abort a connection whose replies stay over max_outbuf this long"
    )
    max_blocking_time: float = _setting(
        1.0, _seconds(True), "warn with its stack of a method blocking the loop this long"
    )
    auth_key_file: str = _setting(
        "",
        _optional_path,
        "file holding the shared key clients must prove with the rpc.auth handshake",
    )
    max_unauthenticated: int = _setting(
        64, _integer(1), "connections still in the auth handshake; past it the oldest is dropped"
    )
    auth_failure_delay: float = _setting(
        0.1,
        _seconds(True),
        "after a peer's failed handshake its next one is read this late, doubled per failure "
        "up to 10 s (0 = off)",
    )
    allow_public_unauthenticated: bool = _setting(
        False, _boolean, "let a listener on a non-loopback address start without --auth-key-file"
    )
    # -- scaling out (rpcd.supervisor, rpcd.proxy) --
    processes: int | str = _setting(
        1,
        _processes,
        "worker processes sharing the listeners, or auto (one per core); every other limit "
        "(connections, workers, queue, in-flight) applies to each process on its own",
    )
    heartbeat_timeout: float = _setting(
        30.0,
        _seconds(False),
        "processes > 1: replace a worker whose hub has not beaten for this long",
    )
    worker_start_timeout: float = _setting(
        30.0, _seconds(False), "processes > 1: how long a new worker may take to start listening"
    )
    restart_backoff_max: float = _setting(
        30.0, _seconds(False), "processes > 1: longest wait before restarting a crashed worker"
    )
    metrics_scrape_timeout: float = _setting(
        2.0,
        _seconds(False),
        "processes > 1: how long the supervisor waits for each worker's metrics",
    )
    proxy_header_timeout: float = _setting(
        10.0,
        _seconds(False),
        "haproxy: listeners: drop a connection whose PROXY header takes longer",
    )
    proxy_max_header_bytes: int = _setting(
        4096,
        _integer(232, 65551),
        "haproxy: listeners: largest PROXY header accepted",
        unit="bytes",
    )

    # -- seam (helper "ops"): the Prometheus listener -------------------------------------
    metrics: str = _setting(
        "",
        _optional_endpoint,
        "endpoint serving Prometheus metrics at /metrics, e.g. tcp:9354:interface=127.0.0.1 "
        "(empty = off)",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _check(f.name, getattr(self, f.name)))
        if self.workers_prestart > self.workers:
            raise ConfigError(
                f"invalid value for workers_prestart: {self.workers_prestart} "
                f"(allowed: at most workers, {self.workers})"
            )


_FIELDS = {f.name: f for f in fields(Settings)}
# A switch such as --no-monkey-patch is also accepted as its own key: no_monkey_patch = true.
_NEGATED = {
    f.metadata["flag"].replace("-", "_"): f.name for f in fields(Settings) if f.metadata["flag"]
}


def _check(key: str, value: Any) -> Any:
    try:
        return _FIELDS[key].metadata["parse"](value)
    except ValueError as exc:
        raise ConfigError(f"invalid value for {key}: {value!r} (allowed: {exc})") from None


def option_fields() -> list:
    """The settings fields, for building command-line options from them."""
    return list(fields(Settings))


def _normalise(source: str, raw: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in _NEGATED:
            values[_NEGATED[name]] = not _check(_NEGATED[name], value)
        elif name in _FIELDS:
            values[name] = _check(name, value)
        else:
            allowed = ", ".join(sorted(_FIELDS))
            raise ConfigError(f"unknown setting {key!r} in {source} (allowed: {allowed})")
    return values


def load_file(path: str) -> dict[str, Any]:
    """Read and check the settings in a TOML file (an [rpcd] table, or top-level keys)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    if isinstance(data.get("rpcd"), dict):
        data = data["rpcd"]
    return _normalise(f"config file {path}", data)


def build(config_file: str | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Defaults, then the file, then the command line: the last word wins."""
    values = load_file(config_file) if config_file else {}
    values.update(_normalise("command line", overrides or {}))
    settings = replace(Settings(), **values)
    _check_exposure(settings)
    return settings


def _check_exposure(settings: Settings) -> None:
    """Refuse a listener other hosts can reach unless clients must authenticate."""
    if settings.auth_key_file or settings.allow_public_unauthenticated:
        return
    for endpoint in settings.listen:
        where = public_address(endpoint)
        if where is not None:
            raise ConfigError(
                f"refusing to listen on {endpoint} ({where}) without authentication: "
                "bind it to 127.0.0.1 or ::1, set auth_key_file (--auth-key-file), or set "
                "allow_public_unauthenticated (--allow-public-unauthenticated)"
            )


# Where the interface sits among an endpoint type's positional arguments (after the port).
_INTERFACE_POSITION = {"tcp": 1, "tcp6": 2, "ssl": 4}


def public_address(endpoint: str) -> str | None:
    """Why a listening endpoint string is reachable from other hosts, or None if it is local only.

    TCP and SSL listeners are local when their interface is a loopback address; UNIX sockets
    are local; a systemd-passed socket is local if it is a UNIX or loopback one; anything rpcd
    cannot read (a plugin endpoint type) counts as public.
    """
    kind, args, kwargs = _split_endpoint(endpoint)
    if kind == "haproxy":
        return public_address(endpoint.split(":", 1)[1]) if ":" in endpoint else "no address"
    if kind == "unix":
        return None
    if kind == "systemd":
        if kwargs.get("domain", "").upper() == "UNIX":
            return None
        from rpcd.adopt import systemd_public_address  # judged by the passed socket itself

        return systemd_public_address(endpoint)
    if kind not in _INTERFACE_POSITION:
        return f"an endpoint type rpcd cannot check, {kind!r}"
    position = _INTERFACE_POSITION[kind]
    interface = kwargs.get("interface", args[position] if len(args) > position else "")
    if interface in ("", "0.0.0.0", "::"):
        return "all interfaces"
    if interface.lower() == "localhost" or _is_loopback(interface):
        return None
    return f"non-loopback address {interface}"


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback
