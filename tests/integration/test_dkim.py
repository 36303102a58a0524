"""DKIM signing: a signature that verifies, covering the one-click unsubscribe headers."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from followup.config import Settings
from followup.errors import ConfigError
from tests.support.messages import compose_thank_you, sample_recipient
from tests.support.settings import make_settings


@pytest.fixture
def key_pair(tmp_path: Path) -> tuple[Path, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "dkim.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    return path, record


def signed_settings(tmp_path: Path, key_file: Path) -> Settings:
    return make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'f.db'}",
        dkim={
            "enabled": "true",
            "domain": "girard.example",
            "selector": "s1",
            "key_file": str(key_file),
        },
    )


def test_a_signed_message_verifies_and_covers_list_unsubscribe(
    tmp_path: Path, key_pair: tuple[Path, bytes]
) -> None:
    from followup.messages.templates import Templates
    from tests.support.settings import ROOT

    key_file, record = key_pair
    settings = signed_settings(tmp_path, key_file)
    message = compose_thank_you(settings, Templates(ROOT / "templates"), sample_recipient()).mime

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.girard.example."
        return record

    assert message.startswith(b"DKIM-Signature:")
    assert dkim.verify(message, dnsfunc=dns)
    header = message.split(b"\r\n\r\n", 1)[0].decode()
    signed = re.search(r"h=([^;]+);", header.replace("\r\n", "").replace(" ", "").replace("\t", ""))
    assert signed is not None
    covered = set(signed.group(1).lower().split(":"))
    assert {"from", "to", "subject", "list-unsubscribe", "list-unsubscribe-post"} <= covered
    tampered = message.replace(
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        b"List-Unsubscribe-Post: List-Unsubscribe=Nope",
    )
    assert tampered != message
    assert not dkim.verify(tampered, dnsfunc=dns)


def test_dkim_enabled_without_a_key_is_a_configuration_error(tmp_path: Path) -> None:
    from followup.messages.templates import Templates
    from tests.support.settings import ROOT

    base = make_settings(tmp_path, f"sqlite:///{tmp_path / 'f.db'}")
    settings = base.model_copy(
        update={"dkim": base.dkim.model_copy(update={"enabled": True, "key_file": ""})}
    )
    with pytest.raises(ConfigError, match=r"\[dkim\] enabled needs"):
        compose_thank_you(settings, Templates(ROOT / "templates"), sample_recipient())
