"""``python -m runtime --certfile ...``: TLS in thread, fork and pre-fork mode, the certificate
reloaded on SIGHUP without dropping connections, and bad TLS settings as one line and 2."""

from __future__ import annotations

import http.client
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from _proc import ROOT, RuntimeProcess, env, poll

pytestmark = pytest.mark.timeout(60)


def _client(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def _serial(conn: http.client.HTTPSConnection) -> int:
    """The serial number of the certificate the server presented on *conn*."""
    assert conn.sock is not None
    der = conn.sock.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return int(x509.load_der_x509_certificate(der).serial_number)


@pytest.mark.parametrize(
    "mode", [("--mode", "thread"), ("--mode", "fork"), ("--mode", "prefork", "--workers", "2")],
    ids=["thread", "fork", "prefork"],
)  # fmt: skip
def test_https_and_a_certificate_reloaded_on_sighup(tmp_path: Path, mode: tuple[str, ...]) -> None:
    ca = trustme.CA()
    pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    rt = RuntimeProcess("http_hello", "--certfile", str(pem), "--drain-delay", "0", *mode)
    try:
        kept = http.client.HTTPSConnection(*rt.address, context=_client(ca), timeout=10)
        kept.request("GET", "/")
        assert kept.getresponse().read() == b"hello, world\n"
        first = _serial(kept)
        renewed = ca.issue_cert("127.0.0.1")
        renewed.private_key_and_cert_chain_pem.write_to_path(str(pem))
        rt.signal(signal.SIGHUP)

        def new_certificate() -> bool:
            conn = http.client.HTTPSConnection(*rt.address, context=_client(ca), timeout=10)
            try:
                conn.request("GET", "/")
                conn.getresponse().read()
                return _serial(conn) != first
            finally:
                conn.close()

        poll(new_certificate, what="new handshakes presenting the renewed certificate")
        if "fork" not in mode:  # a fork-mode child serves one connection: it ended
            kept.request("GET", "/items/1")  # the connection made before the reload goes on
            assert kept.getresponse().read() == b"item 1\n"
        kept.close()
        rt.signal(signal.SIGTERM)
        code, err = rt.wait()
    finally:
        rt.close()
    assert code == 0, err
    if "prefork" not in mode:
        assert "TLS certificate reloaded" in err


def test_a_bad_new_certificate_keeps_the_old_one(tmp_path: Path) -> None:
    ca = trustme.CA()
    pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    rt = RuntimeProcess("http_hello", "--certfile", str(pem), "--drain-delay", "0")
    try:
        conn = http.client.HTTPSConnection(*rt.address, context=_client(ca), timeout=10)
        conn.request("GET", "/")  # serving: the signal handlers are in place
        assert conn.getresponse().read() == b"hello, world\n"
        conn.close()
        pem.write_text("not a certificate\n")
        rt.signal(signal.SIGHUP)
        poll(lambda: any("reload failed" in line for line in rt.stderr_lines()),
             what="the failed reload logged")  # fmt: skip
        conn = http.client.HTTPSConnection(*rt.address, context=_client(ca), timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"hello, world\n"  # still the old certificate
        conn.close()
    finally:
        rt.close()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--keyfile", "/nonexistent.key"], "--keyfile: needs --certfile"),
        (["--certfile", "/nonexistent.pem"], "--certfile: cannot load the certificate and key"),
        (["--certfile", "{pem}", "--cert-reqs", "required"], "--cert-reqs: needs --ca-certs"),
        (["--certfile", "{pem}", "--bind", "udp://127.0.0.1:0"], "--certfile: TLS needs a stream"),
        (["--certfile", "{junk}"], "--certfile: cannot load the certificate and key"),
    ],
)
def test_bad_tls_settings_are_one_line_and_status_2(
    tmp_path: Path, args: list[str], says: str
) -> None:
    pem, junk = tmp_path / "server.pem", tmp_path / "junk.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    junk.write_text("junk\n")
    argv = [a.format(pem=pem, junk=junk) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "http_hello", "--admin", "off", *argv],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert len(done.stderr.splitlines()) == 1 and says in done.stderr, done.stderr
