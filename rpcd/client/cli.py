"""`rpcd-call`: call a method of a running rpcd from the shell and print the result as JSON.

Exit codes: 0 success, 1 the server answered with an error (or no reply in time, or the
auth handshake failed), 2 usage error (also an unreadable key file), 3 cannot connect or
the connection broke.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import orjson

import rpcd
from rpcd.auth import AuthKeyError
from rpcd.client.blocking import Client
from rpcd.client.endpoint import DEFAULT_ENDPOINT
from rpcd.client.errors import AuthenticationFailed, ConnectFailed, ConnectionLost, RemoteError

EXIT_OK, EXIT_REMOTE, EXIT_USAGE, EXIT_CONNECT = 0, 1, 2, 3
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpcd-call",
        description="Call a method of a running rpcd and print its result as JSON "
        "(indented on a terminal, compact otherwise). Each ARG and VALUE is parsed as "
        "JSON when it is valid JSON, else taken as a string.",
        epilog="exit codes: 0 ok, 1 remote error or failed authentication, 2 usage error, "
        "3 cannot connect",
    )
    parser.add_argument(
        "-c",
        "--connect",
        metavar="ENDPOINT",
        default=os.environ.get("RPCD_ENDPOINT", DEFAULT_ENDPOINT),
        help="client endpoint: tcp:HOST:PORT, unix:PATH or ssl:HOST:PORT "
        f"(default: $RPCD_ENDPOINT or {DEFAULT_ENDPOINT})",
    )
    parser.add_argument(
        "-t",
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="give up waiting for the reply (or the next streamed item) after this long",
    )
    parser.add_argument(
        "--auth-key-file",
        metavar="FILE",
        default=os.environ.get("RPCD_AUTH_KEY_FILE") or None,
        help="shared key file for a server started with --auth-key-file "
        "(default: $RPCD_AUTH_KEY_FILE)",
    )
    parser.add_argument(
        "--byteorder",
        choices=("big", "little"),
        default="big",
        help="length-prefix byte order, as the server's --byteorder",
    )
    # seam (helper "ops"): one version source, rpcd.__version__
    parser.add_argument("--version", action="version", version=rpcd.version_text("rpcd-call"))
    parser.add_argument(
        "--list",
        action="store_true",
        help="list the methods: signature and first line of the docstring",
    )
    parser.add_argument(
        "--describe", metavar="METHOD", help="show a method's signature and docstring"
    )
    parser.add_argument(
        "-k",
        dest="named",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a named argument; repeatable (not with positional ARGs)",
    )
    log = parser.add_argument_group("getlog shortcuts (named arguments)")
    log.add_argument("-n", "--lines", type=int, metavar="N", help="lines=N")
    log.add_argument("--level", help="level=LEVEL (lowest level shown)")
    log.add_argument("--grep", metavar="TEXT", help="grep=TEXT (only lines containing it)")
    log.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="follow=true: keep streaming new lines until Ctrl-C",
    )
    parser.add_argument("method", nargs="?", metavar="METHOD")
    parser.add_argument("args", nargs="*", metavar="ARG")
    return parser


def _value(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _named(options: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    named: dict[str, Any] = {}
    for item in options.named:
        name, eq, value = item.partition("=")
        if not eq or not name:
            parser.error(f"-k expects NAME=VALUE, got {item!r}")
        named[name] = _value(value)
    shortcuts = {"lines": options.lines, "level": options.level, "grep": options.grep}
    named.update({name: value for name, value in shortcuts.items() if value is not None})
    if options.follow:
        named["follow"] = True
    return named


class _Output:
    """JSON to stdout: indented on a terminal, one compact value per line otherwise."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def value(self, value: Any) -> None:
        option = orjson.OPT_INDENT_2 if self.tty else 0
        self._write(orjson.dumps(value, option=option | orjson.OPT_NON_STR_KEYS).decode())

    def item(self, item: Any) -> None:
        """A streamed item: a line of compact JSON (a string as plain text on a terminal)."""
        if self.tty and isinstance(item, str):
            self._write(item)
        else:
            self._write(orjson.dumps(item, option=orjson.OPT_NON_STR_KEYS).decode())

    def text(self, text: str) -> None:
        self._write(text)

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"rpcd-call: {message}\n")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_intermixed_args(argv)
    named = _named(options, parser)
    if options.list or options.describe:
        if options.method or named:
            parser.error("--list and --describe take no METHOD or arguments")
    elif not options.method:
        parser.error("a METHOD is required (or --list, --describe METHOD)")
    if options.args and named:
        parser.error("give positional ARGs or named arguments (-k, getlog shortcuts), not both")
    try:
        client = Client(
            options.connect,
            timeout=options.timeout,
            byteorder=options.byteorder,
            auth_key_file=options.auth_key_file,
        )
    except ValueError as exc:
        parser.error(str(exc))
    except AuthKeyError as exc:
        return _fail(str(exc), EXIT_USAGE)
    out = _Output(sys.stdout)
    try:
        with client:
            if options.list:
                _list(client, out)
            elif options.describe:
                _describe(client, out, options.describe)
            else:
                args = [_value(arg) for arg in options.args]
                return _call(client, out, options.method, args, named, options.timeout)
    except AuthenticationFailed as exc:
        return _fail(f"authentication failed: {exc}", EXIT_REMOTE)
    except ConnectFailed as exc:
        return _fail(f"{exc} — {exc.hint}" if exc.hint else str(exc), EXIT_CONNECT)
    except ConnectionLost as exc:
        return _fail(str(exc), EXIT_CONNECT)
    except RemoteError as exc:
        detail = f" {orjson.dumps(exc.data).decode()}" if exc.data is not None else ""
        return _fail(f"error {exc.code}: {exc.message}{detail}", EXIT_REMOTE)
    except TimeoutError as exc:
        return _fail(str(exc), EXIT_REMOTE)
    except BrokenPipeError:
        # The reader (head, less) went away: stop quietly, as shell tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return EXIT_OK


def _call(
    client: Client, out: _Output, method: str, args: list, named: dict, timeout: float | None
) -> int:
    """Run the call as a stream (a plain method simply sends no items) and print it."""
    stream = client.stream(method, *args, _timeout=timeout, **named)
    try:
        for item in stream:
            out.item(item)
    except KeyboardInterrupt:
        stream.close()  # cancels the call on the server
        return EXIT_OK if named.get("follow") else EXIT_INTERRUPTED
    finally:
        stream.close()
    out.value(stream.result)
    return EXIT_OK


def _list(client: Client, out: _Output) -> None:
    methods = client.call("rpc.methods")
    width = min(max((len(m["signature"]) for m in methods), default=0), 48)
    for m in methods:
        summary = m["doc"].strip().splitlines()[0] if m["doc"].strip() else ""
        out.text(f"{m['signature']:<{width}}  {summary}".rstrip())


def _describe(client: Client, out: _Output, name: str) -> None:
    description = client.call("rpc.describe", name)
    out.text(description["signature"])
    if description["doc"]:
        out.text("")
        out.text(description["doc"])


if __name__ == "__main__":
    sys.exit(main())
