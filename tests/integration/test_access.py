"""Access control against the real daemon: public-bind refusal, the auth handshake, TLS, getlog."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess

import pytest

from rpcd.client import Client, ConnectFailed
from tests.integration.conftest import KEY, ROOT, TWISTD, Daemon, free_port
from tests.rawclient import RawClient, authenticate


def run_twistd(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """Run `twistd -n rpcd ARGS` expecting it to refuse to start (it never binds)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "rpcd", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "listen", ["tcp:{port}", "tcp:{port}:interface=0.0.0.0", "tcp:{port}:interface=\\:\\:"]
)
def test_public_listener_without_auth_refuses_to_start(tmp_path, listen):
    port = free_port()
    proc = run_twistd(tmp_path, "--listen", listen.format(port=port))
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("rpcd: refusing to listen on") and "--auth-key-file" in lines[0]
    with pytest.raises(OSError):  # nothing was bound
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


@pytest.mark.parametrize("content", [None, b"", b"\n"])
def test_bad_key_file_refuses_to_start(tmp_path, content):
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    proc = run_twistd(
        tmp_path, "--auth-key-file", str(path), "--listen", f"tcp:{free_port()}:interface=127.0.0.1"
    )
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rpcd: ") and "auth key file" in lines[0], lines


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    """The (address, port) of every listening TCP socket the process holds, from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, family in (("tcp", 4), ("tcp6", 6)):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in inodes:  # 0A: LISTEN
                    continue
                hex_addr, hex_port = local.split(":")
                raw = bytes.fromhex(hex_addr)
                if family == 4:
                    address = str(ipaddress.IPv4Address(raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    address = str(ipaddress.IPv6Address(words))
                found.add((address, int(hex_port, 16)))
    return found


def test_default_listener_binds_127_0_0_1_only(tmp_path):
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 5354))
    except OSError:
        pytest.skip("the default port 5354 is in use on this machine; the test needs it free")
    daemon = Daemon(tmp_path, ["--methods", "tests.integration.methods"], 5354)
    try:
        daemon.wait_ready()
        assert _listening_addresses(daemon.proc.pid) == {("127.0.0.1", 5354)}
        assert daemon.client().call("ping")["result"] == "pong"
    finally:
        daemon.terminate()


def test_auth_handshake_end_to_end(start_daemon, key_file):
    d = start_daemon("--auth-key-file", key_file)
    c = d.client()
    reply = authenticate(c, KEY)
    assert reply["result"]["authenticated"] is True
    assert c.call("add", 2, 3)["result"] == 5
    # Before authenticating: -32003 for anything, the connection stays for the handshake.
    c2 = d.client()
    assert c2.recv()["method"] == "rpc.auth"
    assert c2.call("add", 1, 2)["error"]["code"] == -32003
    # A wrong key: -32003 and closed.
    c3 = d.client()
    reply = authenticate(c3, b"wrong key")
    assert reply["error"]["code"] == -32003
    assert c3.closed_by_peer()
    # A frame over the pre-auth cap: -32004 and closed.
    c4 = d.client()
    c4.recv()
    c4.send_bytes(b"[" + b" " * 5000 + b"]")
    assert c4.recv()["error"]["code"] == -32004 and c4.closed_by_peer()
    assert c.call("ping")["result"] == "pong"  # the good client is unaffected
    log = d.log()
    assert "authentication failed" in log
    assert KEY.decode("latin-1") not in log and KEY[:20].decode() not in log
    assert "integration-test-key" not in log


def _make_certificate(tmp_path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rpcd test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = tmp_path / "server.key", tmp_path / "server.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_path), str(cert_path)


@pytest.mark.parametrize("with_auth", [False, True], ids=["tls", "tls+auth"])
def test_tls_listener_end_to_end(start_daemon, tmp_path, key_file, with_auth):
    key_path, cert_path = _make_certificate(tmp_path)
    tls_port = free_port()
    listen = f"ssl:{tls_port}:privateKey={key_path}:certKey={cert_path}:interface=127.0.0.1"
    args = ["--listen", listen] + (["--auth-key-file", key_file] if with_auth else [])
    d = start_daemon(*args)
    context = ssl.create_default_context(cafile=cert_path)  # verifies the chain and 127.0.0.1
    c = RawClient(tls_port, tls=context)
    assert c.sock.version() is not None  # really TLS
    if with_auth:
        assert authenticate(c, KEY)["result"]["authenticated"] is True
    assert c.call("ping")["result"] == "pong"
    assert c.call("add", 20, 22)["result"] == 42
    # A client that does not trust the certificate is refused by its own TLS check.
    with pytest.raises(ssl.SSLCertVerificationError):
        RawClient(tls_port, tls=ssl.create_default_context())
    # rpcd's own client, given the certificate in a CA directory and the host name to check.
    ca = tmp_path / "ca"
    ca.mkdir()
    shutil.copy(cert_path, ca / "server.pem")
    endpoint = f"ssl:127.0.0.1:{tls_port}:caCertsDir={ca}:hostname=localhost"
    with Client(endpoint, timeout=10, **({"auth_key_file": key_file} if with_auth else {})) as rc:
        assert rc.call("add", 1, 2) == 3
    with pytest.raises(ConnectFailed, match="TLS"):
        Client(f"ssl:127.0.0.1:{tls_port}").call("ping")  # the system's CAs do not know it
    assert d.proc.poll() is None


def test_getlog_reads_only_rpcds_own_logs(start_daemon, tmp_path):
    marker = "SECRET-MARKER-7f3a9c"
    outside = tmp_path / "secret.txt"
    outside.write_text(marker + "\n")
    (tmp_path / "sub").mkdir()
    d = start_daemon()
    c = d.client(timeout=5)
    names = [m["name"] for m in c.call("rpc.methods")["result"]]
    if "getlog" not in names:
        pytest.skip("getlog is not registered on this branch (the logging issue adds it)")
    assert "error" not in c.call("getlog")
    paths = [
        str(outside),
        "secret.txt",
        "./secret.txt",
        "../" + tmp_path.name + "/secret.txt",
        "sub/../secret.txt",
        "/etc/../" + str(outside).lstrip("/"),
        "file://" + str(outside),
        str(tmp_path),
        "/proc/self/environ",
        "\x00" + str(outside),
    ]
    keys = ["path", "file", "filename", "name", "log", "logfile", "source"]
    for path in paths:
        replies = [c.call("getlog", path)] + [
            c.send({"jsonrpc": "2.0", "method": "getlog", "params": {k: path}, "id": k}) or c.recv()
            for k in keys
        ]
        for reply in replies:
            assert marker not in repr(reply), (path, reply)
            assert "PYTHONPATH" not in repr(reply), (path, reply)
    assert c.call("ping")["result"] == "pong"
