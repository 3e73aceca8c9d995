"""Encryption at rest of citizens' personal data, and blind indexes to find it again.

A `KeyRing` holds named data keys (a 128-bit key is used with SM4-GCM, the national standard;
a 256-bit key with AES-256-GCM), one of them current, and a separate HMAC key for blind
indexes. A value is stored as ``v1:<algorithm>:<key id>:<base64 of nonce + ciphertext + tag>``;
the place it belongs to (``table.column``) is the associated data, so a value copied into
another column does not decrypt. Old keys stay in the ring until ``rotate-key`` has moved
every value to the current one.

Keys come from the environment (``DATA_KEYS``, ``DATA_KEY_CURRENT``, ``DATA_HMAC_KEY``) or from a
file of the same ``NAME=value`` lines outside the repository (``DATA_KEYS_FILE``); never from the
database. This module imports only the standard library and ``cryptography``, so the dialogue
engine (another venv) imports it too; nothing is read or loaded at import.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

FORMAT_VERSION = "v1"
SM4 = "sm4"
AES = "aes"
NONCE_BYTES = 12  # 96-bit random nonces, GCM's native size
TAG_BYTES = 16
BLIND_INDEX_BYTES = 16  # HMAC-SHA256 truncated to 128 bits: 32 hex digits
HMAC_KEY_BYTES = 32
KEY_SIZES = {16: SM4, 32: AES}


class KeyRingError(RuntimeError):
    """The keys are missing or malformed, or a stored value cannot be decrypted with them."""


def _decode_key(name: str, raw: str) -> bytes:
    try:
        return base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError) as error:
        raise KeyRingError(f"{name}: not base64") from error


@dataclass(frozen=True)
class DataKey:
    """One named key and the cipher it is used with."""

    key_id: str
    key: bytes = field(repr=False)

    @property
    def algorithm(self) -> str:
        """``sm4`` for a 128-bit key, ``aes`` for a 256-bit one."""
        return KEY_SIZES[len(self.key)]


@dataclass(frozen=True)
class KeyRing:
    """Named data keys (one current) and the blind-index HMAC key.

    Args:
        keys: key id → key; 16 bytes (SM4-GCM) or 32 bytes (AES-256-GCM).
        current: the id of the key new values are encrypted with.
        hmac_key: at least 32 bytes, for `blind_index`.
    """

    keys: Mapping[str, bytes] = field(repr=False)
    current: str
    hmac_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyRingError("no data key")
        for key_id, key in self.keys.items():
            if not key_id or not key_id.replace("-", "").replace("_", "").isalnum() or not key_id.isascii():
                raise KeyRingError(f"key id {key_id!r}: use letters, digits, '-' or '_'")
            if len(key) not in KEY_SIZES:
                raise KeyRingError(f"key {key_id!r} is {len(key)} bytes: 16 (SM4) or 32 (AES-256) are allowed")
        if self.current not in self.keys:
            raise KeyRingError(f"DATA_KEY_CURRENT names {self.current!r}, which is not in DATA_KEYS")
        if len(self.hmac_key) < HMAC_KEY_BYTES:
            raise KeyRingError(f"DATA_HMAC_KEY must be at least {HMAC_KEY_BYTES} bytes")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KeyRing:
        """The ring from ``DATA_KEYS`` (``id:base64,id:base64``), ``DATA_KEY_CURRENT`` (default: the
        last key listed) and ``DATA_HMAC_KEY`` (base64), or from the file ``DATA_KEYS_FILE`` names,
        which holds the same settings as ``NAME=value`` lines (the environment wins).

        Raises:
            KeyRingError: no key is set, or one is malformed.
        """
        env = dict(os.environ if env is None else env)
        path = env.get("DATA_KEYS_FILE", "").strip()
        if path:
            try:
                lines = Path(path).read_text(encoding="utf-8").splitlines()
            except OSError as error:
                raise KeyRingError(f"DATA_KEYS_FILE {path}: {error.strerror}") from error
            for line in lines:
                name, sep, value = line.strip().partition("=")
                if sep and not name.startswith("#") and not env.get(name.strip(), "").strip():
                    env[name.strip()] = value.strip().strip("'\"")
        raw_keys = env.get("DATA_KEYS", "").strip()
        if not raw_keys:
            raise KeyRingError(
                "DATA_KEYS is not set: personal data is encrypted at rest and needs a key "
                "(bin/setup writes one into var/secrets.env; see docs/security.md)"
            )
        keys: dict[str, bytes] = {}
        for entry in (part.strip() for part in raw_keys.split(",")):
            if not entry:
                continue
            key_id, sep, encoded = entry.partition(":")
            if not sep:
                raise KeyRingError("DATA_KEYS: each entry is <key id>:<base64 key>")
            keys[key_id.strip()] = _decode_key(f"DATA_KEYS {key_id.strip()!r}", encoded)
        current = env.get("DATA_KEY_CURRENT", "").strip() or list(keys)[-1]
        hmac_raw = env.get("DATA_HMAC_KEY", "").strip()
        if not hmac_raw:
            raise KeyRingError("DATA_HMAC_KEY is not set (32 random bytes, base64): the key of the blind indexes")
        return cls(keys=keys, current=current, hmac_key=_decode_key("DATA_HMAC_KEY", hmac_raw))

    # --- values ------------------------------------------------------------------------------

    def encrypt(self, plaintext: str, place: str) -> str:
        """`plaintext` encrypted under the current key, bound to `place` (e.g. ``citizen.phone``)."""
        return self.encrypt_bytes(plaintext.encode("utf-8"), place)

    def encrypt_bytes(self, plaintext: bytes, place: str) -> str:
        """Bytes encrypted under the current key, bound to `place`, in the stored text form."""
        key = DataKey(self.current, self.keys[self.current])
        nonce = secrets.token_bytes(NONCE_BYTES)
        encryptor = _cipher(key, nonce).encryptor()
        encryptor.authenticate_additional_data(place.encode("utf-8"))
        body = encryptor.update(plaintext) + encryptor.finalize() + encryptor.tag
        return f"{FORMAT_VERSION}:{key.algorithm}:{key.key_id}:{base64.b64encode(nonce + body).decode('ascii')}"

    def decrypt(self, stored: str, place: str) -> str:
        """The text `encrypt` stored for `place`.

        Raises:
            KeyRingError: not an encrypted value, an unknown key, or a value tampered with or
                moved from another place.
        """
        return self.decrypt_bytes(stored, place).decode("utf-8")

    def decrypt_bytes(self, stored: str, place: str) -> bytes:
        """The bytes `encrypt_bytes` stored for `place` (raises `KeyRingError` as `decrypt` does)."""
        algorithm, key_id, blob = _parse(stored)
        key_bytes = self.keys.get(key_id)
        if key_bytes is None:
            raise KeyRingError(f"{place}: value encrypted under key {key_id!r}, which is not in the ring")
        key = DataKey(key_id, key_bytes)
        if key.algorithm != algorithm or len(blob) < NONCE_BYTES + TAG_BYTES:
            raise KeyRingError(f"{place}: malformed encrypted value")
        nonce, body, tag = blob[:NONCE_BYTES], blob[NONCE_BYTES:-TAG_BYTES], blob[-TAG_BYTES:]
        decryptor = Cipher(_algorithm(key), modes.GCM(nonce, tag)).decryptor()
        decryptor.authenticate_additional_data(place.encode("utf-8"))
        try:
            return decryptor.update(body) + decryptor.finalize()
        except InvalidTag as error:
            raise KeyRingError(f"{place}: encrypted value fails authentication (tampered, or moved)") from error

    def needs_rotation(self, stored: str) -> bool:
        """Whether a stored value is plain or under a key other than the current one."""
        return key_id_of(stored) != self.current

    # --- blind indexes -----------------------------------------------------------------------

    def blind_index(self, value: str, purpose: str) -> str:
        """A keyed fingerprint of `value` for equality search (32 hex digits).

        Args:
            value: the normalised value (a phone number as digits, its last four digits, ...).
            purpose: what it indexes (``phone``, ``phone_last4``, ``location``); the same value
                gives unrelated fingerprints for different purposes.
        """
        digest = hmac.new(self.hmac_key, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()
        return digest[:BLIND_INDEX_BYTES].hex()


def _algorithm(key: DataKey) -> algorithms.SM4 | algorithms.AES:
    return algorithms.SM4(key.key) if key.algorithm == SM4 else algorithms.AES(key.key)


def _cipher(key: DataKey, nonce: bytes) -> Cipher[modes.GCM]:
    return Cipher(_algorithm(key), modes.GCM(nonce))


def _parse(stored: str) -> tuple[str, str, bytes]:
    parts = stored.split(":", 3)
    if len(parts) != 4 or parts[0] != FORMAT_VERSION or parts[1] not in (SM4, AES):
        raise KeyRingError("not an encrypted value")
    try:
        blob = base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError) as error:
        raise KeyRingError("malformed encrypted value") from error
    return parts[1], parts[2], blob


def is_encrypted(stored: str) -> bool:
    """Whether `stored` has the form `KeyRing.encrypt` writes (not whether it decrypts)."""
    parts = stored.split(":", 3)
    return len(parts) == 4 and parts[0] == FORMAT_VERSION and parts[1] in (SM4, AES)


def key_id_of(stored: str) -> str | None:
    """The id of the key a stored value is under; None for a plain value."""
    return stored.split(":", 3)[2] if is_encrypted(stored) else None


def generate_key(algorithm: str = SM4) -> str:
    """A new random data key, base64 (16 bytes for SM4, 32 for AES-256)."""
    return base64.b64encode(secrets.token_bytes(16 if algorithm == SM4 else 32)).decode("ascii")


def generate_hmac_key() -> str:
    """A new random blind-index key, base64 (32 bytes)."""
    return base64.b64encode(secrets.token_bytes(HMAC_KEY_BYTES)).decode("ascii")


# --- the process's ring --------------------------------------------------------------------
# Column types encrypt as rows are written and read, where no collaborator can be handed in:
# they use the ring installed at start-up (the app, the CLI), or else the one the environment
# names, read on first use (never at import).

_installed: KeyRing | None = None
_lock = threading.Lock()


def install_key_ring(ring: KeyRing | None) -> None:
    """Make `ring` the one the encrypted column types use (None: read the environment again)."""
    global _installed
    with _lock:
        _installed = ring


def active_key_ring() -> KeyRing:
    """The installed ring, else the one the environment names (read once, then kept).

    Raises:
        KeyRingError: none installed and the environment sets none.
    """
    global _installed
    ring = _installed
    if ring is not None:
        return ring
    with _lock:
        if _installed is None:
            _installed = KeyRing.from_env()
        return _installed
