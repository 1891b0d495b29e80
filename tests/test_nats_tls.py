"""TLS settings pass through: a server that requires TLS, the CA given or not."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import time
from pathlib import Path

import pytest

from provgraph import jetstream
from provgraph.errors import TransportError
from provgraph.natsserver import NatsServer
from provgraph.settings import load_settings
from provgraph.store import Store
from provgraph.transports.base import Batch
from provgraph.transports.nats import NatsTransport
from tests.support.nats import running_integrator, wait_for


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, server.pem, server-key.pem)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> object:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("provgraph test CA")).issuer_name(name("provgraph test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_tls_ca_passes_through_and_a_missing_one_is_a_clear_error(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path / "pki")
    with NatsServer(tmp_path / "nats", tls_cert=cert, tls_key=key) as server:
        url = server.url.replace("nats://", "tls://")
        untrusted = load_settings(nats_url=url, data_dir=tmp_path / "d")
        with pytest.raises(TransportError, match=r"(?i)certificate"):
            asyncio.run(jetstream.connect(untrusted))
        t0 = time.monotonic()
        with pytest.raises(TransportError, match="PROVGRAPH_NATS_TLS_CA"):
            NatsTransport(untrusted)
        assert time.monotonic() - t0 < 5
        trusted = load_settings(nats_url=url, nats_tls_ca=ca, data_dir=tmp_path / "d")
        store = Store()
        with running_integrator(trusted, store) as integrator:
            transport = NatsTransport(trusted)
            transport.publish(Batch(b"<urn:tls:a> <urn:p> <urn:o> <urn:g> .\n", 1))
            assert transport.flush(10)
            assert transport.close(5)
            wait_for(lambda: integrator.metrics.counters["committed_batches"] == 1, 30, "the batch over TLS")
        assert len(store) == 1
