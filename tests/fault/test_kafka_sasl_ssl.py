"""Kafka over SASL_SSL with SCRAM-SHA-512 (issue 9, finding 3), against a broker of its own.

The broker gets a TLS + SCRAM listener from certificates made here (a CA and a server certificate
for 127.0.0.1 and localhost, as PEM) and a SCRAM user made when its storage is formatted. The
scheduler runs with KAFKA_SECURITY_PROTOCOL=SASL_SSL and takes one loan through. A plaintext
listener stays for inter-broker traffic and for the test's own tap, which only watches.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.errors import KafkaError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr
from pytest_httpserver import HTTPServer

from cli.devstack import KafkaBroker, free_port
from shared.events import LoanStageChanged, encode, new_envelope
from shared.kafka import create_topics, make_producer
from shared.settings import Settings
from tests.support import Huifang, loan_event

pytestmark = pytest.mark.fault

USER = "huifang"
PASSWORD = "scram-password-for-the-sasl-ssl-test-0123"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificates(directory: Path) -> tuple[Path, Path]:
    """A CA (ca.pem) and the broker's key and certificate chain signed by it (server.pem)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Huifang test CA"))
        .issuer_name(_name("Huifang test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file, server_file = directory / "ca.pem", directory / "server.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    # Kafka's PEM keystore: a PKCS#8 key, then the certificate chain.
    server_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + server.public_bytes(pem)
        + ca.public_bytes(pem)
    )
    server_file.chmod(0o600)
    return ca_file, server_file


class SecureBroker:
    """A broker with a PLAINTEXT listener for itself and a SASL_SSL (SCRAM-SHA-512) one for clients."""

    def __init__(self, home: Path) -> None:
        self.ca, server = _certificates(home)
        self.secure_port = free_port()
        plain, controller = free_port(), free_port()
        listeners = f"PLAINTEXT://127.0.0.1:{plain},SASL_SSL://127.0.0.1:{self.secure_port}"
        self.broker = KafkaBroker(
            home / "kafka",
            port=plain,
            controller_port=controller,
            heap="384m",
            extra={
                "listeners": f"{listeners},CONTROLLER://127.0.0.1:{controller}",
                "advertised.listeners": listeners,
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
                "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                ),
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(server),
            },
            scram=[f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]"],
        )

    def settings(self, base: Settings, *, password: str = PASSWORD) -> Settings:
        return base.model_copy(
            update={
                "kafka_bootstrap_servers": f"127.0.0.1:{self.secure_port}",
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "SCRAM-SHA-512",
                "kafka_sasl_username": USER,
                "kafka_sasl_password": SecretStr(password),
                "kafka_ssl_cafile": self.ca,
            }
        )


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    own = SecureBroker(tmp_path)
    own.broker.start()
    try:
        yield own
    finally:
        own.broker.stop()


async def test_a_loan_goes_through_the_scheduler_over_sasl_ssl_scram(
    secure_broker: SecureBroker, webhook_server: HTTPServer, tmp_path: Path
) -> None:
    system = Huifang(
        kind="sqlite",
        bootstrap=secure_broker.broker.bootstrap,
        database_url=None,
        workdir=tmp_path / "huifang",
        webhook=webhook_server,
    )
    secure = secure_broker.settings(system.settings)
    with pytest.raises(KafkaError):
        await create_topics(secure_broker.settings(system.settings, password="not-the-password-" + "x" * 20))
    assert await create_topics(secure)  # the admin client, over TLS and SCRAM
    await system.tap.start()
    await system.start_service("scheduler", secure)
    producer = make_producer(secure)
    await producer.start()
    try:
        loan = f"L-{uuid.uuid4().hex[:10]}"
        data = LoanStageChanged.model_validate(loan_event(loan, roles=("borrower",)))
        envelope = new_envelope(data, source="/los/test", subject=loan)
        await producer.send_and_wait(secure.topic("loan.stage.v1"), value=encode(envelope), key=loan.encode())
        (scheduled,) = await system.tap.wait_events("callback.scheduled", loan, within=60)
        assert scheduled["data"]["role"] == "borrower"
    finally:
        await producer.stop()
        await system.stop()
