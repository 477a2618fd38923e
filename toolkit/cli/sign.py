"""``policy-toolkit sign``: sign a bundle in OpenSSF model-signing's format (TF-free).

The work is ``toolkit.bundle.signing``; ``model_signing verify key`` accepts the result.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli import common

__all__ = ["KEY_PASSWORD_ENV", "SignKeyOption", "sign", "sign_written"]

#: An encrypted private key's password comes from here, never from the command line.
KEY_PASSWORD_ENV = "POLICY_TOOLKIT_KEY_PASSWORD"

SignKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--sign-key",
        help="Sign the written bundle with this PEM EC private key (model.sig, OpenSSF "
        f"model-signing's format; an encrypted key's password from ${KEY_PASSWORD_ENV}).",
        show_default=False,
    ),
]


def _password() -> bytes | None:
    value = os.environ.get(KEY_PASSWORD_ENV)
    return value.encode() if value else None


def sign_written(path: Path, key: Path | None, *, was_signed: bool = False) -> None:
    """Signs a bundle a command just wrote (with ``--sign-key``), or says it is unsigned
    when its source was signed (a new bundle is never covered by the old signature)."""
    from toolkit import bundle as bundle_lib

    if key is not None:
        signature = bundle_lib.sign_bundle(path, key, password=_password())
        typer.echo(f"signed -> {signature}", err=True)
    elif was_signed:
        typer.echo(
            f"note: {path} is not signed (its source was); sign it again: "
            f"policy-toolkit sign {path} --key PRIVATE.pem",
            err=True,
        )


def is_signed(path: Path) -> bool:
    """Whether a folder holds a signature (unverified)."""
    from toolkit import bundle as bundle_lib

    return os.path.lexists(Path(path) / bundle_lib.SIGNATURE_FILE)


@common.command
def sign(
    ctx: typer.Context,
    bundle: common.BundleArgument,
    key: Annotated[
        Path,
        typer.Option(
            "--key",
            help="A PEM EC private key (P-256/384/521), e.g. from `openssl ecparam -name "
            f"prime256v1 -genkey -noout -out key.pem`; a password from ${KEY_PASSWORD_ENV}.",
            show_default=False,
        ),
    ],
) -> None:
    """Sign every file of a bundle (or a published version) into BUNDLE/model.sig.

    The signature is OpenSSF model-signing's (a Sigstore bundle over the files' sha256):
    `model_signing verify key BUNDLE --signature BUNDLE/model.sig --public_key PUB.pem`
    accepts it, and readers given `--trust-key PUB.pem` (or POLICY_TOOLKIT_TRUST_KEYS)
    refuse the bundle unsigned, signed by another key, or with any file changed, added
    or removed.
    """
    from toolkit import bundle as bundle_lib

    common.bundle_must_exist(bundle)
    signature: Any = bundle_lib.sign_bundle(bundle, key, password=_password())
    info = bundle_lib.signature_info(bundle) or {}
    typer.echo(f"signed {info.get('files')} files of {bundle} -> {signature}")
