"""EC key pairs for the signing tests, made fresh per test session (no key is checked in)."""

from __future__ import annotations

from pathlib import Path


def write_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """Writes ``name.pem`` (PKCS#8 P-256 private key) and ``name.pub.pem``; returns both."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private = folder / f"{name}.pem"
    public = folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public
