"""Backups on SQLite (`crm_backend/backup.py`): taken under load, restored, and refused.

The tracker store is a SQLite file with Rasa's ``events`` table made by the test
(`tests/support/backups.py`), written to by the load beside the CRM.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sqlite3
import struct
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from crm_backend import audit_chain
from crm_backend.backup import (
    MAGIC,
    _associated_data,
    _file_keys,
    _header,
    create_backup,
    head_revision,
    key_id,
    read_manifest,
    restore_backup,
)
from crm_backend.crypto import KeyRing
from crm_backend.db import _alembic_config, create_engine, create_sessionmaker
from crm_backend.errors import BackupRefused
from crm_backend.settings import SettingsError, backup_key_from_env, normalise_database_url, tracker_store_url_from_env
from tests.support.backups import Load, assert_restored_rows_are_the_sources, create_tracker_store, table_rows
from tests.support.stack import APP_PYTHON, ROOT

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
KEY_HEX = KEY.hex()
TRACKER_CONVERSATIONS = 600
CHUNK_BYTES = 4096  # small chunks, so that a small backup has several


@dataclass
class Place:
    """A CRM database and a tracker store, as URLs the CLI reads."""

    crm: Path
    tracker: Path

    @property
    def crm_url(self) -> str:
        return f"sqlite:///{self.crm}"

    @property
    def tracker_url(self) -> str:
        return f"sqlite:///{self.tracker}"

    def exists(self) -> bool:
        return self.crm.exists() or self.tracker.exists()


def engine_of(path: Path) -> AsyncEngine:
    return create_engine(normalise_database_url(f"sqlite:///{path}"))


@pytest.fixture
def live(tmp_path: Path) -> Place:
    """The conftest's `sessions` database and a tracker store beside it."""
    return Place(tmp_path / "crm.db", tmp_path / "tracker.db")


@pytest.fixture
def empty(tmp_path: Path) -> Place:
    return Place(tmp_path / "restored" / "crm.db", tmp_path / "restored" / "tracker.db")


@pytest.fixture
async def tracker(live: Place) -> AsyncIterator[AsyncEngine]:
    engine = engine_of(live.tracker)
    await create_tracker_store(engine, TRACKER_CONVERSATIONS)
    yield engine
    await engine.dispose()


@pytest.fixture
async def backup_file(
    tmp_path: Path, live: Place, sessions: async_sessionmaker[AsyncSession], tracker: AsyncEngine
) -> Path:
    """A backup of a CRM with three cases and a tracker store, in several chunks."""
    await Load().run(sessions, tracker, cases=3)
    out = tmp_path / "crm.backup"
    await create_backup(live.crm_url, live.tracker_url, KEY, out, chunk_bytes=CHUNK_BYTES)
    return out


def chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each encrypted chunk, read as the format in `crm_backend.backup` says."""
    (manifest_length,) = struct.unpack(">I", data[len(MAGIC) : len(MAGIC) + 4])
    position = len(MAGIC) + 4 + manifest_length + 32
    found = []
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        found.append((position, 4 + 12 + length))
        position += 4 + 12 + length
    return found


# --- a backup under load, restored ---------------------------------------------------------


async def test_a_backup_taken_under_load_restores_every_row_committed_before_it(
    tmp_path: Path, live: Place, empty: Place, sessions: async_sessionmaker[AsyncSession], tracker: AsyncEngine
) -> None:
    load = Load()
    writer = asyncio.create_task(load.run(sessions, tracker))
    try:
        await load.until(30)
        cases_before, events_before = list(load.committed_cases), load.committed_events
        made = await create_backup(live.crm_url, live.tracker_url, KEY, tmp_path / "crm.backup")
        await load.until(len(load.committed_cases) + 10)  # the citizens went on after the backup
    finally:
        load.stop.set()
        await writer

    restored = await restore_backup(made.path, KEY, empty.crm_url, empty.tracker_url)

    assert restored.manifest.payload_sha256 == made.manifest.payload_sha256
    source_crm, source_tracker = engine_of(live.crm), engine_of(live.tracker)
    restored_crm, restored_tracker = engine_of(empty.crm), engine_of(empty.tracker)
    try:
        crm_rows, crm_restored = await table_rows(source_crm), await table_rows(restored_crm)
        tracker_rows, tracker_restored = await table_rows(source_tracker), await table_rows(restored_tracker)
    finally:
        for engine in (source_crm, source_tracker, restored_crm, restored_tracker):
            await engine.dispose()
    grown = assert_restored_rows_are_the_sources(crm_rows, crm_restored)
    assert "service_case" in grown  # the load wrote after the backup, and that is not in it
    assert "audit_entry" in grown
    restored_audit = engine_of(empty.crm)
    try:
        async with create_sessionmaker(restored_audit)() as session:
            chain = await audit_chain.verify_chain(session)  # the head restored is the last row restored
    finally:
        await restored_audit.dispose()
    assert chain.ok and chain.checked == len(crm_restored["audit_entry"]) > 0
    assert assert_restored_rows_are_the_sources(tracker_rows, tracker_restored) == ["events"]
    crm = sqlite3.connect(empty.crm)
    try:
        numbers = [row[0] for row in crm.execute("SELECT case_number FROM service_case ORDER BY id")]
        cases_without_events = crm.execute(
            "SELECT count(*) FROM service_case WHERE id NOT IN (SELECT case_id FROM case_event)"
        ).fetchone()[0]
        assert crm.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert crm.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        crm.close()
    # one moment of the source: the cases committed in order up to it, each with its first event
    assert numbers == load.committed_cases[: len(numbers)]
    assert set(cases_before) <= set(numbers)
    assert cases_without_events == 0
    tracker_events = len(tracker_restored["events"])
    assert TRACKER_CONVERSATIONS + events_before <= tracker_events == made.manifest.parts[1].tables["events"]
    assert made.manifest.parts[0].tables["service_case"] == len(numbers)
    assert made.manifest.schema_revision == head_revision()


async def test_the_file_shows_its_manifest_but_no_citizen_data(backup_file: Path) -> None:
    data = backup_file.read_bytes()
    manifest = read_manifest(backup_file)
    assert manifest.key_id == key_id(KEY)
    assert [part.holds for part in manifest.parts] == [["crm"], ["tracker"]]
    assert manifest.parts[0].tables["service_case"] == 3
    assert len(chunks(data)) == -(-manifest.payload_bytes // manifest.chunk_bytes) >= 3
    for plain in ("朝阳区建国路".encode(), "路灯不亮".encode(), b"13800000001", b"SQLite format 3"):
        assert plain not in data
    assert backup_file.stat().st_mode & 0o777 == 0o600


# --- refusals: nothing is changed ----------------------------------------------------------


async def test_a_backup_is_refused_with_another_key(backup_file: Path, empty: Place) -> None:
    with pytest.raises(BackupRefused, match="wrong key"):
        await restore_backup(backup_file, OTHER_KEY, empty.crm_url, empty.tracker_url)
    assert not empty.exists()


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: flip(data, data.index(b'"created_at"') + 20), "manifest does not match"),
        (lambda data: flip(data, chunks(data)[1][0] + 500), "chunk 1 fails authentication"),
        (lambda data: flip(data, len(data) - 1), r"chunk \d+ fails authentication"),
        (lambda data: flip(data, chunks(data)[0][0] + 6), "chunk 0 fails authentication"),  # its nonce
    ],
    ids=["manifest", "middle-chunk", "last-byte", "nonce"],
)
async def test_a_backup_with_one_altered_byte_is_refused(backup_file: Path, empty: Place, damage, message: str) -> None:
    backup_file.write_bytes(damage(backup_file.read_bytes()))
    with pytest.raises(BackupRefused, match=message):
        await restore_backup(backup_file, KEY, empty.crm_url, empty.tracker_url)
    assert not empty.exists()


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (lambda data: data[: chunks(data)[-1][0]], "without its final chunk"),
        (lambda data: data[: chunks(data)[1][0] + 100], r"truncated \(in chunk 1\)"),
        (lambda data: data[: len(MAGIC) + 10], r"truncated \(in the manifest\)"),
        (lambda data: data + data[chunks(data)[0][0] : chunks(data)[0][0] + 50], "data after its final chunk"),
    ],
    ids=["final-chunk-dropped", "mid-chunk", "in-manifest", "appended"],
)
async def test_a_truncated_or_extended_backup_is_refused(backup_file: Path, empty: Place, cut, message: str) -> None:
    backup_file.write_bytes(cut(backup_file.read_bytes()))
    with pytest.raises(BackupRefused, match=message):
        await restore_backup(backup_file, KEY, empty.crm_url, empty.tracker_url)
    assert not empty.exists()


async def test_reordered_chunks_are_refused(backup_file: Path, empty: Place) -> None:
    data = backup_file.read_bytes()
    (first, first_length), (second, second_length) = chunks(data)[:2]
    assert first_length == second_length  # full chunks: only their order gives them away
    swapped = data[:first] + data[second : second + second_length] + data[first:second] + data[second + second_length :]
    backup_file.write_bytes(swapped)
    with pytest.raises(BackupRefused, match="chunk 0 fails authentication"):
        await restore_backup(backup_file, KEY, empty.crm_url, empty.tracker_url)
    assert not empty.exists()


async def test_a_backup_of_another_schema_revision_is_refused(tmp_path: Path, empty: Place) -> None:
    older = tmp_path / "older.db"
    await asyncio.to_thread(command.upgrade, _alembic_config(normalise_database_url(f"sqlite:///{older}")), "0017")
    out = tmp_path / "older.backup"
    made = await create_backup(f"sqlite:///{older}", None, KEY, out)
    assert made.manifest.schema_revision == "0017"
    with pytest.raises(BackupRefused, match=f"schema revision 0017; this code's is {head_revision()}"):
        await restore_backup(out, KEY, empty.crm_url, empty.tracker_url)
    assert not empty.exists()


async def test_a_non_empty_target_is_refused_unless_forced(backup_file: Path, live: Place, empty: Place) -> None:
    await restore_backup(backup_file, KEY, empty.crm_url, empty.tracker_url)
    crm = sqlite3.connect(empty.crm)
    with crm:
        crm.execute("DELETE FROM case_event")
        crm.execute("DELETE FROM service_case")
    crm.close()
    before = hashlib.sha256(empty.crm.read_bytes()).hexdigest()

    with pytest.raises(BackupRefused, match="is not empty; restore into an empty one, or add --force"):
        await restore_backup(backup_file, KEY, empty.crm_url, empty.tracker_url)
    assert hashlib.sha256(empty.crm.read_bytes()).hexdigest() == before

    await restore_backup(backup_file, KEY, empty.crm_url, empty.tracker_url, force=True)
    crm_live, crm_restored = engine_of(live.crm), engine_of(empty.crm)
    try:
        assert await table_rows(crm_restored) == await table_rows(crm_live)
    finally:
        await crm_live.dispose()
        await crm_restored.dispose()


async def test_a_sqlite_backup_is_refused_into_postgres(backup_file: Path) -> None:
    with pytest.raises(BackupRefused, match=r"the crm part is SQLite; its target .* is PostgreSQL"):
        await restore_backup(backup_file, KEY, "postgresql://crm@127.0.0.1:9/a", "postgresql://crm@127.0.0.1:9/b")


# --- the key and the command line ----------------------------------------------------------


@pytest.mark.parametrize(
    "spelling", [KEY_HEX, KEY_HEX.upper(), "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", f" {KEY_HEX}\n"]
)
def test_backup_key_is_read_as_hex_or_base64(spelling: str) -> None:
    assert backup_key_from_env({"BACKUP_KEY": spelling}) == KEY


@pytest.mark.parametrize("spelling", ["", "short", KEY_HEX[:-2], "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg=="])
def test_a_backup_key_that_is_not_32_bytes_is_refused(spelling: str) -> None:
    with pytest.raises(SettingsError, match="BACKUP_KEY"):
        backup_key_from_env({"BACKUP_KEY": spelling})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, f"sqlite:///{ROOT / 'var' / 'tracker.db'}"),
        ({"DATABASE_URL": "sqlite:////srv/crm.db"}, f"sqlite:///{ROOT / 'var' / 'tracker.db'}"),
        ({"DATABASE_URL": "postgres://crm:pw@db/crm"}, "postgresql://crm:pw@db/crm"),
        ({"DATABASE_URL": "postgresql://crm@db/crm", "TRACKER_STORE_URL": "sqlite:////t.db"}, "sqlite:////t.db"),
    ],
)
def test_the_tracker_store_is_found_as_bin_env_sh_derives_it(env: dict[str, str], expected: str) -> None:
    assert tracker_store_url_from_env(env) == expected


def cli(*args: str, place: Place, key: str = KEY_HEX) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATABASE_URL": place.crm_url,
        "TRACKER_STORE_URL": place.tracker_url,
        "BACKUP_KEY": key,
    }
    return subprocess.run(
        [str(APP_PYTHON), "-m", "crm_backend", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )


async def test_the_cli_backs_up_restores_and_refuses_with_exit_code_1(
    tmp_path: Path, live: Place, empty: Place, backup_file: Path
) -> None:
    out = tmp_path / "cli.backup"
    made = await asyncio.to_thread(cli, "backup", "--out", str(out), place=live)
    assert made.returncode == 0, made.stderr
    assert f"wrote {out}" in made.stdout and "crm" in made.stdout and "tracker" in made.stdout

    refused = await asyncio.to_thread(cli, "restore", str(out), place=empty, key=OTHER_KEY.hex())
    assert refused.returncode == 1
    assert "error: the file was made with key" in refused.stderr and "(wrong key)" in refused.stderr
    assert not empty.exists()

    restored = await asyncio.to_thread(cli, "restore", str(out), place=empty)
    assert restored.returncode == 0, restored.stderr
    assert f"restored {out}" in restored.stdout

    again = await asyncio.to_thread(cli, "restore", str(out), place=empty)
    assert again.returncode == 1 and "add --force" in again.stderr
    forced = await asyncio.to_thread(cli, "restore", "--force", str(out), place=empty)
    assert forced.returncode == 0, forced.stderr

    no_key = await asyncio.to_thread(cli, "backup", "--out", str(out), place=live, key="")
    assert no_key.returncode == 1 and "BACKUP_KEY must be set" in no_key.stderr


# --- bin/setup gives the embedded default a key --------------------------------------------


def setup_secrets_lines() -> str:
    """The block of bin/setup that writes var/secrets.env, from its comment to the blank line after it."""
    lines = (ROOT / "bin" / "setup").read_text().splitlines()
    start = lines.index("# Local secrets for the embedded default; production sets them in the environment.")
    end = lines.index("", start)
    return "\n".join(lines[start:end])


def run_setup_secrets(project: Path) -> dict[str, str]:
    (project / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    python = project / ".venv" / "bin" / "python"
    if not python.exists():
        python.symlink_to(APP_PYTHON)
    (project / "var").mkdir(exist_ok=True)
    subprocess.run(
        ["bash", "-c", f"set -euo pipefail\nlog() {{ :; }}\n{setup_secrets_lines()}"], cwd=project, check=True
    )
    return dict(line.split("=", 1) for line in (project / "var" / "secrets.env").read_text().splitlines())


def test_setup_writes_a_backup_key_once_also_into_an_older_secrets_file(tmp_path: Path) -> None:
    fresh = run_setup_secrets(tmp_path / "fresh")
    assert set(fresh) == {
        "ENGINE_TOKEN",
        "ACTION_TOKEN",
        "REST_CHANNEL_TOKEN",
        "BACKUP_KEY",
        "DATA_KEYS",
        "DATA_KEY_CURRENT",
        "DATA_HMAC_KEY",
    }
    assert len(backup_key_from_env(fresh)) == 32
    assert run_setup_secrets(tmp_path / "fresh") == fresh  # a second run changes nothing

    older = tmp_path / "older"
    (older / "var").mkdir(parents=True)
    (older / "var" / "secrets.env").write_text("ENGINE_TOKEN=e\nACTION_TOKEN=a\nREST_CHANNEL_TOKEN=r\n")
    upgraded = run_setup_secrets(older)
    assert upgraded["ENGINE_TOKEN"] == "e" and upgraded["REST_CHANNEL_TOKEN"] == "r"
    assert len(backup_key_from_env(upgraded)) == 32


def test_setup_writes_an_sm4_data_key_and_a_blind_index_key_once(tmp_path: Path) -> None:
    fresh = run_setup_secrets(tmp_path / "fresh")
    ring = KeyRing.from_env(fresh)
    assert ring.current == fresh["DATA_KEY_CURRENT"] and len(ring.keys[ring.current]) == 16  # SM4
    assert len(ring.hmac_key) == 32
    assert run_setup_secrets(tmp_path / "fresh") == fresh  # kept: a new key would make the data unreadable


async def test_a_restored_sqlite_file_is_private_whatever_the_umask(backup_file: Path, empty: Place) -> None:
    previous = os.umask(0o022)
    try:
        await restore_backup(backup_file, KEY, empty.crm_url, empty.tracker_url)
    finally:
        os.umask(previous)
    assert empty.crm.stat().st_mode & 0o777 == 0o600
    assert empty.tracker.stat().st_mode & 0o777 == 0o600
    assert empty.crm.parent.stat().st_mode & 0o777 == 0o700


async def test_a_backup_into_a_missing_directory_is_refused_before_any_work(live: Place, tmp_path: Path) -> None:
    with pytest.raises(BackupRefused, match="no directory"):
        await create_backup(live.crm_url, None, KEY, tmp_path / "absent" / "crm.backup")


def reseal(data: bytes, key: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """The file with its manifest edited by someone who holds the key: MAC and chunks made anew."""
    header_end = len(MAGIC) + 4 + struct.unpack(">I", data[len(MAGIC) : len(MAGIC) + 4])[0]
    manifest = json.loads(data[len(MAGIC) + 4 : header_end])
    cipher, mac_key = _file_keys(key, bytes.fromhex(manifest["salt"]))
    old_digest = hashlib.sha256(data[:header_end]).digest()
    edit(manifest)
    header = _header(json.dumps(manifest).encode())
    new_digest = hashlib.sha256(header).digest()
    out = [header, hmac.new(mac_key, header, hashlib.sha256).digest()]
    found = chunks(data)
    for index, (offset, length) in enumerate(found):
        nonce, sealed = data[offset + 4 : offset + 16], data[offset + 16 : offset + length]
        final = index == len(found) - 1
        block = cipher.decrypt(nonce, sealed, _associated_data(old_digest, index, final))
        resealed = cipher.encrypt(nonce, block, _associated_data(new_digest, index, final))
        out.append(struct.pack(">I", len(resealed)) + nonce + resealed)
    return b"".join(out)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(payload_sha256="0" * 64), "payload's SHA-256 does not match the manifest's checksum"),
        (lambda m: m.update(schema_revision="0017"), "the backup is of schema revision 0017"),
        (lambda m: m["parts"][0].update(compression="zstd"), "crm part is sqlite/zstd, unknown to this code"),
    ],
    ids=["checksum", "revision", "compression"],
)
async def test_a_manifest_resealed_with_the_key_is_still_checked(
    backup_file: Path, empty: Place, edit, message: str
) -> None:
    backup_file.write_bytes(reseal(backup_file.read_bytes(), KEY, edit))
    with pytest.raises(BackupRefused, match=message):
        await restore_backup(backup_file, KEY, empty.crm_url, empty.tracker_url)
    assert not empty.exists()


async def test_resealing_without_an_edit_keeps_the_file_restorable(backup_file: Path, empty: Place) -> None:
    """The resealing helper above changes only what the edit changes."""
    backup_file.write_bytes(reseal(backup_file.read_bytes(), KEY, lambda manifest: None))
    await restore_backup(backup_file, KEY, empty.crm_url, empty.tracker_url)
