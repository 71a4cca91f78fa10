"""rpcd.auth: the sans-IO handshake (client and server halves) and the key file."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from rpcd import auth


def test_respond_verify_roundtrip_with_mutual_proof():
    key = auth.Key(b"s3cret")
    nonce = auth.new_nonce()
    client_nonce = auth.new_nonce()
    params = auth.respond(key, auth.challenge(nonce), client_nonce)
    result = auth.verify(key, nonce, params)
    assert result["authenticated"] is True
    assert auth.check_server(key, client_nonce, result)
    assert not auth.check_server(auth.Key(b"other"), client_nonce, result)
    assert not auth.check_server(key, auth.new_nonce(), result)
    assert not auth.check_server(key, client_nonce, {"authenticated": True})
    assert auth.check_server(b"s3cret", client_nonce, result)  # plain bytes work too


def test_digest_is_hmac_sha256_of_labelled_nonce():
    # Pinned independently of rpcd.auth: a client in any language can follow the README.
    nonce = "ab" * 32
    params = auth.respond(b"k", {"mechanism": "hmac-sha256", "nonce": nonce})
    expected = hmac.new(b"k", b"rpcd-auth client " + nonce.encode(), hashlib.sha256).hexdigest()
    assert params == {"digest": expected}


@pytest.mark.parametrize(
    "params",
    [
        {"digest": "00" * 32},
        {"digest": 5},
        {},
        "digest",
        (),
        ({"digest": "x"},),
    ],
)
def test_verify_rejects_wrong_or_malformed(params):
    with pytest.raises(auth.AuthFailed):
        auth.verify(auth.Key(b"k"), auth.new_nonce(), params)


def test_verify_accepts_a_positional_params_object_and_rejects_a_replayed_digest():
    key = auth.Key(b"k")
    nonce = auth.new_nonce()
    params = auth.respond(key, auth.challenge(nonce))
    assert auth.verify(key, nonce, (params,)) == {"authenticated": True}
    with pytest.raises(auth.AuthFailed):
        auth.verify(key, auth.new_nonce(), params)  # a fresh challenge: the old answer is void


def test_server_digest_is_never_a_valid_client_digest():
    key = auth.Key(b"k")
    nonce = auth.new_nonce()
    server = auth.verify(key, nonce, {**auth.respond(key, auth.challenge(nonce)), "nonce": nonce})
    with pytest.raises(auth.AuthFailed):
        auth.verify(key, nonce, {"digest": server["digest"]})


def test_respond_refuses_an_unknown_challenge():
    with pytest.raises(auth.AuthFailed):
        auth.respond(auth.Key(b"k"), {"mechanism": "md5", "nonce": "00" * 32})
    with pytest.raises(auth.AuthFailed):
        auth.respond(auth.Key(b"k"), {"mechanism": "hmac-sha256", "nonce": "short"})


def test_nonces_are_fresh():
    assert len({auth.new_nonce() for _ in range(100)}) == 100


def test_key_never_shows_itself():
    key = auth.Key(b"TOPSECRET")
    assert "TOPSECRET" not in repr(key) and "TOPSECRET" not in str(key)
    assert "TOPSECRET" not in repr([key])


def test_load_key(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(b"abc\n")
    path.chmod(0o600)
    key = auth.load_key(str(path))
    assert key.digest(b"", "00") == auth.Key(b"abc").digest(b"", "00")


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_load_key_empty(tmp_path, content):
    path = tmp_path / "key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(auth.AuthKeyError, match="is empty"):
        auth.load_key(str(path))


def test_load_key_missing_or_unreadable(tmp_path):
    with pytest.raises(auth.AuthKeyError, match="No such file"):
        auth.load_key(str(tmp_path / "nope"))
    with pytest.raises(auth.AuthKeyError, match="Is a directory"):
        auth.load_key(str(tmp_path))


# -- the two state machines -------------------------------------------------------------------


def test_client_and_server_handshakes_agree_mutually():
    key = auth.Key(b"s3cret")
    server = auth.ServerHandshake(key)
    client = auth.ClientHandshake(key)
    assert server.challenge_params["mechanism"] == auth.MECHANISM
    answer = client.answer(server.challenge_params)
    assert "nonce" in answer  # always mutual: the server must prove itself too
    result = server.verify(answer)
    assert result["authenticated"] is True
    client.check(result)  # no exception


def test_each_handshake_draws_its_own_nonce():
    key = auth.Key(b"k")
    assert auth.ServerHandshake(key).challenge_params != auth.ServerHandshake(key).challenge_params
    first, second = auth.ClientHandshake(key), auth.ClientHandshake(key)
    challenge = auth.ServerHandshake(key).challenge_params
    assert first.answer(challenge)["nonce"] != second.answer(challenge)["nonce"]


def test_server_handshake_refuses_another_key_and_another_challenge():
    server = auth.ServerHandshake(auth.Key(b"right"))
    with pytest.raises(auth.AuthFailed, match="wrong digest"):
        server.verify(auth.ClientHandshake(b"wrong").answer(server.challenge_params))
    other = auth.ServerHandshake(auth.Key(b"right"))
    with pytest.raises(auth.AuthFailed):
        server.verify(auth.ClientHandshake(b"right").answer(other.challenge_params))


@pytest.mark.parametrize(
    "challenge",
    [
        None,
        {},
        {"mechanism": "plain", "nonce": "ab" * 32},
        {"mechanism": "hmac-sha256"},
        {"mechanism": "hmac-sha256", "nonce": "zz" * 32},
    ],
)
def test_client_handshake_refuses_a_malformed_challenge(challenge):
    with pytest.raises(auth.AuthFailed):
        auth.ClientHandshake(b"k").answer(challenge)


def test_client_handshake_check_refuses_a_missing_or_wrong_server_digest():
    key = auth.Key(b"k")
    server = auth.ServerHandshake(key)
    client = auth.ClientHandshake(key)
    result = server.verify(client.answer(server.challenge_params))
    for bad in [{"authenticated": True}, None, {"digest": 5}, {"digest": "00" * 32}]:
        with pytest.raises(auth.AuthFailed, match="did not prove"):
            client.check(bad)
    with pytest.raises(auth.AuthFailed, match="did not prove"):
        client.check({"authenticated": True, "digest": "ab" * 32})  # a server guessing
    client.check(result)


# -- issue 10, point 17: a key file others can read ------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_a_key_file_open_to_group_or_others_is_refused(tmp_path, mode):
    path = tmp_path / "rpcd.key"
    path.write_bytes(b"secret\n")
    path.chmod(mode)
    with pytest.raises(auth.AuthKeyError) as raised:
        auth.load_key(str(path))
    message = str(raised.value)
    assert "\n" not in message and str(path) in message and f"{mode:04o}" in message
    assert "chmod 600" in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_key_file_is_accepted(tmp_path, mode):
    path = tmp_path / "rpcd.key"
    path.write_bytes(b"secret\n")
    path.chmod(mode)
    assert auth.load_key(str(path)).digest(b"x", "") == auth.Key(b"secret").digest(b"x", "")


def test_a_client_may_read_a_shared_key_file_without_the_mode_check(tmp_path):
    path = tmp_path / "rpcd.key"
    path.write_bytes(b"secret\n")
    path.chmod(0o644)
    assert auth.load_key(str(path), private=False) is not None
