"""`twistd rpcd`: command-line options (generated from the settings) and makeService."""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from rpcd import config, reactor
from rpcd.adopt import ListenError  # [scale seam]
from rpcd.auth import AuthKeyError
from rpcd.config import ConfigError, Settings
from rpcd.logs import LogError
from rpcd.methods import LoadError

_REPEATABLE = {"listen", "methods"}


def _fail(message: str) -> None:
    """Stop start-up with one line on stderr and a non-zero exit."""
    raise SystemExit(f"rpcd: {message}")


class Options(usage.Options):
    """Options of `twistd rpcd`; every one is also a key of the TOML file given with --config."""

    synopsis = "[options]"
    longdesc = (
        'Serve JSON-RPC 2.0 (and the legacy {"in", "params"} envelope) over 4-byte '
        "length-prefixed frames, running each call in a gevent worker greenlet. "
        "The command line wins over the config file, which wins over the defaults. "
        "Under a supervisor (processes > 1) every limit applies to each worker process on its own."
    )
    optParameters = [["config", "c", None, "TOML file of settings (see conf/rpcd.toml)"]]
    optFlags: list = []

    def __init__(self) -> None:
        super().__init__()
        self.given: dict[str, Any] = {}

    def parseOptions(self, options: list[str] | None = None) -> None:
        # twistd would print the whole usage text above the error; one line says it better.
        try:
            super().parseOptions(options)
        except usage.UsageError as exc:
            _fail(f"{exc} (twistd rpcd --help lists the options)")

    def postOptions(self) -> None:
        try:
            settings = config.build(self["config"], self.given)
        except ConfigError as exc:
            _fail(str(exc))
        self.settings = settings
        _install_reactor(settings)
        # [scale seam] --processes N: a supervisor of N workers instead of one daemon.
        from rpcd import supervisor

        if supervisor.resolve_processes(settings.processes) > 1:
            args = supervisor.worker_args(self["config"], self.given)
            try:
                self.service = supervisor.Supervisor(settings, args)
                self.service.bind()  # here, before twistd daemonizes: errors on the terminal
            except ListenError as exc:
                _fail(str(exc))
            return
        from rpcd.service import RPCService

        try:
            self.service = RPCService(settings)
        except (LoadError, AuthKeyError, ListenError) as exc:
            _fail(str(exc))


def _install_reactor(settings: Settings) -> None:
    if reactor.installed():
        from twisted.internet import reactor as current

        if not isinstance(current, reactor.GeventReactor):
            _fail(
                f"rpcd runs on the gevent reactor, not {type(current).__name__}: drop the -r option"
            )
        return
    reactor.install(patch=settings.monkey_patch)


def _add_options() -> None:
    """One option per setting, with its default in the help text."""
    for f in config.option_fields():
        help_text = f.metadata["help"]
        default = f.default
        if f.metadata["flag"]:
            flag = f.metadata["flag"]
            setattr(
                Options, "opt_" + flag.replace("-", "_"), _flag_handler(f.name, flag, help_text)
            )
            continue
        if default is False:
            setattr(Options, "opt_" + f.name, _switch_handler(f.name, help_text))
            continue
        shown = ", ".join(default) if isinstance(default, tuple) else default
        doc = f"{help_text} [default: {shown if shown != '' else 'none'}]"
        setattr(Options, "opt_" + f.name, _value_handler(f.name, doc, f.name in _REPEATABLE))


def _value_handler(key: str, doc: str, repeatable: bool):
    def handler(self: Options, value: str) -> None:
        if repeatable:
            self.given.setdefault(key, []).append(value)
        else:
            self.given[key] = value

    handler.__doc__ = doc
    return handler


def _flag_handler(key: str, flag: str, help_text: str):
    def handler(self: Options) -> None:
        self.given[key] = False

    handler.__doc__ = f"turn off {help_text}"
    return handler


def _switch_handler(key: str, help_text: str):
    def handler(self: Options) -> None:
        self.given[key] = True

    handler.__doc__ = help_text
    return handler


_add_options()


def makeService(options: Options):
    try:
        options.service.start_log()
    except LogError as exc:
        _fail(str(exc))
    return options.service


__all__ = ["Options", "makeService"]
