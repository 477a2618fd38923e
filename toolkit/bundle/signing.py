"""Signed bundles: OpenSSF model-signing's format, signed and verified over ``cryptography``.

A signature is ``model.sig`` at the bundle's root, exactly as OpenSSF's ``model_signing``
writes it (``model_signing sign key``/``verify key`` accept ours, ours accept theirs): a
Sigstore bundle (``application/vnd.dev.sigstore.bundle.v0.3+json``) whose DSSE envelope
signs an in-toto statement (predicate ``https://model_signing/signature/v1.0``) listing
the sha256 of every file of the folder but ``model.sig``, manifest.json included. Keys
are ECDSA (P-256, P-384, P-521, as model-signing's key signer); keyless Sigstore
signatures share the format and would plug in as another verifier.

A ``TrustPolicy`` (the public keys a reader trusts) makes every reader refuse a bundle
that is unsigned, signed by a key it does not hold, or not the bundle that was signed: a
changed, added or removed file, manifest.json included, so rewriting the manifest's own
hashes does not help. The published SavedModel mirror (``publish``) is accepted where
each mirrored file equals its signed ``saved_model/`` original.

TF-free; ``cryptography`` (the ``[trust]`` extra) is imported only when a key is loaded
or a signature checked, so readers without a trust policy never load it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from toolkit.bundle.files import parse_json, read_member
from toolkit.bundle.names import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    SAVED_MODEL_DIR,
    SIGNATURE_FILE,
    TRUST_KEYS_ENV,
)
from toolkit.errors import BundleError, TrustError, UnsupportedError

__all__ = [
    "TrustPolicy",
    "sign_bundle",
    "signature_info",
    "trust_policy",
    "verify_bundle",
]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
_CURVES = {"secp256r1": "SHA256", "secp384r1": "SHA384", "secp521r1": "SHA512"}
_MAX_KEY_BYTES = 64 << 10
_MAX_RESOURCES = 100_000
_HEX = frozenset("0123456789abcdef")


def _crypto() -> Any:
    try:
        from cryptography import exceptions
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:
        raise UnsupportedError(
            "signed bundles need the 'cryptography' package: pip install 'policy-toolkit[trust]'"
        ) from None
    return exceptions, hashes, serialization, ec


def _read_key_file(path: str | os.PathLike, what: str) -> bytes:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_BYTES + 1)
    except OSError as e:
        raise BundleError(f"{path}: cannot read the {what} ({e.strerror})") from None
    if len(data) > _MAX_KEY_BYTES:
        raise BundleError(f"{path}: expected a PEM {what} of at most {_MAX_KEY_BYTES} bytes")
    return data


def _key_hash(public_key: Any) -> tuple[str, Any]:
    """The key's hint (sha256 of its PEM SubjectPublicKeyInfo, as model-signing's) and hash."""
    import hashlib

    _, hashes, serialization, ec = _crypto()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise BundleError(f"expected an elliptic-curve key, got {type(public_key).__name__}")
    curve = public_key.curve.name
    if curve not in _CURVES:
        raise BundleError(f"expected a key on {', '.join(_CURVES)}, got {curve}")
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest(), getattr(hashes, _CURVES[curve])()


class TrustPolicy:
    """The public keys a reader accepts signatures from (any one of them suffices).

    Build one with ``TrustPolicy.from_files(paths)`` or ``TrustPolicy.from_env()``; pass it
    (or the PEM paths) as ``load_policy(..., trust=...)``.
    """

    __slots__ = ("_keys", "sources")

    def __init__(self, keys: Iterable[tuple[str, Any]]):
        self._keys = []
        self.sources: tuple[str, ...] = ()
        for source, key in keys:
            try:
                hint, hash_alg = _key_hash(key)
            except BundleError as e:
                raise BundleError(f"{source}: {e}") from None
            self._keys.append((source, hint, hash_alg, key))
        self.sources = tuple(source for source, *_ in self._keys)
        if not self._keys:
            raise BundleError("a trust policy needs at least one public key")

    @classmethod
    def from_files(cls, paths: Iterable[str | os.PathLike]) -> TrustPolicy:
        """Loads PEM public keys (SubjectPublicKeyInfo, ``openssl ec -pubout``)."""
        _, _, serialization, _ = _crypto()
        keys = []
        for path in paths:
            data = _read_key_file(path, "public key")
            try:
                keys.append((str(path), serialization.load_pem_public_key(data)))
            except ValueError:
                raise BundleError(
                    f"{path}: expected a PEM public key (-----BEGIN PUBLIC KEY-----)"
                ) from None
        return cls(keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrustPolicy | None:
        """The policy of ``POLICY_TOOLKIT_TRUST_KEYS`` (PEM paths split by os.pathsep), or None."""
        value = (os.environ if environ is None else environ).get(TRUST_KEYS_ENV, "")
        paths = [p for p in value.split(os.pathsep) if p.strip()]
        return cls.from_files(paths) if paths else None

    @property
    def hints(self) -> tuple[str, ...]:
        """The keys' hints (sha256 of their PEM), as signatures name their key."""
        return tuple(hint for _, hint, _, _ in self._keys)

    def __repr__(self) -> str:
        return f"TrustPolicy({list(self.sources)})"


def trust_policy(trust: Any) -> TrustPolicy | None:
    """The policy a reader applies: ``trust`` as given (a TrustPolicy, a PEM path or paths),
    ``False`` for none, ``None`` for the environment's (POLICY_TOOLKIT_TRUST_KEYS) if set."""
    if trust is None:
        return TrustPolicy.from_env()
    if trust is False:
        return None
    if isinstance(trust, TrustPolicy):
        return trust
    if isinstance(trust, (str, os.PathLike)):
        return TrustPolicy.from_files([trust])
    return TrustPolicy.from_files(list(trust))


# --- the files of a folder ---------------------------------------------------------------


def _sort_key(name: str) -> tuple[str, ...]:
    # model-signing orders resources by path (pathlib's order: by components).
    return PurePosixPath(name).parts


def _hash_fd(fd: int) -> str:
    import hashlib

    digest = hashlib.sha256()
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _folder_digests(root: Path, wanted: Any = None) -> dict[str, str | None]:
    """``{posix path: sha256}`` of every file under ``root`` but model.sig; symbolic links,
    FIFOs and devices are refused (nothing is followed out of the folder). With
    ``wanted`` (a predicate on the path), other files are listed but not read (None):
    a verifier never reads a file it will refuse anyway."""
    digests: dict[str, str | None] = {}
    try:
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise BundleError(f"{root}: cannot open the bundle folder ({e.strerror})") from None
    try:
        for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            for name in sorted(dirnames + filenames):
                rel = os.path.normpath(os.path.join(dirpath, name)).replace(os.sep, "/")
                info = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    continue
                if stat.S_ISLNK(info.st_mode):
                    raise TrustError(f"{root}: {rel} is a symbolic link; signed bundles hold files")
                if not stat.S_ISREG(info.st_mode):
                    raise TrustError(f"{root}: {rel}: expected a regular file")
                if rel == SIGNATURE_FILE:
                    continue
                if wanted is not None and not wanted(rel):
                    digests[rel] = None
                    continue
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise TrustError(f"{root}: {rel}: expected a regular file")
                    digests[rel] = _hash_fd(fd)
                finally:
                    os.close(fd)
    finally:
        os.close(top)
    return digests


# --- signing -------------------------------------------------------------------------------


def _pae(payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding of an in-toto payload."""
    return b"DSSEv1 %d %s %d %s" % (
        len(PAYLOAD_TYPE),
        PAYLOAD_TYPE.encode(),
        len(payload),
        payload,
    )


def _statement(name: str, digests: Mapping[str, str]) -> bytes:
    import hashlib

    names = sorted(digests, key=_sort_key)
    root = hashlib.sha256(b"".join(bytes.fromhex(digests[n]) for n in names)).hexdigest()
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": root}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": [SIGNATURE_FILE],
            },
            "resources": [{"name": n, "algorithm": "sha256", "digest": digests[n]} for n in names],
        },
    }
    return json.dumps(statement, indent=2).encode()


#: A signature being written (renamed to model.sig when whole).
_TEMPORARY_PREFIX = f".{SIGNATURE_FILE}.tmp-"


def _remove_stale_temporaries(root: Path) -> None:
    """Removes the temporary signatures a killed ``sign`` left at the bundle's top (regular
    files named as ours only; nothing is followed)."""
    with os.scandir(root) as entries:
        stale = [
            entry.path
            for entry in entries
            if entry.name.startswith(_TEMPORARY_PREFIX) and entry.is_file(follow_symlinks=False)
        ]
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def sign_bundle(
    bundle_dir: str | os.PathLike, private_key: str | os.PathLike, *, password: bytes | None = None
) -> Path:
    """Signs every file of a bundle (a checked bundle) into ``BUNDLE/model.sig``.

    Args:
      bundle_dir: the bundle folder (or a published version folder).
      private_key: a PEM EC private key (P-256/384/521), e.g.
        ``openssl ecparam -name prime256v1 -genkey -noout -out key.pem``.
      password: the key's password, if it is encrypted.

    Returns:
      The signature's path. It is written atomically (a temporary file renamed over it).

    Raises:
      BundleError: a bundle that fails its own checks, or an unusable key.
    """
    import uuid

    from toolkit.bundle.reading import bundle_root, read_manifest

    _, _, serialization, ec = _crypto()
    root = bundle_root(bundle_dir)
    read_manifest(root, check_files=True)  # never sign a damaged bundle
    data = _read_key_file(private_key, "private key")
    try:
        key = serialization.load_pem_private_key(data, password)
    except (ValueError, TypeError) as e:
        raise BundleError(f"{private_key}: expected a PEM private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise BundleError(
            f"{private_key}: expected an elliptic-curve private key, got {type(key).__name__}"
        )
    try:
        hint, hash_alg = _key_hash(key.public_key())
    except BundleError as e:
        raise BundleError(f"{private_key}: {e}") from None
    _remove_stale_temporaries(root)  # a killed sign's file must not be signed as the bundle's
    digests = {rel: str(digest) for rel, digest in _folder_digests(root).items()}
    payload = _statement(root.resolve().name, digests)
    signature = key.sign(_pae(payload), ec.ECDSA(hash_alg))
    document = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": hint}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }
    target = root / SIGNATURE_FILE
    temporary = root / f"{_TEMPORARY_PREFIX}{uuid.uuid4().hex[:8]}"
    try:
        with open(temporary, "x", encoding="utf-8") as f:
            json.dump(document, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()
    return target


# --- verification --------------------------------------------------------------------------


def _field(data: Any, key: str, kind: type, where: str) -> Any:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, kind):
        raise TrustError(f"{where}: {key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TrustError(f"{where}: expected base64") from None


def _read_signature(root: Path) -> tuple[dict[str, Any], bytes, bytes]:
    """(the document, the DSSE payload, the signature bytes) of model.sig, unverified."""
    where = f"{root / SIGNATURE_FILE}"
    if not os.path.lexists(root / SIGNATURE_FILE):
        raise TrustError(
            f"{root}: not signed (no {SIGNATURE_FILE}); the trust policy accepts signed "
            "bundles only (policy-toolkit sign BUNDLE --key PRIVATE.pem)"
        )
    try:
        raw = read_member(root, SIGNATURE_FILE, key=SIGNATURE_FILE, cap=MAX_MANIFEST_BYTES)
    except BundleError as e:
        raise TrustError(str(e)) from None
    try:
        document = parse_json(raw, root / SIGNATURE_FILE)
    except BundleError as e:
        raise TrustError(str(e)) from None
    media = _field(document, "mediaType", str, where)
    if media != BUNDLE_MEDIA_TYPE:
        raise TrustError(f"{where}: mediaType: expected {BUNDLE_MEDIA_TYPE}, got {media!r:.80}")
    envelope = _field(document, "dsseEnvelope", dict, where)
    kind = _field(envelope, "payloadType", str, f"{where}: dsseEnvelope")
    if kind != PAYLOAD_TYPE:
        raise TrustError(
            f"{where}: dsseEnvelope.payloadType: expected {PAYLOAD_TYPE}, got {kind!r:.80}"
        )
    signatures = _field(envelope, "signatures", list, f"{where}: dsseEnvelope")
    if len(signatures) != 1:
        raise TrustError(f"{where}: dsseEnvelope.signatures: expected one, got {len(signatures)}")
    payload = _b64(_field(envelope, "payload", str, f"{where}: dsseEnvelope"), f"{where}: payload")
    sig = _b64(_field(signatures[0], "sig", str, f"{where}: signatures[0]"), f"{where}: sig")
    return document, payload, sig


def _signed_digests(payload: bytes, where: str) -> dict[str, str]:
    """The statement's resources ``{path: sha256}``, its rules and root digest checked."""
    import hashlib

    statement = parse_json(payload, Path(where))
    if _field(statement, "_type", str, where) != STATEMENT_TYPE:
        raise TrustError(f"{where}: _type: expected {STATEMENT_TYPE}")
    predicate_type = _field(statement, "predicateType", str, where)
    if predicate_type != PREDICATE_TYPE:
        raise TrustError(
            f"{where}: predicateType: expected {PREDICATE_TYPE}, got {predicate_type!r:.80}"
        )
    subjects = _field(statement, "subject", list, where)
    if len(subjects) != 1:
        raise TrustError(f"{where}: subject: expected one, got {len(subjects)}")
    root_digest = _field(_field(subjects[0], "digest", dict, where), "sha256", str, where)
    predicate = _field(statement, "predicate", dict, where)
    serialization = _field(predicate, "serialization", dict, f"{where}: predicate")
    if serialization.get("method") != "files" or serialization.get("hash_type") != "sha256":
        raise TrustError(
            f"{where}: predicate.serialization: expected method 'files' with hash_type "
            f"'sha256', got {serialization.get('method')!r:.20} with "
            f"{serialization.get('hash_type')!r:.20}"
        )
    resources = _field(predicate, "resources", list, f"{where}: predicate")
    if len(resources) > _MAX_RESOURCES:
        raise TrustError(f"{where}: expected at most {_MAX_RESOURCES} resources")
    digests: dict[str, str] = {}
    hasher = hashlib.sha256()
    for i, item in enumerate(resources):
        at = f"{where}: predicate.resources[{i}]"
        name = _field(item, "name", str, at)
        digest = _field(item, "digest", str, at)
        if item.get("algorithm") != "sha256" or len(digest) != 64 or not set(digest) <= _HEX:
            raise TrustError(f"{at}: expected a sha256 hex digest, got {digest!r:.80}")
        if name in digests:
            raise TrustError(f"{at}: {name!r:.80} is listed twice")
        digests[name] = digest
        hasher.update(bytes.fromhex(digest))
    if hasher.hexdigest() != root_digest:
        raise TrustError(f"{where}: the resources do not hash to the subject's digest")
    return digests


def signature_info(bundle_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What model.sig says, unverified (for ``inspect``): key hint and file count, or None."""
    root = Path(bundle_dir)
    if not os.path.lexists(root / SIGNATURE_FILE):
        return None
    try:
        document, payload, _ = _read_signature(root)
        digests = _signed_digests(payload, str(root / SIGNATURE_FILE))
    except BundleError as e:
        return {"error": str(e)}
    hint = document.get("verificationMaterial", {}).get("publicKey", {}).get("hint")
    return {"key_hint": hint if isinstance(hint, str) else None, "files": len(digests)}


def verify_bundle(bundle_dir: str | os.PathLike, policy: TrustPolicy) -> dict[str, str]:
    """Checks a bundle against a trust policy: signed by one of its keys, every file as signed.

    Returns:
      The signed ``{path: sha256}`` (manifest.json included).

    Raises:
      TrustError: unsigned, a malformed signature, a key the policy does not hold, or a
        changed, added or removed file (the message names them).
      UnsupportedError: without the ``cryptography`` package.
    """
    exceptions, _, _, ec = _crypto()
    root = Path(bundle_dir)
    where = str(root / SIGNATURE_FILE)
    document, payload, sig = _read_signature(root)
    message = _pae(payload)
    for _, _, hash_alg, key in policy._keys:
        try:
            key.verify(sig, message, ec.ECDSA(hash_alg))
            break
        except exceptions.InvalidSignature:
            continue
    else:
        material = document.get("verificationMaterial")
        hint = material.get("publicKey", {}).get("hint") if isinstance(material, dict) else None
        named = f" (key hint {str(hint)[:16]}...)" if isinstance(hint, str) and hint else ""
        raise TrustError(
            f"{root}: signed by a key the trust policy does not hold{named}; trusted: "
            f"{', '.join(policy.sources)}"
        )
    signed = _signed_digests(payload, where)
    actual = _folder_digests(
        root, lambda rel: rel in signed or f"{SAVED_MODEL_DIR}/{rel}" in signed
    )
    if MANIFEST not in signed:
        raise TrustError(f"{where}: the signature does not cover {MANIFEST}")
    changed = sorted(n for n in signed.keys() & actual.keys() if signed[n] != actual[n])
    missing = sorted(signed.keys() - actual.keys())
    added = sorted(
        n
        for n in actual.keys() - signed.keys()
        # publish's mirror of the SavedModel at a version's root: the same bytes.
        if actual[n] is None or signed.get(f"{SAVED_MODEL_DIR}/{n}") != actual[n]
    )
    problems = [
        f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
        for label, names in (("changed", changed), ("missing", missing), ("not signed", added))
        if names
    ]
    if problems:
        raise TrustError(f"{root}: not the bundle that was signed ({'; '.join(problems)})")
    return signed
