"""rpcd.endpoint_syntax: the one endpoint tokenizer, checked against Twisted's own."""

from __future__ import annotations

import pytest
from twisted.internet.endpoints import _parse

from rpcd.endpoint_syntax import split_endpoint, tokenize

SAMPLES = [
    "tcp:5354:interface=127.0.0.1",
    r"tcp6:5354:interface=\:\:1",
    "ssl:5355:privateKey=/k.pem:certKey=/c.pem",
    "unix:/run/rpcd.sock:mode=600",
    r"unix:/run/a\=b.sock",
    "tcp:host=example.org:port=99:opt=a=b",
    "haproxy:tcp:5354",
    "systemd:domain=INET:index=0",
    "TCP:1",
    "tcp:",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_splits_as_twisted_does(text):
    kind, args, kwargs = split_endpoint(text)
    twisted_args, twisted_kwargs = _parse(text)
    assert [kind, *args] == [twisted_args[0].lower(), *twisted_args[1:]]
    assert kwargs == twisted_kwargs


def test_fields_keep_their_order_and_kind():
    assert tokenize("tcp:a:port=1:b") == ("tcp", [(None, "a"), ("port", "1"), (None, "b")])


def test_brackets_are_a_client_option_only():
    assert tokenize("tcp:[::1]:5354", brackets=True) == ("tcp", [(None, "[::1]"), (None, "5354")])
    assert tokenize("tcp:[::1]:5354")[1][0] == (None, "[")
