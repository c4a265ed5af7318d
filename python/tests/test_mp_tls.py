"""TLS the way a self-signed Redis is set up: a certificate made by `openssl req -x509`
(CA:TRUE, which webpki alone refuses with CaUsedAsEndEntity) serves redis-server's
--tls-port and is given as `tls_ca_file`; slotline's plug-in, built from the valkey
adapter's parameters through LMCache's NativeConnectorL2Adapter, round-trips over it, as
redis-py does with the same file. Another such certificate is refused with a message
that says what to change. Skipped without the openssl command."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import RedisServer, free_port
from slotline.native_plugin import SlotlineNativePlugin

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="no openssl command")


def openssl_x509(dir: str, name: str) -> tuple[str, str]:
    cert, key = os.path.join(dir, name + ".pem"), os.path.join(dir, name + ".key")
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=" + name,
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_server():
    d = tempfile.mkdtemp(prefix="slotline-py-tls-")
    cert, key = openssl_x509(d, "server")
    other, _ = openssl_x509(d, "other")
    port = free_port()
    s = RedisServer(tag="tls", args=(
        "--tls-port", str(port), "--tls-cert-file", cert, "--tls-key-file", key,
        "--tls-ca-cert-file", cert, "--tls-auth-clients", "no",
    )).start()
    s.tls_port, s.cert, s.other = port, cert, other
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


def test_the_certificate_is_what_openssl_req_x509_makes(tls_server):
    text = subprocess.run([OPENSSL, "x509", "-in", tls_server.cert, "-noout", "-text"],
                          check=True, capture_output=True, text=True).stdout
    assert "CA:TRUE" in text, text


def test_pinned_self_signed_round_trip(tls_server):
    from test_mp_params import native_adapter, round_trip

    a = native_adapter({
        "startup_nodes": "127.0.0.1:%d" % tls_server.tls_port,
        "tls_enable": True,
        "tls_ca_file": tls_server.cert,
        "num_workers": 1,
    })
    try:
        round_trip(a, 7000, n=4, size=200_000)
    finally:
        a.close()
    # redis-py with the same file agrees the server is fine.
    redis = pytest.importorskip("redis")
    r = redis.Redis(host="127.0.0.1", port=tls_server.tls_port, ssl=True,
                    ssl_ca_certs=tls_server.cert)
    try:
        assert r.ping()
        assert r.dbsize() == 4
    finally:
        r.flushall()
        r.close()


def test_another_certificate_says_what_to_change(tls_server):
    with pytest.raises(RuntimeError) as e:
        SlotlineNativePlugin(url="rediss://127.0.0.1:%d" % tls_server.tls_port,
                             tls_ca_file=tls_server.other, cores=1,
                             connect_timeout_ms=5000)
    msg = str(e.value)
    assert "CaUsedAsEndEntity" in msg and "tls_ca_file" in msg, msg
