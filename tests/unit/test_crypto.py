"""The key ring: SM4-GCM / AES-256-GCM values bound to their column, key ids, blind indexes."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from crm_backend.crypto import KeyRing, KeyRingError, is_encrypted, key_id_of

SM4_KEY = bytes(range(16))
AES_KEY = bytes(range(100, 132))
HMAC_KEY = bytes(range(200, 232))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def ring(current: str = "k1") -> KeyRing:
    return KeyRing(keys={"k1": SM4_KEY, "k2": AES_KEY}, current=current, hmac_key=HMAC_KEY)


def test_a_value_round_trips_under_sm4_by_default_and_carries_its_key_id() -> None:
    stored = ring().encrypt("13800138000", "citizen.phone")
    assert stored.startswith("v1:sm4:k1:") and "13800138000" not in stored
    assert ring().decrypt(stored, "citizen.phone") == "13800138000"
    assert key_id_of(stored) == "k1" and is_encrypted(stored)


def test_a_256_bit_key_selects_aes_gcm() -> None:
    stored = ring("k2").encrypt("人民路 12 号", "service_case.location")
    assert stored.startswith("v1:aes:k2:")
    assert ring().decrypt(stored, "service_case.location") == "人民路 12 号"  # any key of the ring reads


def test_the_same_text_encrypts_differently_each_time() -> None:
    assert ring().encrypt("same", "message.text") != ring().encrypt("same", "message.text")


def test_a_value_moved_to_another_column_does_not_decrypt() -> None:
    stored = ring().encrypt("13800138000", "citizen.phone")
    with pytest.raises(KeyRingError, match="authentication"):
        ring().decrypt(stored, "service_case.description")


def test_a_tampered_value_does_not_decrypt() -> None:
    stored = ring().encrypt("hello", "message.text")
    blob = bytearray(base64.b64decode(stored.split(":", 3)[3]))
    blob[-1] ^= 1
    with pytest.raises(KeyRingError):
        ring().decrypt("v1:sm4:k1:" + base64.b64encode(bytes(blob)).decode(), "message.text")


def test_a_value_under_a_key_no_longer_in_the_ring_names_the_key() -> None:
    stored = ring("k2").encrypt("hello", "message.text")
    only_k1 = KeyRing(keys={"k1": SM4_KEY}, current="k1", hmac_key=HMAC_KEY)
    with pytest.raises(KeyRingError, match="'k2'"):
        only_k1.decrypt(stored, "message.text")


def test_plain_text_is_not_taken_for_an_encrypted_value() -> None:
    assert not is_encrypted("人民路积水") and key_id_of("v1:zz:k1:abc") is None
    with pytest.raises(KeyRingError):
        ring().decrypt("人民路积水", "message.text")
    assert ring().needs_rotation("人民路积水") and ring("k2").needs_rotation(ring().encrypt("x", "t.c"))


def test_blind_indexes_are_keyed_stable_and_separate_per_purpose() -> None:
    assert ring().blind_index("13800138000", "phone") == ring("k2").blind_index("13800138000", "phone")
    assert len(ring().blind_index("8000", "phone_last4")) == 32
    assert ring().blind_index("8000", "phone_last4") != ring().blind_index("8000", "phone")
    other = KeyRing(keys={"k1": SM4_KEY}, current="k1", hmac_key=bytes(32))
    assert other.blind_index("8000", "phone_last4") != ring().blind_index("8000", "phone_last4")


def test_the_ring_reads_the_environment() -> None:
    env = {"DATA_KEYS": f"old:{b64(SM4_KEY)},new:{b64(AES_KEY)}", "DATA_HMAC_KEY": b64(HMAC_KEY)}
    from_env = KeyRing.from_env(env)
    assert from_env.current == "new" and set(from_env.keys) == {"old", "new"}
    assert KeyRing.from_env({**env, "DATA_KEY_CURRENT": "old"}).current == "old"


def test_the_ring_reads_a_keys_file_outside_the_repository(tmp_path: Path) -> None:
    path = tmp_path / "keys.env"
    path.write_text(f"# data keys\nDATA_KEYS=k1:{b64(SM4_KEY)}\nDATA_HMAC_KEY={b64(HMAC_KEY)}\n")
    assert KeyRing.from_env({"DATA_KEYS_FILE": str(path)}).current == "k1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "DATA_KEYS is not set"),
        ({"DATA_KEYS": f"k1:{b64(SM4_KEY)}"}, "DATA_HMAC_KEY is not set"),
        ({"DATA_KEYS": f"k1:{b64(bytes(24))}", "DATA_HMAC_KEY": b64(HMAC_KEY)}, "16 \\(SM4\\) or 32"),
        ({"DATA_KEYS": "k1:not base64!", "DATA_HMAC_KEY": b64(HMAC_KEY)}, "not base64"),
        ({"DATA_KEYS": f"k1:{b64(SM4_KEY)}", "DATA_KEY_CURRENT": "k9", "DATA_HMAC_KEY": b64(HMAC_KEY)}, "'k9'"),
        ({"DATA_KEYS": f"k1:{b64(SM4_KEY)}", "DATA_HMAC_KEY": b64(bytes(8))}, "at least 32 bytes"),
        ({"DATA_KEYS_FILE": "/nonexistent/keys.env"}, "DATA_KEYS_FILE"),
    ],
)
def test_missing_or_malformed_keys_are_refused_with_a_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(KeyRingError, match=message):
        KeyRing.from_env(env)


def test_the_module_imports_nothing_but_the_standard_library_and_cryptography() -> None:
    """The engine imports it from another venv: no app module may come along."""
    code = (
        "import sys, crm_backend.crypto; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('crm_backend', 'sqlalchemy', 'bot', 'app')))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "['crm_backend', 'crm_backend.crypto']"
