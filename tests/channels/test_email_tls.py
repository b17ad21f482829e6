"""E-mail over TLS, the production defaults, against real servers: dovecot (IMAPS, plaintext login refused) and
aiosmtpd (SMTPS, STARTTLS, AUTH), with a throwaway certificate authority made in the test.

What is proven: Eva trusts exactly the CA named by ``EVA_EMAIL_CA_FILE`` (an unknown certificate or a wrong host
name is refused before a password is sent), logs in over TLS, and never sends a password or a message in clear
when TLS was asked for and the server does not offer it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from channels.email.transport import ImapMailbox, SmtpSender
from tests.channels.conftest import DOVECOT, Dovecot, SmtpSink, _dovecot_config, free_port, stop_server
from voicebot.config import Settings
from voicebot.errors import EmailError

USER, PASSWORD = "eva@shop.example", "smtp-test-password"


# ---------------------------------------------------------------------------------------------- certificates
@dataclass(frozen=True)
class Pki:
    ca_file: Path
    """The CA certificate (what EVA_EMAIL_CA_FILE names)."""
    cert_file: Path
    """The server's certificate (for 127.0.0.1 and localhost), signed by the CA."""
    key_file: Path
    other_ca_file: Path
    """A CA that signed nothing here: trusting it alone must fail."""

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _ca(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(_name(common))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    folder = Path(tempfile.mkdtemp(prefix="eva-pki-"))
    folder.chmod(0o755)  # dovecot's unprivileged processes read the certificate
    ca_key, ca = _ca("Eva test CA")
    _, other = _ca("Some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("mail.test")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "other-ca.pem")
    pki.ca_file.write_bytes(_pem(ca))
    pki.other_ca_file.write_bytes(_pem(other))
    pki.cert_file.write_bytes(_pem(cert))
    pki.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    for path in (pki.ca_file, pki.other_ca_file, pki.cert_file, pki.key_file):
        path.chmod(0o644)
    try:
        yield pki
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- IMAPS (dovecot)
@dataclass
class TlsDovecot(Dovecot):
    imaps_port: int = 0


@pytest.fixture(scope="module")
def tls_dovecot(pki: Pki) -> Iterator[TlsDovecot]:
    """A private dovecot with IMAPS, and plaintext login refused on its plain port (as a public server has it)."""
    if not Path(DOVECOT).exists():
        pytest.fail("dovecot is not installed: run `make setup` (Debian package dovecot-imapd)")
    root = Path(tempfile.mkdtemp(prefix="eva-dovecot-tls-"))
    root.chmod(0o755)
    for sub in ("run", "state", "mail"):
        (root / sub).mkdir()
    if os.geteuid() == 0:
        shutil.chown(root / "mail", "dovecot", "dovecot")
    server = TlsDovecot("127.0.0.1", free_port(), "imap-tls-password", root, imaps_port=free_port())
    config = _dovecot_config(root, server.port, server.password)
    for old, new in (("ssl = no\n", f"ssl = required\nssl_cert = <{pki.cert_file}\nssl_key = <{pki.key_file}\n"),
                     ("disable_plaintext_auth = no\n", "disable_plaintext_auth = yes\n"),
                     ("  inet_listener imaps {\n    port = 0\n",
                      f"  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {server.imaps_port}\n")):
        assert config.count(old) == 1, old
        config = config.replace(old, new)
    (root / "dovecot.conf").write_text(config)
    process = subprocess.Popen([DOVECOT, "-F", "-c", str(root / "dovecot.conf")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with ImapMailbox(server.host, server.imaps_port, "probe", server.password,
                                 ca_file=str(pki.ca_file), timeout=2):
                    break
            except EmailError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log = (root / "dovecot.log").read_text() if (root / "dovecot.log").exists() else ""
                pytest.fail(f"dovecot (TLS) did not start: {log}")
            time.sleep(0.05)
        yield server
    finally:
        stop_server(process, root)


def _deliver_over_tls(server: TlsDovecot, pki: Pki, user: str, raw: bytes) -> None:
    import imaplib

    connection = imaplib.IMAP4_SSL(server.host, server.imaps_port, timeout=10,
                                   ssl_context=ssl.create_default_context(cafile=str(pki.ca_file)))
    try:
        connection.login(user, server.password)
        status, data = connection.append("INBOX", None, None, raw)
        assert status == "OK", data
    finally:
        connection.logout()


def test_imaps_with_the_configured_ca_logs_in_and_reads_the_inbox(tls_dovecot: TlsDovecot, pki: Pki) -> None:
    raw = b"From: ana@example.org\r\nTo: eva@shop.example\r\nSubject: hours\r\nMessage-ID: <1@x>\r\n\r\nOpen?\r\n"
    _deliver_over_tls(tls_dovecot, pki, "imaps-reader", raw)
    settings = Settings.load({}).with_(imap_host=tls_dovecot.host, imap_port=tls_dovecot.imaps_port,
                                       imap_user="imaps-reader", imap_password=tls_dovecot.password,
                                       email_ca_file=str(pki.ca_file))
    assert settings.imap_ssl  # the default
    with ImapMailbox.from_settings(settings) as mailbox:
        (uid,) = mailbox.unseen()
        fetched = mailbox.fetch(uid)
    assert fetched is not None and b"Subject: hours" in fetched


@pytest.mark.parametrize("trust", ["system", "other"])
def test_imaps_refuses_a_certificate_it_cannot_verify(tls_dovecot: TlsDovecot, pki: Pki, trust: str) -> None:
    ca_file = "" if trust == "system" else str(pki.other_ca_file)
    mailbox = ImapMailbox(tls_dovecot.host, tls_dovecot.imaps_port, "someone", tls_dovecot.password,
                          ca_file=ca_file, timeout=5)
    with pytest.raises(EmailError) as caught:
        mailbox.open()
    assert caught.value.code == "imap_unavailable"
    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.message


def test_imaps_wrong_password_is_a_login_failure_not_an_outage(tls_dovecot: TlsDovecot, pki: Pki) -> None:
    mailbox = ImapMailbox(tls_dovecot.host, tls_dovecot.imaps_port, "someone", "wrong", ca_file=str(pki.ca_file),
                          timeout=5)
    with pytest.raises(EmailError) as caught:
        mailbox.open()
    assert (caught.value.code, caught.value.retryable) == ("imap_auth_failed", False)


def test_a_missing_ca_file_is_named(tls_dovecot: TlsDovecot, tmp_path: Path) -> None:
    mailbox = ImapMailbox(tls_dovecot.host, tls_dovecot.imaps_port, "someone", "pw",
                          ca_file=str(tmp_path / "no-such-ca.pem"), timeout=5)
    with pytest.raises(EmailError) as caught:
        mailbox.open()
    assert (caught.value.code, caught.value.retryable) == ("email_ca_file", False)
    assert "EVA_EMAIL_CA_FILE" in caught.value.message


# ---------------------------------------------------------------------------------------------- SMTP (aiosmtpd)
@dataclass
class TlsSink(SmtpSink):
    logins: list[tuple[str, bool]] = field(default_factory=list)
    """(user, over TLS) of every AUTH attempt the server saw."""
    tls_mail: list[bool] = field(default_factory=list)
    """For every message accepted: did it come over TLS."""


def _over_tls(server: Any, session: Any) -> bool:
    """Is this SMTP session encrypted (after STARTTLS, or TLS from the first byte)?"""
    return session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None


class Authenticator:
    def __init__(self, sink: TlsSink) -> None:
        self.sink = sink

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        user = auth_data.login.decode()
        self.sink.logins.append((user, _over_tls(server, session)))
        return AuthResult(success=user == USER and auth_data.password.decode() == PASSWORD, handled=False)


class TlsKeep:
    def __init__(self, sink: TlsSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        from email import message_from_bytes, policy

        message = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.sink.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.sink.messages.append(message)
        self.sink.tls_mail.append(_over_tls(server, session))
        return "250 Message accepted for delivery"


class _SmtpsController(Controller):
    """aiosmtpd's controller checks it is up with a plain connection; over implicit TLS that has to be TLS."""

    def _trigger_server(self) -> None:
        import socket

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection((self.hostname, self.port), timeout=self.ready_timeout) as raw, \
                context.wrap_socket(raw) as tls:
            tls.recv(1024)


@pytest.fixture
def smtp_server(pki: Pki, request: pytest.FixtureRequest) -> Iterator[TlsSink]:
    """aiosmtpd in one of three modes (the test's parameter): ``starttls`` (STARTTLS required before AUTH and
    MAIL), ``smtps`` (TLS from the first byte), ``clear`` (no TLS offered at all)."""
    mode: str = request.param
    sink = TlsSink("127.0.0.1", free_port())
    common: dict[str, Any] = {"hostname": sink.host, "port": sink.port, "authenticator": Authenticator(sink),
                              "auth_exclude_mechanism": ["CRAM-MD5"]}
    controller: Controller
    if mode == "starttls":
        controller = Controller(TlsKeep(sink), tls_context=pki.server_context(), require_starttls=True,
                                auth_require_tls=True, **common)
    elif mode == "smtps":
        controller = _SmtpsController(TlsKeep(sink), ssl_context=pki.server_context(), auth_require_tls=False,
                                      **common)
    else:
        controller = Controller(TlsKeep(sink), auth_require_tls=False, **common)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


def _message() -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = USER, "ana@example.org", "Re: hours"
    message.set_content("We open at nine.")
    return message


@pytest.mark.parametrize("smtp_server", ["starttls"], indirect=True)
def test_starttls_then_login_then_the_mail(smtp_server: TlsSink, pki: Pki) -> None:
    settings = Settings.load({}).with_(smtp_host=smtp_server.host, smtp_port=smtp_server.port, smtp_user=USER,
                                       smtp_password=PASSWORD, email_ca_file=str(pki.ca_file))
    assert settings.smtp_starttls  # the default
    SmtpSender.from_settings(settings).send(_message())
    assert smtp_server.logins == [(USER, True)]
    assert smtp_server.tls_mail == [True] and smtp_server.envelopes == [(USER, ["ana@example.org"])]


@pytest.mark.parametrize("smtp_server", ["smtps"], indirect=True)
def test_smtps_speaks_tls_from_the_first_byte(smtp_server: TlsSink, pki: Pki) -> None:
    settings = Settings.load({}).with_(smtp_host=smtp_server.host, smtp_port=smtp_server.port, smtp_user=USER,
                                       smtp_password=PASSWORD, smtp_ssl=True, email_ca_file=str(pki.ca_file))
    SmtpSender.from_settings(settings).send(_message())
    assert smtp_server.logins == [(USER, True)] and smtp_server.tls_mail == [True]


@pytest.mark.parametrize("smtp_server", ["starttls"], indirect=True)
def test_smtp_wrong_password_is_a_login_failure(smtp_server: TlsSink, pki: Pki) -> None:
    sender = SmtpSender(smtp_server.host, smtp_server.port, USER, "wrong", ca_file=str(pki.ca_file), timeout=5)
    with pytest.raises(EmailError) as caught:
        sender.send(_message())
    assert (caught.value.code, caught.value.retryable) == ("smtp_auth_failed", False), repr(caught.value.__cause__)
    assert smtp_server.messages == []


@pytest.mark.parametrize("smtp_server", ["starttls"], indirect=True)
def test_smtp_refuses_a_server_certificate_it_cannot_verify(smtp_server: TlsSink, pki: Pki) -> None:
    sender = SmtpSender(smtp_server.host, smtp_server.port, USER, PASSWORD, ca_file=str(pki.other_ca_file),
                        timeout=5)
    with pytest.raises(EmailError) as caught:
        sender.send(_message())
    assert caught.value.code == "smtp_unavailable"
    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.message
    assert smtp_server.logins == [] and smtp_server.messages == []  # nothing left in clear or to a stranger


@pytest.mark.parametrize("smtp_server", ["clear"], indirect=True)
def test_no_password_or_mail_goes_out_in_clear_when_the_server_offers_no_starttls(
        smtp_server: TlsSink, pki: Pki) -> None:
    sender = SmtpSender(smtp_server.host, smtp_server.port, USER, PASSWORD, ca_file=str(pki.ca_file), timeout=5)
    with pytest.raises(EmailError) as caught:
        sender.send(_message())
    assert (caught.value.code, caught.value.retryable) == ("smtp_tls_unavailable", False)
    assert smtp_server.logins == [] and smtp_server.messages == []
    # The same server is usable when the operator says it is a trusted local relay.
    SmtpSender(smtp_server.host, smtp_server.port, USER, PASSWORD, starttls=False, timeout=5).send(_message())
    assert smtp_server.logins == [(USER, False)] and smtp_server.tls_mail == [False]
