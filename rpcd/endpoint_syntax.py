"""Endpoint-string syntax: one tokenizer, Twisted's rules, for the server settings and the clients.

`tcp:5354:interface=127.0.0.1` is a type, then fields separated by ':'. In a field the first
'=' separates a keyword from its value (later ones belong to the value), and a backslash makes
the next character literal (each ':' of `tcp:\\:\\:1:5354`, or a literal '='). This is what
`twisted.internet.endpoints` does, so what rpcd checks is what Twisted will listen on.

A neutral module, like `rpcd.wire` and `rpcd.auth`: `rpcd.config` (server) and `rpcd.client`
both import it, and neither imports the other.
"""

from __future__ import annotations

# One field: (keyword, value), the keyword None for a positional field.
Field = tuple[str | None, str]


def tokenize(description: str, *, brackets: bool = False) -> tuple[str, list[Field]]:
    """The endpoint type (lower-cased) and its fields, in order.

    `brackets=True` (the clients' convenience, not Twisted's) also keeps the ':' inside
    `[...]` literal, so `tcp:[::1]:5354` reads as host `[::1]` and port 5354.
    """
    parts: list[list[tuple[str, bool]]] = [[]]
    chars = iter(description)
    bracketed = False
    for char in chars:
        if char == "\\":
            parts[-1].append((next(chars, ""), True))
        elif char == ":" and not bracketed:
            parts.append([])
        else:
            if brackets:
                bracketed = (bracketed or char == "[") and char != "]"
            parts[-1].append((char, False))
    fields: list[Field] = []
    for part in parts[1:]:
        split = next((i for i, (c, escaped) in enumerate(part) if c == "=" and not escaped), None)
        text = "".join(c for c, _ in part)
        if split is None:
            fields.append((None, text))
        else:
            fields.append((text[:split], text[split + 1 :]))
    return "".join(c for c, _ in parts[0]).lower(), fields


def split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """An endpoint string's type, positional and keyword arguments, as Twisted splits them."""
    kind, fields = tokenize(description)
    args = [value for key, value in fields if key is None]
    kwargs = {key: value for key, value in fields if key is not None}
    return kind, args, kwargs
