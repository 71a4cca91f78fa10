"""`twistd rpcd`: the command-line options (one per setting) and makeService."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

import rpcd
from rpcd import config, gcpolicy, mallocpolicy, reactor
from rpcd.config import ConfigError, Settings


def _fail(message: str) -> None:
    """Stop start-up with one line on stderr and a non-zero exit."""
    raise SystemExit(f"rpcd: {message}")


def _shown(default: Any) -> str:
    shown = ", ".join(default) if isinstance(default, tuple) else str(default)
    return shown if shown != "" else "none"


def _option(f: Any) -> str:
    return f.name.replace("_", "-")


# Settings given more than once on the command line add up instead of the last one winning.
_REPEATABLE = ("listen", "methods")
_FIELDS = config.option_fields()
# A setting that is on by default is turned off by its flag; one off by default is a switch.
_FLAGS = [
    [f.metadata["flag"], None, f"turn off {f.metadata['help']}"]
    for f in _FIELDS
    if f.metadata["flag"]
]
_SWITCHES = [[_option(f), None, f.metadata["help"]] for f in _FIELDS if f.default is False]


# Values have no default here: the config file sits between the defaults and the command line,
# so an option left out must stay unset. Its default is in the help text instead.
def _help(f: Any) -> str:
    """The setting's help, what it accepts (units, minimums, choices) and its default."""
    accepts = config.allowed(f)
    accepts = f"; {accepts}" if accepts else ""
    return f"{f.metadata['help']}{accepts} [default: {_shown(f.default)}]"


_VALUES = [
    [_option(f), None, None, _help(f)]
    for f in _FIELDS
    if not f.metadata["flag"] and f.default is not False and f.name not in _REPEATABLE
]
_BY_NAME = {f.name: f for f in _FIELDS}


class Options(usage.Options):
    """Options of `twistd rpcd`; every one is also a key of the TOML file given with --config."""

    synopsis = "[options]"
    longdesc = (
        'Serve JSON-RPC 2.0 (and the legacy {"in", "params"} envelope) over 4-byte '
        "length-prefixed frames, running each call in a gevent worker greenlet. "
        "The command line wins over the config file, which wins over the defaults. "
        "Under a supervisor (processes > 1) every limit applies to each worker process on its own."
    )
    optParameters = [["config", "c", None, "TOML file of settings (see conf/rpcd.toml)"], *_VALUES]
    optFlags = [*_FLAGS, *_SWITCHES]

    def __init__(self) -> None:
        super().__init__()
        self.repeated: dict[str, list[str]] = {}

    def opt_listen(self, value: str) -> None:
        self.repeated.setdefault("listen", []).append(value)

    def opt_methods(self, value: str) -> None:
        self.repeated.setdefault("methods", []).append(value)

    opt_listen.__doc__ = _help(_BY_NAME["listen"])
    opt_methods.__doc__ = _help(_BY_NAME["methods"])

    # -- seam (helper "ops"): what the installed package says about itself ------------------
    def opt_version(self) -> None:
        """Print rpcd's version (and Twisted's, gevent's, Python's), then exit"""
        print(rpcd.version_text("rpcd"))
        sys.exit(0)

    def opt_print_config(self) -> None:
        """Print the documented config file, every key at its default, then exit"""
        sys.stdout.write(rpcd.default_config())
        sys.exit(0)

    # -- end of seam -------------------------------------------------------------------------

    def parseOptions(self, options: list[str] | None = None) -> None:
        # twistd would print the whole usage text above the error; one line says it better.
        try:
            super().parseOptions(options)
        except usage.UsageError as exc:
            _fail(f"{exc} (twistd rpcd --help lists the options)")

    def given(self) -> dict[str, Any]:
        """The settings given on the command line, by setting name."""
        given: dict[str, Any] = dict(self.repeated)
        for f in _FIELDS:
            if f.metadata["flag"]:
                if self[f.metadata["flag"]]:
                    given[f.name] = False
            elif f.default is False:
                if self[_option(f)]:
                    given[f.name] = True
            elif f.name not in _REPEATABLE and self[_option(f)] is not None:
                given[f.name] = self[_option(f)]
        return given

    def postOptions(self) -> None:
        try:
            self.settings = config.build(self["config"], self.given())
        except ConfigError as exc:
            _fail(str(exc))
        _install_reactor(self.settings)


def _install_reactor(settings: Settings) -> None:
    if reactor.installed():
        from twisted.internet import reactor as current

        if not isinstance(current, reactor.GeventReactor):
            _fail(
                f"rpcd runs on the gevent reactor, not {type(current).__name__}: drop the -r option"
            )
        return
    reactor.install(patch=settings.monkey_patch)


def _logs_to_the_terminal(options: Options) -> bool:
    """Whether twistd will log to the terminal (-n, no --logfile, --syslog or --logger)."""
    twistd = getattr(options, "parent", None)
    if twistd is None or not twistd.get("nodaemon"):
        return False
    return twistd.get("logfile") in (None, "", "-") and not (
        twistd.get("syslog") or twistd.get("logger")
    )


def makeService(options: Options) -> IService:
    """The daemon for these options: its listeners bound, its log file open and locked.

    Both happen here, before twistd daemonizes, so that a port in use or a log file held by
    another daemon stops start-up with one line on the terminal either way. The listeners
    are bound first: the log file then starts with twistd's own start-up line.
    """
    from rpcd import supervisor
    from rpcd.auth import AuthKeyError
    from rpcd.logs import LogError, TerminalObserver
    from rpcd.methods import LoadError
    from rpcd.service import ListenError, RPCService

    # [scale seam] --processes N: a supervisor of N workers instead of one daemon.
    if supervisor.resolve_processes(options.settings.processes) > 1:
        try:
            args = supervisor.worker_args(options["config"], options.given())
            service = supervisor.Supervisor(options.settings, args)
            service.bind()  # before twistd daemonizes: a port in use is one line
            return service
        except ListenError as exc:
            _fail(str(exc))
    try:
        service = RPCService(options.settings)
        mallocpolicy.apply(options.settings.max_outbuf)  # a transport reads up to max_outbuf
        gcpolicy.freeze()  # before listening: its one full collection delays no client
        service.bind()
        service.start_log()
        if _logs_to_the_terminal(options):
            service.log_observer = TerminalObserver(sys.stdout)
    except (LoadError, AuthKeyError, LogError, ListenError) as exc:
        _fail(str(exc))
    return service


__all__ = ["Options", "makeService"]
