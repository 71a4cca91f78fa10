"""`rpcd-call`: call a method of a running rpcd from the shell and print the result.

Exit codes: 0 success, 1 the server answered with an error (or no reply within the timeout,
or the auth handshake failed), 2 usage error (also an unreadable key file), 3 cannot connect
or the connection broke, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import re
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
# The wait for a reply when -t is not given: the blocking Client's own default.
DEFAULT_TIMEOUT = 60.0
GETLOG = "getlog"
_SENTENCE_END = re.compile(r"[.!?](?=\s)")

EPILOG = f"""\
examples (a daemon serving examples/demo.py):
  rpcd-call add 2 3                        positional ARGs, each parsed as JSON
  rpcd-call math.mul -k a=6 -k b=7         named arguments
  rpcd-call echo '{{"a": [1, 2]}}' | jq .a   compact JSON when piped (or with --json)
  rpcd-call count 3 0.5                    a stream: each item as it comes, then the result
  rpcd-call --list                         every method and the first line of its doc
  rpcd-call --describe count               one method's signature and whole docstring
  rpcd-call getlog -n 50 --level warn --grep timeout
  rpcd-call getlog -f                      follow the log until Ctrl-C
  rpcd-call -c unix:/run/rpcd.sock ping

timeouts:
  A call with no reply within {DEFAULT_TIMEOUT:g} s fails (exit 1) and is cancelled on
  the server; -t SECONDS changes that, -t 0 waits for ever. Once a call streams, and
  from the start with getlog -f, each next item is awaited without limit unless -t
  is given.

exit codes:
  0    success
  1    the server answered with an error, authentication failed, or no reply
       within the timeout (-t, default {DEFAULT_TIMEOUT:g} s)
  2    usage error, or an unreadable key file
  3    cannot connect, or the connection broke
  130  interrupted by Ctrl-C (getlog -f stops with 0)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpcd-call",
        description="Call a method of a running rpcd and print its result: JSON, indented on\n"
        "a terminal and compact otherwise; on a terminal, getlog's lines as plain text.\n"
        "Each ARG and VALUE is parsed as JSON when it is valid JSON, else taken as a string.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        type=_seconds,
        metavar="SECONDS",
        help=f"give up waiting for the reply, and for each streamed item, after this long "
        f"(default: {DEFAULT_TIMEOUT:g} s for the reply, no limit per item once a call "
        "streams and for getlog -f; 0: wait for ever)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print compact JSON, also on a terminal (getlog's lines included)",
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
    log = parser.add_argument_group(
        "getlog shortcuts (its named arguments; other methods refuse them)"
    )
    log.add_argument("-n", "--lines", type=int, metavar="N", help="lines=N")
    log.add_argument("--level", help="level=LEVEL (lowest level shown)")
    log.add_argument("--grep", metavar="TEXT", help="grep=TEXT (only lines containing it)")
    log.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="follow=true: keep streaming new lines until Ctrl-C",
    )
    parser.add_argument("method", nargs="?", metavar="METHOD", help="the method to call")
    parser.add_argument("args", nargs="*", metavar="ARG", help="its positional arguments")
    return parser


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, got {text!r}")
    return seconds


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
    named.update(_shortcuts(options))
    return named


def _shortcuts(options: argparse.Namespace) -> dict[str, Any]:
    """The getlog shortcuts given, as getlog's named arguments."""
    shortcuts = {"lines": options.lines, "level": options.level, "grep": options.grep}
    given = {name: value for name, value in shortcuts.items() if value is not None}
    if options.follow:
        given["follow"] = True
    return given


class _Output:
    """What a call prints: JSON (indented on a terminal unless --json, else compact, one
    value per line); on a terminal without --json, getlog's lines as plain text."""

    def __init__(self, stream: Any, force_json: bool = False) -> None:
        self.stream = stream
        self.json = force_json
        self.pretty = stream.isatty() and not force_json

    def value(self, value: Any) -> None:
        option = orjson.OPT_INDENT_2 if self.pretty else 0
        self._write(orjson.dumps(value, option=option | orjson.OPT_NON_STR_KEYS).decode())

    def item(self, item: Any) -> None:
        """A streamed item: a line of compact JSON (a string as plain text on a terminal)."""
        if self.pretty and isinstance(item, str):
            self._write(item)
        else:
            self._write(orjson.dumps(item, option=orjson.OPT_NON_STR_KEYS).decode())

    def log(self, result: Any) -> None:
        """getlog's answer: each entry as the log file holds it (a traceback keeps its
        tab-indented lines) on a terminal, the JSON value otherwise."""
        lines = result.get("lines") if isinstance(result, dict) else None
        if not self.pretty or not isinstance(lines, list):
            self.value(result)
            return
        for line in lines:
            self.item(line)

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
    elif options.method != GETLOG and _shortcuts(options):
        # They would reach the method as named arguments it most likely does not take.
        return _fail(
            f"-n/--lines, --level, --grep and -f/--follow are getlog's; "
            f"give {options.method} named arguments with -k NAME=VALUE",
            EXIT_USAGE,
        )
    if options.args and named:
        parser.error("give positional ARGs or named arguments (-k, getlog shortcuts), not both")
    if options.timeout is None:
        timeout: float | None = DEFAULT_TIMEOUT
    else:
        timeout = options.timeout or None  # -t 0: wait for ever
    try:
        client = Client(
            options.connect,
            timeout=timeout,
            byteorder=options.byteorder,
            auth_key_file=options.auth_key_file,
        )
    except ValueError as exc:
        parser.error(str(exc))
    except AuthKeyError as exc:
        return _fail(str(exc), EXIT_USAGE)
    out = _Output(sys.stdout, options.json)
    try:
        with client:
            if options.list:
                _list(client, out)
            elif options.describe:
                _describe(client, out, options.describe)
            else:
                args = [_value(arg) for arg in options.args]
                # Items of a stream may be far apart (getlog -f waits for the next entry):
                # without -t, only the wait for the first answer is bounded.
                item_timeout = options.timeout or None
                first_timeout = item_timeout if named.get("follow") else timeout
                return _call(client, out, options.method, args, named, first_timeout, item_timeout)
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
        hint = "" if options.timeout is not None else " (-t SECONDS to wait longer, -t 0 for ever)"
        return _fail(f"{exc}{hint}", EXIT_REMOTE)
    except BrokenPipeError:
        # The reader (head, less) went away: stop quietly, as shell tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return EXIT_OK


def _call(
    client: Client,
    out: _Output,
    method: str,
    args: list,
    named: dict,
    first_timeout: float | None,
    item_timeout: float | None,
) -> int:
    """Run the call as a stream (a plain method simply sends no items) and print it.

    `first_timeout` bounds the wait for the first item or the result, `item_timeout` each
    wait after an item."""
    stream = client.stream(method, *args, _timeout=first_timeout, **named)
    try:
        for item in stream:
            # It streams: from now on each wait is for the next item.
            stream.timeout = item_timeout
            out.item(item)
    except KeyboardInterrupt:
        stream.close()  # cancels the call on the server
        return EXIT_OK if named.get("follow") else EXIT_INTERRUPTED
    finally:
        stream.close()
    if method == GETLOG:
        out.log(stream.result)
    else:
        out.value(stream.result)
    return EXIT_OK


def _list(client: Client, out: _Output) -> None:
    methods = client.call("rpc.methods")
    if out.json:
        out.value(methods)
        return
    width = min(max((len(m["signature"]) for m in methods), default=0), 48)
    for m in methods:
        out.text(f"{m['signature']:<{width}}  {_summary(m['doc'])}".rstrip())


def _summary(doc: str) -> str:
    """A docstring's first sentence: its first paragraph (which may wrap over several
    lines) up to the first full stop that ends a sentence."""
    paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split())
    match = _SENTENCE_END.search(paragraph)
    return paragraph[: match.start() + 1] if match else paragraph


def _describe(client: Client, out: _Output, name: str) -> None:
    description = client.call("rpc.describe", name)
    if out.json:
        out.value(description)
        return
    out.text(description["signature"])
    if description["doc"]:
        out.text("")
        out.text(description["doc"])


if __name__ == "__main__":
    sys.exit(main())
