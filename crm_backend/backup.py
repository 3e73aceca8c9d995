"""Encrypted backups of the CRM database and the engine's tracker store, and their restore.

A backup is taken from a running system: SQLite through its online backup API (one
consistent copy while writers go on), PostgreSQL through ``pg_dump`` (custom format) in a
REPEATABLE READ snapshot that the row counts of the manifest are read in as well. The copies
are staged in a private temporary directory (``TMPDIR``), then streamed into the backup file
encrypted, so a dump of many gigabytes is never held in memory.

The file (version 1)::

    magic        16 bytes  b"CRM12345-BACKUP" + b"\\x01"
    length        4 bytes  big-endian length of the manifest
    manifest     JSON, UTF-8: format, created_at, schema_revision, key_id, salt, chunk_bytes,
                 payload_bytes, payload_sha256, parts [{name, kind, holds, compression,
                 bytes, sha256, tables}]
    manifest MAC 32 bytes  HMAC-SHA256(mac key, magic + length + manifest)
    chunks       each: 4-byte big-endian ciphertext length, 12-byte random nonce, AES-256-GCM
                 ciphertext of up to ``chunk_bytes`` of payload with its 16-byte tag; associated
                 data SHA-256(magic + length + manifest) + chunk index (8 bytes) + final flag
                 (1 byte). The last chunk, and only it, has the final flag; a payload of zero
                 bytes is one empty final chunk.

The payload is the parts' bytes one after the other, in manifest order: a SQLite file
compressed with zlib (level 1), or a ``pg_dump`` custom-format archive (compressed by
``pg_dump``); ``bytes`` and ``sha256`` are those of the part as it is in the payload.

The encryption and MAC keys are derived per file with HKDF-SHA256 from ``BACKUP_KEY`` and the
file's random 16-byte salt; ``key_id`` is the first 16 hex digits of
HMAC-SHA256(BACKUP_KEY, "crm-backup key id"), naming the key without revealing it. The
manifest can be read without the key (`read_manifest`) and cannot be altered without it;
reordered, dropped, truncated or altered chunks fail their tag.

`restore` checks, before it changes anything: the key id, the manifest's MAC, the schema
revision against the code's Alembic head, that the targets are empty (unless ``force``), and
then every chunk and the payload's SHA-256 while staging the parts. Only then are the targets
written: SQLite through the backup API into the target file, PostgreSQL with ``pg_restore``
in one transaction. The restored row counts are compared with the manifest's.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sqlite3
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.engine import URL, make_url

from crm_backend.db import MIGRATIONS_DIR
from crm_backend.errors import BackupRefused

MAGIC = b"CRM12345-BACKUP\x01"
FORMAT = "crm12345-backup"
VERSION = 1
CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 64 << 20
NONCE_BYTES = 12
TAG_BYTES = 16
SALT_BYTES = 16
MAX_MANIFEST_BYTES = 1 << 20
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"

CRM = "crm"
TRACKER = "tracker"
SQLITE = "sqlite"
PG_DUMP = "pg_dump"
ENGINES = {SQLITE: "SQLite", PG_DUMP: "PostgreSQL"}
NO_COMPRESSION = "none"
ZLIB = "zlib"
ZLIB_LEVEL = 1  # a SQLite file shrinks to about a third at ~100 MB/s; higher levels gain little


# --- keys ----------------------------------------------------------------------------------


def key_id(key: bytes) -> str:
    """A name for the key that does not reveal it (16 hex digits)."""
    return hmac.new(key, b"crm-backup key id", hashlib.sha256).hexdigest()[:16]


def _file_keys(key: bytes, salt: bytes) -> tuple[AESGCM, bytes]:
    """This file's AES-256-GCM cipher and manifest MAC key, derived from the backup key."""
    derived = HKDF(algorithm=hashes.SHA256(), length=64, salt=salt, info=b"crm12345-backup v1").derive(key)
    return AESGCM(derived[:32]), derived[32:]


def _associated_data(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + struct.pack(">QB", index, 1 if final else 0)


# --- the databases -------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    """One database a backup holds: the CRM's or the engine's tracker store."""

    name: str  # CRM | TRACKER
    url: URL

    @classmethod
    def parse(cls, name: str, raw_url: str) -> "Store":
        """A store from a SQLAlchemy-style URL (``sqlite:///path``, ``postgresql[+driver]://…``).

        Raises:
            BackupRefused: neither SQLite nor PostgreSQL.
        """
        url = make_url(raw_url)
        if not (url.drivername.startswith("sqlite") or url.drivername.startswith("postgres")):
            raise BackupRefused(f"{name} database: only SQLite and PostgreSQL can be backed up, not {url.drivername}")
        return cls(name, url)

    @property
    def kind(self) -> str:
        """``sqlite`` or ``pg_dump``, the form its part takes in the payload."""
        return SQLITE if self.url.drivername.startswith("sqlite") else PG_DUMP

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return Path(self.url.database or "")

    def same_database(self, other: "Store") -> bool:
        """Whether two stores are one database (PostgreSQL's default: the tracker beside the CRM)."""
        if self.kind != other.kind:
            return False
        if self.kind == SQLITE:
            return self.path.resolve() == other.path.resolve()
        mine, theirs = self.url, other.url
        return (mine.host, mine.port, mine.database) == (theirs.host, theirs.port, theirs.database)

    def describe(self) -> str:
        """Where it is, without a password."""
        if self.kind == SQLITE:
            return str(self.path)
        return self.url.set(drivername="postgresql").render_as_string(hide_password=True)


def head_revision() -> str:
    """The Alembic head of this code's migrations."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert head is not None
    return head


def _sqlite_tables(connection: sqlite3.Connection) -> list[str]:
    rows = connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
    )
    return [row[0] for row in rows]


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _sqlite_counts(path: Path) -> dict[str, int]:
    connection = sqlite3.connect(path)
    try:
        return {
            table: int(connection.execute(f"SELECT count(*) FROM {_quote(table)}").fetchone()[0])  # noqa: S608
            for table in _sqlite_tables(connection)
        }
    finally:
        connection.close()


def _sqlite_revision(path: Path) -> str | None:
    connection = sqlite3.connect(path)
    try:
        if "alembic_version" not in _sqlite_tables(connection):
            return None
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        return str(row[0]) if row else None
    finally:
        connection.close()


def _sqlite_copy(source: Path, target: Path) -> None:
    """Copy one SQLite database into another with the online backup API, in one step.

    One step (``pages=-1``) reads a single consistent snapshot of `source` while its writers
    go on (WAL), and replaces `target`'s content under SQLite's own locking.
    """
    src = sqlite3.connect(source, timeout=60)
    try:
        dst = sqlite3.connect(target, timeout=60)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _pg_dsn(url: URL) -> str:
    """A libpq connection string without the password (that goes in PGPASSWORD)."""
    return url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)


def _pg_env(url: URL) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return env


def pg_tool(tool: str, server_major: int, search: str = PG_BIN_GLOB) -> Path:
    """Debian's `tool` (``pg_dump``, ``pg_restore``) for a server of major version `server_major`.

    The same major version when installed, else the oldest newer one (both tools read and
    write older servers, never newer ones). ``PG_BINDIR`` overrides the search.

    Raises:
        BackupRefused: none fits.
    """
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"]) / tool
    found: dict[int, Path] = {}
    for bindir in Path("/").glob(search.lstrip("/")):
        if (bindir / tool).exists() and bindir.parent.name.isdigit():
            found[int(bindir.parent.name)] = bindir / tool
    usable = sorted(major for major in found if major >= server_major)
    if not usable:
        raise BackupRefused(
            f"no {tool} for PostgreSQL {server_major} under {search} (apt-get install postgresql-client-{server_major})"
        )
    return found[usable[0]]


async def _pg_connect(url: URL):  # type: ignore[no-untyped-def]
    import asyncpg

    return await asyncpg.connect(_pg_dsn(url), password=url.password)


async def _pg_counts(connection) -> dict[str, int]:  # type: ignore[no-untyped-def]
    tables = await connection.fetch(
        "SELECT schemaname, tablename FROM pg_tables"
        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY schemaname, tablename"
    )
    counts: dict[str, int] = {}
    for row in tables:
        name = row["tablename"] if row["schemaname"] == "public" else f"{row['schemaname']}.{row['tablename']}"
        qualified = f"{_quote(row['schemaname'])}.{_quote(row['tablename'])}"
        counts[name] = int(await connection.fetchval(f"SELECT count(*) FROM {qualified}"))  # noqa: S608
    return counts


async def _run(command: Sequence[str], env: dict[str, str], what: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise BackupRefused(f"{what} failed (exit {process.returncode}): {stderr.decode(errors='replace').strip()}")


# --- the manifest --------------------------------------------------------------------------


@dataclass
class Part:
    """One database in the payload."""

    name: str
    kind: str
    bytes: int = 0
    sha256: str = ""
    tables: dict[str, int] = field(default_factory=dict)
    holds: list[str] = field(default_factory=list)  # the stores in it: [crm], [tracker] or both
    compression: str = NO_COMPRESSION  # ZLIB for SQLite files (pg_dump compresses its own archive)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "holds": self.holds,
            "compression": self.compression,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "tables": self.tables,
        }


@dataclass
class Manifest:
    """What a backup holds, readable without the key and authenticated by it."""

    created_at: str
    schema_revision: str
    key_id: str
    salt: str
    parts: list[Part]
    payload_bytes: int
    payload_sha256: str
    chunk_bytes: int = CHUNK_BYTES
    format: str = FORMAT
    version: int = VERSION

    def to_bytes(self) -> bytes:
        data = {
            "format": self.format,
            "version": self.version,
            "created_at": self.created_at,
            "schema_revision": self.schema_revision,
            "key_id": self.key_id,
            "salt": self.salt,
            "chunk_bytes": self.chunk_bytes,
            "payload_bytes": self.payload_bytes,
            "payload_sha256": self.payload_sha256,
            "parts": [part.to_json() for part in self.parts],
        }
        return json.dumps(data, ensure_ascii=False, indent=1).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Manifest":
        try:
            data = json.loads(raw)
            return cls(
                created_at=str(data["created_at"]),
                schema_revision=str(data["schema_revision"]),
                key_id=str(data["key_id"]),
                salt=str(data["salt"]),
                parts=[
                    Part(
                        name=str(p["name"]),
                        kind=str(p["kind"]),
                        bytes=int(p["bytes"]),
                        sha256=str(p["sha256"]),
                        tables={str(k): int(v) for k, v in p["tables"].items()},
                        holds=[str(h) for h in p["holds"]],
                        compression=str(p["compression"]),
                    )
                    for p in data["parts"]
                ],
                payload_bytes=int(data["payload_bytes"]),
                payload_sha256=str(data["payload_sha256"]),
                chunk_bytes=int(data["chunk_bytes"]),
                format=str(data["format"]),
                version=int(data["version"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise BackupRefused(f"the manifest is unreadable ({error})") from error

    def check_parts(self) -> None:
        """Refuse parts of a kind or compression this code does not know (a newer format).

        Raises:
            BackupRefused: such a part.
        """
        for part in self.parts:
            if part.kind not in ENGINES or part.compression not in (NO_COMPRESSION, ZLIB):
                raise BackupRefused(f"the {part.name} part is {part.kind}/{part.compression}, unknown to this code")


def _header(manifest_bytes: bytes) -> bytes:
    return MAGIC + struct.pack(">I", len(manifest_bytes)) + manifest_bytes


def _read_exact(stream: BinaryIO, size: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise BackupRefused(f"the file is truncated (in the {what})")
    return data


def _read_header(stream: BinaryIO) -> tuple[bytes, Manifest, bytes]:
    """The header's bytes, its manifest, and the MAC that follows (not yet checked)."""
    if stream.read(len(MAGIC)) != MAGIC:
        raise BackupRefused("not a backup file of this system (or of another format version)")
    (length,) = struct.unpack(">I", _read_exact(stream, 4, "manifest"))
    if length > MAX_MANIFEST_BYTES:
        raise BackupRefused("the manifest is implausibly large: the file is damaged")
    manifest_bytes = _read_exact(stream, length, "manifest")
    mac = _read_exact(stream, 32, "manifest")
    return _header(manifest_bytes), Manifest.from_bytes(manifest_bytes), mac


def read_manifest(path: Path) -> Manifest:
    """The manifest of a backup file, without the key (so not yet authenticated).

    Raises:
        BackupRefused: not a backup file, or damaged.
    """
    with path.open("rb") as stream:
        return _read_header(stream)[1]


# --- backup --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupResult:
    """A written backup."""

    path: Path
    manifest: Manifest
    file_bytes: int
    seconds: float


async def _stage_sqlite(store: Store, target: Path, part: Part) -> None:
    if not store.path.is_file():
        raise BackupRefused(f"{store.name} database: no SQLite file at {store.path}")
    await asyncio.to_thread(_sqlite_copy, store.path, target)
    part.tables = await asyncio.to_thread(_sqlite_counts, target)


async def _stage_pg(store: Store, target: Path, part: Part, revision: list[str]) -> None:
    """``pg_dump`` in a snapshot the row counts (and the schema revision) are read in too."""
    connection = await _pg_connect(store.url)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await connection.fetchval("SELECT pg_export_snapshot()")
            part.tables = await _pg_counts(connection)
            if CRM in part.holds and "alembic_version" in part.tables:
                revision.append(str(await connection.fetchval("SELECT version_num FROM alembic_version")))
            dump = pg_tool("pg_dump", connection.get_server_version().major)
            await _run(
                [
                    str(dump),
                    "--format=custom",
                    f"--snapshot={snapshot}",
                    f"--file={target}",
                    f"--dbname={_pg_dsn(store.url)}",
                ],
                _pg_env(store.url),
                f"pg_dump of the {store.name} database",
            )
    finally:
        await connection.close()


def _stores(database_url: str, tracker_url: str | None) -> list[tuple[Store, list[str]]]:
    crm = Store.parse(CRM, database_url)
    if tracker_url is None:
        return [(crm, [CRM])]
    tracker = Store.parse(TRACKER, tracker_url)
    if crm.same_database(tracker):
        return [(crm, [CRM, TRACKER])]
    return [(crm, [CRM]), (tracker, [TRACKER])]


def _compress(path: Path) -> Path:
    """`path` compressed with zlib into ``path.zlib``, streamed; `path` is removed."""
    packed = path.with_name(path.name + "." + ZLIB)
    compressor = zlib.compressobj(ZLIB_LEVEL)
    with path.open("rb") as source, packed.open("wb") as target:
        while block := source.read(CHUNK_BYTES):
            target.write(compressor.compress(block))
        target.write(compressor.flush())
    path.unlink()
    return packed


def _decompress(path: Path) -> Path:
    """The zlib stream `path` (checked against its manifest checksum already) unpacked beside it."""
    unpacked = path.with_suffix("")
    decompressor = zlib.decompressobj()
    with path.open("rb") as source, unpacked.open("wb") as target:
        while block := source.read(CHUNK_BYTES):
            target.write(decompressor.decompress(block, CHUNK_BYTES))
            while decompressor.unconsumed_tail:
                target.write(decompressor.decompress(decompressor.unconsumed_tail, CHUNK_BYTES))
        target.write(decompressor.flush())
    if not decompressor.eof:
        raise BackupRefused(f"{path.name}: the compressed database ends early")
    path.unlink()
    return unpacked


def _hash_file(path: Path, into: list["hashlib._Hash"]) -> int:
    size = 0
    with path.open("rb") as stream:
        while block := stream.read(CHUNK_BYTES):
            size += len(block)
            for digest in into:
                digest.update(block)
    return size


def _payload_blocks(paths: Sequence[Path], chunk_bytes: int) -> Iterator[bytes]:
    """The parts' bytes one after the other, cut into blocks of exactly `chunk_bytes` (the last shorter)."""
    pending = bytearray()
    for path in paths:
        with path.open("rb") as stream:
            while block := stream.read(chunk_bytes):
                pending += block
                while len(pending) >= chunk_bytes:
                    yield bytes(pending[:chunk_bytes])
                    del pending[:chunk_bytes]
    yield bytes(pending)


def _write_encrypted(out: Path, key: bytes, manifest: Manifest, salt: bytes, paths: Sequence[Path]) -> int:
    """Write the file next to `out`, then rename it into place; returns its size."""
    cipher, mac_key = _file_keys(key, salt)
    header = _header(manifest.to_bytes())
    digest = hashlib.sha256(header).digest()
    partial = out.with_name(out.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(header)
            stream.write(hmac.new(mac_key, header, hashlib.sha256).digest())
            chunks = max(1, -(-manifest.payload_bytes // manifest.chunk_bytes))
            index = 0
            for block in _payload_blocks(paths, manifest.chunk_bytes):
                if not block and index > 0:
                    break  # the payload ended on a chunk boundary: the last full block was final
                final = index == chunks - 1
                nonce = os.urandom(NONCE_BYTES)
                sealed = cipher.encrypt(nonce, block, _associated_data(digest, index, final))
                stream.write(struct.pack(">I", len(sealed)) + nonce + sealed)
                index += 1
            if index != chunks:
                raise BackupRefused("a database file changed size while it was being encrypted")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out.stat().st_size


async def create_backup(
    database_url: str, tracker_url: str | None, key: bytes, out: Path, *, chunk_bytes: int = CHUNK_BYTES
) -> BackupResult:
    """Back up the CRM database (and the tracker store, when given) into the encrypted file `out`.

    A SQLite tracker file that does not exist yet (the engine never ran) is left out.

    Raises:
        BackupRefused: a database is missing or has no schema revision, or a dump failed.
    """
    started = time.perf_counter()
    if not out.parent.is_dir():
        raise BackupRefused(f"no directory {out.parent} to write the backup in")
    stores = _stores(database_url, tracker_url)
    if len(stores) > 1 and stores[1][0].kind == SQLITE and not stores[1][0].path.exists():
        stores = stores[:1]
    salt = os.urandom(SALT_BYTES)
    revision: list[str] = []
    with tempfile.TemporaryDirectory(prefix="crm-backup-") as staging:
        parts: list[Part] = []
        paths: list[Path] = []
        for store, holds in stores:
            part = Part(name=store.name, kind=store.kind, holds=holds)
            staged = Path(staging) / f"{store.name}.{store.kind}"
            if store.kind == SQLITE:
                await _stage_sqlite(store, staged, part)
                if CRM in holds:
                    found = await asyncio.to_thread(_sqlite_revision, staged)
                    revision.extend([found] if found else [])
                staged = await asyncio.to_thread(_compress, staged)
                part.compression = ZLIB
            else:
                await _stage_pg(store, staged, part, revision)
            parts.append(part)
            paths.append(staged)
        if not revision:
            raise BackupRefused("the CRM database has no schema revision: run python -m crm_backend migrate first")
        payload = hashlib.sha256()
        for part, path in zip(parts, paths, strict=True):
            own = hashlib.sha256()
            part.bytes = await asyncio.to_thread(_hash_file, path, [own, payload])
            part.sha256 = own.hexdigest()
        manifest = Manifest(
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            schema_revision=revision[0],
            key_id=key_id(key),
            salt=salt.hex(),
            parts=parts,
            payload_bytes=sum(part.bytes for part in parts),
            payload_sha256=payload.hexdigest(),
            chunk_bytes=chunk_bytes,
        )
        size = await asyncio.to_thread(_write_encrypted, out, key, manifest, salt, paths)
    return BackupResult(out, manifest, size, time.perf_counter() - started)


# --- restore -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreResult:
    """A restored backup: the manifest and where each part went."""

    manifest: Manifest
    targets: dict[str, str]
    seconds: float


def _open_checked(stream: BinaryIO, key: bytes) -> tuple[Manifest, AESGCM, bytes]:
    """Read the header and refuse a file made with another key or with an altered manifest."""
    header, manifest, mac = _read_header(stream)
    if manifest.format != FORMAT or manifest.version != VERSION:
        raise BackupRefused(f"format {manifest.format} v{manifest.version} is not one this code reads")
    if manifest.key_id != key_id(key):
        raise BackupRefused(
            f"the file was made with key {manifest.key_id}; BACKUP_KEY is key {key_id(key)} (wrong key)"
        )
    try:
        salt = bytes.fromhex(manifest.salt)
    except ValueError as error:
        raise BackupRefused("the manifest is damaged (salt)") from error
    cipher, mac_key = _file_keys(key, salt)
    if not hmac.compare_digest(mac, hmac.new(mac_key, header, hashlib.sha256).digest()):
        raise BackupRefused("the manifest does not match its MAC: the file was altered (or the key is wrong)")
    manifest.check_parts()
    if not 0 < manifest.chunk_bytes <= MAX_CHUNK_BYTES:
        raise BackupRefused(f"chunks of {manifest.chunk_bytes} bytes are not a size this code reads")
    return manifest, cipher, hashlib.sha256(header).digest()


def _decrypt_payload(
    stream: BinaryIO, manifest: Manifest, cipher: AESGCM, digest: bytes, paths: Sequence[Path]
) -> None:
    """Decrypt every chunk into the parts' files, checking tags, order, end and checksums."""
    payload = hashlib.sha256()
    sizes = [part.bytes for part in manifest.parts]
    outputs = [path.open("wb") for path in paths]
    owns = [hashlib.sha256() for _ in paths]
    current, written, index, final = 0, 0, 0, False
    try:
        while not final:
            prefix = stream.read(4)
            if len(prefix) != 4:
                raise BackupRefused(f"the file is truncated: it ends after chunk {index - 1} without its final chunk")
            (length,) = struct.unpack(">I", prefix)
            if length > manifest.chunk_bytes + TAG_BYTES:
                raise BackupRefused(f"chunk {index} is damaged (length {length})")
            nonce = _read_exact(stream, NONCE_BYTES, f"chunk {index}")
            sealed = stream.read(length)
            if len(sealed) != length:
                raise BackupRefused(f"the file is truncated (in chunk {index})")
            block: bytes | None = None
            for final in (False, True):
                try:
                    block = cipher.decrypt(nonce, sealed, _associated_data(digest, index, final))
                    break
                except InvalidTag:
                    continue
            if block is None:
                raise BackupRefused(f"chunk {index} fails authentication: the file was altered or reordered")
            payload.update(block)
            view = memoryview(block)
            while view:
                while current < len(sizes) and written == sizes[current]:
                    current, written = current + 1, 0
                if current == len(sizes):
                    raise BackupRefused("the payload is longer than the manifest says")
                take = min(len(view), sizes[current] - written)
                outputs[current].write(view[:take])
                owns[current].update(view[:take])
                written += take
                view = view[take:]
            index += 1
        if stream.read(1):
            raise BackupRefused("the file has data after its final chunk")
    finally:
        for output in outputs:
            output.close()
    if payload.hexdigest() != manifest.payload_sha256:
        raise BackupRefused("the payload's SHA-256 does not match the manifest's checksum")
    for part, own in zip(manifest.parts, owns, strict=True):
        if own.hexdigest() != part.sha256:
            raise BackupRefused(f"the {part.name} part's SHA-256 does not match the manifest")


def _create_private(path: Path) -> None:
    """Make a new SQLite target (and its directory) readable by its owner only, as `bin/setup` makes var/.

    SQLite gives its -wal and -shm files the database file's mode.
    """
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _sqlite_is_empty(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return True
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return not _sqlite_tables(connection)
    finally:
        connection.close()


async def _pg_tables(store: Store) -> dict[str, int]:
    connection = await _pg_connect(store.url)
    try:
        return await _pg_counts(connection)
    finally:
        await connection.close()


async def _restore_pg(store: Store, staged: Path, force: bool) -> None:
    connection = await _pg_connect(store.url)
    try:
        major = connection.get_server_version().major
    finally:
        await connection.close()
    command = [
        str(pg_tool("pg_restore", major)),
        "--exit-on-error",
        "--single-transaction",
        "--no-owner",
        "--no-privileges",
        f"--dbname={_pg_dsn(store.url)}",
    ]
    if force:
        command[1:1] = ["--clean", "--if-exists"]
    await _run([*command, str(staged)], _pg_env(store.url), f"pg_restore into the {store.name} database")


def _target_for(part: Part, crm: Store, tracker: Store | None) -> Store:
    if CRM in part.holds:
        return crm
    if tracker is None:
        raise BackupRefused("the backup holds a tracker store but no TRACKER_STORE_URL target was given")
    return tracker


async def restore_backup(
    path: Path, key: bytes, database_url: str, tracker_url: str | None, *, force: bool = False
) -> RestoreResult:
    """Restore a backup file into the CRM database (and the tracker store).

    Nothing is changed unless the key, the manifest, the schema revision, every chunk and the
    checksums are right and the targets are empty (or `force`).

    Raises:
        BackupRefused: the file or a target is refused (nothing changed), or a restore tool
            failed (PostgreSQL: its transaction was rolled back).
    """
    started = time.perf_counter()
    crm = Store.parse(CRM, database_url)
    tracker = Store.parse(TRACKER, tracker_url) if tracker_url else None
    try:
        stream = path.open("rb")
    except OSError as error:
        raise BackupRefused(f"cannot read {path}: {error.strerror}") from error
    with stream, tempfile.TemporaryDirectory(prefix="crm-restore-") as staging:
        manifest, cipher, digest = _open_checked(stream, key)
        head = head_revision()
        if manifest.schema_revision != head:
            raise BackupRefused(
                f"the backup is of schema revision {manifest.schema_revision}; this code's is {head}: "
                "restore it with the code of that revision"
            )
        targets = [_target_for(part, crm, tracker) for part in manifest.parts]
        for part, target in zip(manifest.parts, targets, strict=True):
            if part.kind != target.kind:
                raise BackupRefused(
                    f"the {part.name} part is {ENGINES[part.kind]}; its target {target.describe()} is "
                    f"{ENGINES[target.kind]}"
                )
            if force:
                continue
            if target.kind == SQLITE:
                empty = await asyncio.to_thread(_sqlite_is_empty, target.path)
            else:
                empty = not await _pg_tables(target)
            if not empty:
                raise BackupRefused(f"{target.describe()} is not empty; restore into an empty one, or add --force")
        staged = [Path(staging) / f"{part.name}.{part.kind}.{part.compression}" for part in manifest.parts]
        await asyncio.to_thread(_decrypt_payload, stream, manifest, cipher, digest, staged)
        for part, target, source in zip(manifest.parts, targets, staged, strict=True):
            if part.compression == ZLIB:
                source = await asyncio.to_thread(_decompress, source)
            if target.kind == SQLITE:
                _create_private(target.path)
                await asyncio.to_thread(_sqlite_copy, source, target.path)
                counts = await asyncio.to_thread(_sqlite_counts, target.path)
            else:
                await _restore_pg(target, source, force)
                counts = await _pg_tables(target)
            wrong = {t: (n, counts.get(t)) for t, n in part.tables.items() if counts.get(t) != n}
            if wrong:
                raise BackupRefused(f"restored {part.name} row counts differ from the manifest: {wrong}")
    return RestoreResult(
        manifest,
        {part.name: target.describe() for part, target in zip(manifest.parts, targets, strict=True)},
        time.perf_counter() - started,
    )
