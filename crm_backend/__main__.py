"""Operator commands: ``python -m crm_backend COMMAND``.

Commands: migrate, stats, create-user, create-api-client, revoke-api-client, classify-types,
score-replies, hot-issues, import-messages, backup, restore, rotate-key, audit verify,
retention, export-citizen, forget-citizen, open-data.

``audit verify`` walks the audit log's hash chain (`crm_backend.audit_chain`) in batches and
prints ``audit chain OK: N rows`` (exit code 0), or the first broken row and why (exit code 1).

``migrate`` brings the database to the code's schema: every pending Alembic migration, then the
idempotent seeds (departments and routing rules, the knowledge base); run it before starting
the app (`bin/run` does), which refuses a database that is not at the head revision. Running
it again changes nothing.

``create-user`` reads the password from a prompt (twice) or, when standard input is not a
terminal, from its first line, never from an argument that would land in shell history.
``create-api-client`` prints the new client's key, alone, on standard output (so a script can
capture it) and a note on standard error; the key is not stored and cannot be shown again.
``classify-types`` gives the cases filed before case types existed their recognised type
(the model at ``CASE_TYPE_MODEL_PATH``); cases that have a type are left alone.
``score-replies`` gives staff replies and 办结 results their 答复质量 score, in batches: those
without one (written before scoring existed, or imported) or scored by an older scorer;
``--all`` rescores every one.

``hot-issues`` ranks the hot issues of a window of China dates: of the cases (and stores
the ranking as the dashboard's cache for that window), or of a message-board CSV (``--file``,
no database needed).

``import-messages FILE.csv`` loads a message-board file (``crm_backend/data/history/``) as
historical cases (`crm_backend.importer`): the whole file is checked first, and a file with a
bad row is refused with each bad row's line (exit code 2) and nothing imported; a message
imported before is skipped. Exit code 1: the dispatch models cannot be loaded.

``backup --out FILE`` writes the CRM database and the engine's tracker store
(``TRACKER_STORE_URL``, else what ``bin/env.sh`` derives) into one file encrypted with
``BACKUP_KEY`` (`crm_backend.backup`), from a running system. ``restore FILE [--force]``
puts them back into empty databases (``--force``: over non-empty ones); a file with the wrong
key, an altered or truncated byte, or another schema revision than the code's is refused with
nothing changed (exit code 1).

``rotate-key`` re-encrypts every encrypted value of the CRM and of the engine's tracker store
(``TRACKER_STORE_URL``, as for ``backup``) under ``DATA_KEY_CURRENT``, in short batches, while
the system runs (`crm_backend.rotation`); plain tracker rows from before encryption are
encrypted too. Exit code 1 when values are left under another key afterwards (a process still
running with the old current key: restart it and run the command again).
``retention`` applies the retention periods now (what the app's daily job does) and prints
what it removed. ``export-citizen`` writes everything held about one citizen as JSON (an access
request; ``--out FILE`` or standard output); ``forget-citizen`` removes or pseudonymises every
trace of them in the CRM and the tracker store. Both name the citizen by ``--citizen ID`` or by
one of their cases (``--case NUMBER``), and both are audited as the command line.

``open-data --month YYYY-MM --out DIR`` writes the month's open dataset (Beijing time; default
last month) as ``DIR/cases-YYYY-MM.csv`` and ``.json`` (`crm_backend.services.open_data`): no
personal data, cells under ``--min-cell`` cases (default 5) generalised; audited with the
operating-system user. A malformed month is refused with exit code 2; a directory that cannot
be written, exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from datetime import date, timedelta
from pathlib import Path

from crm_backend import audit_chain, backup, rotation, schema
from crm_backend.crypto import KeyRing, KeyRingError
from crm_backend.db import create_engine, create_sessionmaker, upgrade_database
from crm_backend.dispatch.classifier import ModelLoadError
from crm_backend.dispatch.routing import seed_routing
from crm_backend.errors import CrmError
from crm_backend.hotissues import service as hot_service
from crm_backend.hotissues.core import Decisions, HotIssue
from crm_backend.hotissues.sources import BoardFileError, gazetteer_locate, in_window, read_board_csv
from crm_backend.importer import HistoryFileError, ImportSummary, import_messages, read_messages
from crm_backend.lifecycle import STATUS_LABELS, CaseStatus, Role
from crm_backend.services import api_clients, audit, cases, open_data, privacy, reply_scores, retention, staff
from crm_backend.services.api_clients import ApiScope
from crm_backend.services.stats import collect_stats
from crm_backend.settings import (
    RetentionSettings,
    SettingsError,
    backup_key_from_env,
    case_type_model_path_from_env,
    category_model_path_from_env,
    database_url_from_env,
    normalise_database_url,
    tracker_store_url_from_env,
)

EXIT_BAD_FILE = 2
MAX_PROBLEMS_SHOWN = 50


async def _stats(database_url: str) -> dict[str, object]:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            return await collect_stats(session)
    finally:
        await engine.dispose()


async def _create_user(database_url: str, args: argparse.Namespace, password: str) -> str:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine).begin() as session:
            await seed_routing(session)  # departments must exist to put an agent in one
            user = await staff.create_user(
                session,
                username=args.username,
                display_name=args.display_name or args.username,
                password=password,
                role=args.role,
                department_code=args.department,
            )
            audit.record(session, None, "user.create", user.username, user.role, actor_name="cli")
            return user.username
    finally:
        await engine.dispose()


async def _verify_audit(database_url: str) -> audit_chain.ChainReport:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            return await audit_chain.verify_chain(session)
    finally:
        await engine.dispose()


def _print_audit_report(report: audit_chain.ChainReport) -> int:
    if report.ok:
        print(f"audit chain OK: {report.checked} rows")
        return 0
    where = f"row {report.broken_id}" if report.broken_id is not None else "the end"
    print(f"audit chain BROKEN at {where}: {report.reason} ({report.checked} rows before it are intact)")
    return 1


async def _create_api_client(database_url: str, name: str, scope: str) -> api_clients.IssuedKey:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine).begin() as session:
            issued = await api_clients.create_client(session, name=name, scope=scope)
            return issued
    finally:
        await engine.dispose()


async def _revoke_api_client(database_url: str, name: str) -> None:
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine).begin() as session:
            await api_clients.revoke_client(session, (await api_clients.client_named(session, name)).id)
    finally:
        await engine.dispose()


async def _classify_types(database_url: str) -> int:
    from crm_backend.dispatch.case_type import CaseTypeRecogniser

    recogniser = CaseTypeRecogniser.load(case_type_model_path_from_env())
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine).begin() as session:
            return await cases.classify_untyped_cases(session, recogniser)
    finally:
        await engine.dispose()


async def _score_replies(database_url: str, everything: bool) -> reply_scores.RescoreResult:
    engine = create_engine(database_url)
    try:
        return await reply_scores.rescore(create_sessionmaker(engine), everything=everything)
    finally:
        await engine.dispose()


async def _import_messages(database_url: str, path: Path) -> ImportSummary:
    """Check the file, then load the desk's models and import it in one transaction.

    Raises:
        HistoryFileError: the file is refused (nothing was imported).
        ModelLoadError: a dispatch model is missing.
    """
    from crm_backend.dispatch.service import Dispatcher

    messages = read_messages(path)
    desk = await asyncio.to_thread(
        Dispatcher.load, category_model_path_from_env(), case_type_model_path=case_type_model_path_from_env()
    )
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine).begin() as session:
            await seed_routing(session)
        async with create_sessionmaker(engine).begin() as session:
            return await import_messages(session, desk, messages, source_file=path.name)
    finally:
        await engine.dispose()


async def _hot_issues_of_cases(
    database_url: str, since: date, until: date, places: bool, top: int
) -> tuple[list[HotIssue], int]:
    engine = create_engine(database_url)
    try:
        sessions = create_sessionmaker(engine)
        snapshot = await hot_service.refresh_snapshot(
            sessions, since, until, locate=gazetteer_locate() if places else None
        )
        async with sessions() as session:
            return await hot_service.snapshot_issues(session, snapshot, limit=top), snapshot.message_count
    finally:
        await engine.dispose()


def _hot_issues(args: argparse.Namespace, database_url: str) -> int:
    since: date = args.since or args.until - timedelta(days=29)
    if args.file:
        try:
            records = in_window(read_board_csv(args.file), since, args.until)
        except BoardFileError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        issues = hot_service.rank_records(
            records,
            Decisions(),
            until=args.until,
            locate=gazetteer_locate() if args.places else None,
            limit=args.top,
        )
        count = len(records)
    else:
        upgrade_database(database_url)
        issues, count = asyncio.run(_hot_issues_of_cases(database_url, since, args.until, args.places, args.top))
    if args.json:
        result = {
            "since": since.isoformat(),
            "until": args.until.isoformat(),
            "source": str(args.file) if args.file else "cases",
            "messages": count,
            "issues": [issue.to_json() for issue in issues],
        }
        json.dump(result, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    print("rank  heat  messages  citizens  likes  from        to          place/terms  description")
    for rank, issue in enumerate(issues, 1):
        where = issue.place or "、".join(issue.terms) or "-"
        print(
            f"{rank:>4}  {issue.heat:>6.2f}  {issue.messages:>4}  {issue.citizens:>4}  {issue.likes:>5}  "
            f"{issue.first_at:%Y-%m-%d}  {issue.last_at:%Y-%m-%d}  {where}  {issue.description}"
            + ("  [预警]" if issue.alert else "")
        )
    return 0


def _print_import(path: Path, summary: ImportSummary) -> None:
    print(f"{path.name}: {summary.rows} rows in {summary.seconds:.1f} s")
    print(f"  new cases            {summary.new_cases}")
    again = "  (nothing new: the file was imported before)" if summary.rows == summary.skipped else ""
    print(f"  already imported     {summary.skipped}{again}")
    print(f"  resolved with reply  {summary.replies}")
    print(f"  unanswered, no dept  {summary.queued}  (history: not put in 待派单)")
    print(f"  new citizens         {summary.new_citizens}")
    for category, n in summary.by_category.items():
        print(f"  {category}  {n}")


def _backup_or_restore(args: argparse.Namespace, database_url: str) -> int:
    try:
        key = backup_key_from_env()
        tracker_url = tracker_store_url_from_env()
        if args.command == "backup":
            done = asyncio.run(backup.create_backup(database_url, tracker_url, key, args.out))
            manifest, seconds = done.manifest, done.seconds
            print(f"wrote {done.path}: {done.file_bytes:,} bytes in {seconds:.1f} s")
        else:
            restored = asyncio.run(backup.restore_backup(args.file, key, database_url, tracker_url, force=args.force))
            manifest, seconds = restored.manifest, restored.seconds
            print(f"restored {args.file} (made {manifest.created_at}) in {seconds:.1f} s")
    except (SettingsError, CrmError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"  schema revision {manifest.schema_revision}, key {manifest.key_id}, sha256 {manifest.payload_sha256}")
    for part in manifest.parts:
        rows = sum(part.tables.values())
        holds = "+".join(part.holds)
        print(f"  {holds:<12} {part.kind:<8} {len(part.tables):>3} tables {rows:>12,} rows {part.bytes:>14,} bytes")
    return 0


async def _citizen_of(database_url: str, args: argparse.Namespace) -> int:
    """The citizen an operator named by id or by one of their cases.

    Raises:
        NotFound: no such citizen or case.
    """
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            if args.case is not None:
                return (await cases.get_case(session, args.case)).citizen_id
            return int(args.citizen)
    finally:
        await engine.dispose()


async def _privacy(database_url: str, args: argparse.Namespace) -> dict[str, object]:
    citizen_id = await _citizen_of(database_url, args)
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine).begin() as session:
            if args.command == "export-citizen":
                return await privacy.export_citizen(session, citizen_id, None)
            forgotten = await privacy.forget_citizen(
                session, citizen_id, None, tracker_store_url=tracker_store_url_from_env()
            )
            return {"citizen": citizen_id, **forgotten.as_dict()}
    finally:
        await engine.dispose()


def _privacy_command(args: argparse.Namespace, database_url: str) -> int:
    upgrade_database(database_url)
    try:
        result = asyncio.run(_privacy(database_url, args))
    except CrmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    text = json.dumps(result, ensure_ascii=False, indent=2)
    if args.command == "export-citizen" and args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


async def _retention(database_url: str) -> retention.RetentionReport:
    engine = create_engine(database_url)
    try:
        return await retention.apply_retention(
            create_sessionmaker(engine),
            RetentionSettings.from_env(os.environ),
            tracker_store_url=tracker_store_url_from_env(),
        )
    finally:
        await engine.dispose()


def _month(text: str) -> open_data.Period:
    """argparse's reading of ``--month``: a bad one is a usage error (exit code 2) that says why."""
    try:
        return open_data.Period.month(text)
    except CrmError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return f"uid {os.getuid()}"


async def _open_data(database_url: str, args: argparse.Namespace) -> open_data.Written:
    engine = create_engine(database_url)
    try:
        return await open_data.write_dataset(
            create_sessionmaker(engine), args.month, args.out, exported_by=_operator(), min_cell=args.min_cell
        )
    finally:
        await engine.dispose()


def _open_data_command(args: argparse.Namespace, database_url: str) -> int:
    upgrade_database(database_url)
    try:
        written = asyncio.run(_open_data(database_url, args))
    except (CrmError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    csv_path, json_path = written.paths
    print(
        f"wrote {csv_path} and {json_path}: {written.rows} cases filed in {written.period.label} (Beijing time), "
        f"{written.generalised} in cells under {written.min_cell} generalised"
    )
    return 0


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise CrmError("the two passwords differ")
    return first


def _print_stats(stats: dict[str, object]) -> None:
    print(f"citizens       {stats['citizens']}")
    print(f"conversations  {stats['conversations']}")
    print(f"messages       {stats['messages']}")
    print(f"cases          {stats['cases']}")
    by_status = stats["cases_by_status"]
    assert isinstance(by_status, dict)
    for code, n in by_status.items():
        print(f"  {STATUS_LABELS[CaseStatus(code)]} ({code})  {n}")


async def _rotate_key(database_url: str, tracker_url: str, ring: KeyRing) -> rotation.RotationReport:
    crm = create_engine(database_url)
    tracker = create_engine(normalise_database_url(tracker_url)) if tracker_url else None
    try:
        await schema.ensure_current(crm)
        return await rotation.rotate_everything(crm, tracker, ring)
    finally:
        await crm.dispose()
        if tracker is not None:
            await tracker.dispose()


def _rotate_key_command(database_url: str) -> int:
    try:
        ring = KeyRing.from_env()
        report = asyncio.run(_rotate_key(database_url, tracker_store_url_from_env(), ring))
    except (KeyRingError, CrmError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, count in report.rewritten.items():
        if count or report.remaining.get(name):
            print(f"{name}: {count} re-encrypted, {report.remaining.get(name, 0)} left")
    print(f"re-encrypted {report.total_rewritten} values under key {ring.current}")
    if report.total_remaining:
        print(
            f"error: {report.total_remaining} values are still under another key: a process still writes with an "
            f"older DATA_KEY_CURRENT; restart every app and engine with DATA_KEY_CURRENT={ring.current} and run again",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one operator command; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m crm_backend")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply pending database migrations and load the seed data")
    stats = commands.add_parser("stats", help="count citizens, conversations, messages and cases")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    create = commands.add_parser("create-user", help="add a console user (password from a prompt or stdin)")
    create.add_argument("--username", required=True)
    create.add_argument("--display-name", help="the name citizens see on replies (default: the username)")
    create.add_argument("--role", required=True, choices=[role.value for role in Role])
    create.add_argument("--department", help="department code, required for agents (e.g. A-hotline)")
    client = commands.add_parser("create-api-client", help="add an /api/v1 client; prints its key once")
    client.add_argument("--name", required=True, help="3-32 lower-case letters, digits, . _ - (audited as api:NAME)")
    client.add_argument("--scope", required=True, choices=[scope.value for scope in ApiScope])
    revoke = commands.add_parser("revoke-api-client", help="refuse an /api/v1 client's key from now on")
    revoke.add_argument("--name", required=True)
    commands.add_parser("classify-types", help="give cases filed before case types their recognised type")
    score = commands.add_parser("score-replies", help="score replies and 办结 results that have no 答复质量 score")
    score.add_argument("--all", action="store_true", help="rescore every reply, not only unscored or outdated ones")
    hot = commands.add_parser("hot-issues", help="rank the hot issues of a window (cases, or a board CSV)")
    hot.add_argument("--since", type=date.fromisoformat, help="first China date, YYYY-MM-DD (default: 30 days)")
    hot.add_argument("--until", type=date.fromisoformat, help="last China date, YYYY-MM-DD (default: today)")
    hot.add_argument("--top", type=int, default=10, help="how many issues to print (default 10)")
    hot.add_argument("--json", action="store_true", help="print one JSON object, every message of each issue")
    hot.add_argument("--file", help="a message-board CSV (msg_id,user,title,time,detail[,likes]) instead of cases")
    hot.add_argument("--no-places", dest="places", action="store_false", help="skip the gazetteer (faster)")
    history = commands.add_parser("import-messages", help="load a message-board CSV as historical cases")
    history.add_argument(
        "file", type=Path, help="columns msg_id,user,title,time,detail + likes,dislikes or reply,reply_time"
    )
    dump = commands.add_parser("backup", help="write an encrypted backup of the CRM database and the tracker store")
    dump.add_argument("--out", required=True, type=Path, help="the file to write (BACKUP_KEY encrypts it)")
    restore = commands.add_parser("restore", help="restore a backup into empty databases")
    restore.add_argument("file", type=Path, help="a file written by backup")
    restore.add_argument("--force", action="store_true", help="overwrite databases that are not empty")
    commands.add_parser("rotate-key", help="re-encrypt personal data (CRM and tracker store) under DATA_KEY_CURRENT")
    audit_parser = commands.add_parser("audit", help="the audit log")
    audit_commands = audit_parser.add_subparsers(dest="audit_command", required=True)
    audit_commands.add_parser("verify", help="check the audit log's hash chain; exit code 1 names the first broken row")
    commands.add_parser("retention", help="apply the retention periods now (the app does it daily)")
    for name, what in (
        ("export-citizen", "write everything held about one citizen as JSON (an access request)"),
        ("forget-citizen", "remove or pseudonymise every trace of one citizen (an erasure request)"),
    ):
        command = commands.add_parser(name, help=what)
        who = command.add_mutually_exclusive_group(required=True)
        who.add_argument("--citizen", type=int, help="the citizen's id (the console's privacy requests show it)")
        who.add_argument("--case", help="one of the citizen's case numbers")
        if name == "export-citizen":
            command.add_argument("--out", type=Path, help="the file to write (default: standard output)")
    published = commands.add_parser("open-data", help="write a month's open dataset (CSV and JSON, no personal data)")
    published.add_argument("--month", type=_month, help="YYYY-MM, Beijing time (default: last month)", default=None)
    published.add_argument("--out", required=True, type=Path, help="directory for cases-YYYY-MM.csv and .json")
    published.add_argument(
        "--min-cell",
        type=int,
        default=open_data.MIN_CELL,
        help=f"generalise district × category × type cells with fewer cases (default {open_data.MIN_CELL}; 1: none)",
    )
    args = parser.parse_args(argv)
    if args.command == "open-data":
        args.month = args.month or open_data.last_month()
        if args.min_cell < 1:
            parser.error("--min-cell must be at least 1")
    if args.command == "hot-issues":
        args.until = args.until or hot_service.default_window(1)[1]
        if args.since is not None and args.since > args.until:
            parser.error("--until is before --since")
        if args.top < 1:
            parser.error("--top must be at least 1")

    database_url = database_url_from_env()
    if args.command == "migrate":
        migrated = asyncio.run(schema.migrate(database_url))
        print(
            f"database at revision {migrated.after} (was {migrated.before or 'empty'}); "
            f"routing {'loaded' if migrated.seeded_routing else 'kept'}, "
            f"knowledge base {'loaded' if migrated.seeded_knowledge else 'kept'}"
        )
        return 0
    if args.command == "create-user":
        upgrade_database(database_url)
        try:
            username = asyncio.run(_create_user(database_url, args, _read_password()))
        except CrmError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"created {args.role} {username}")
        return 0
    if args.command == "create-api-client":
        upgrade_database(database_url)
        try:
            issued = asyncio.run(_create_api_client(database_url, args.name, args.scope))
        except CrmError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(
            f"created {issued.client.scope} API client {issued.client.name} ({issued.client.key_prefix}); "
            "its key follows and is shown only this once",
            file=sys.stderr,
        )
        print(issued.key)
        return 0
    if args.command == "revoke-api-client":
        upgrade_database(database_url)
        try:
            asyncio.run(_revoke_api_client(database_url, args.name))
        except CrmError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"revoked API client {args.name}")
        return 0
    if args.command == "hot-issues":
        return _hot_issues(args, database_url)
    if args.command == "audit":
        upgrade_database(database_url)
        return _print_audit_report(asyncio.run(_verify_audit(database_url)))
    if args.command in ("backup", "restore"):
        return _backup_or_restore(args, database_url)
    if args.command == "rotate-key":
        return _rotate_key_command(database_url)
    if args.command in ("export-citizen", "forget-citizen"):
        return _privacy_command(args, database_url)
    if args.command == "open-data":
        return _open_data_command(args, database_url)
    if args.command == "retention":
        upgrade_database(database_url)
        try:
            report = asyncio.run(_retention(database_url))
        except SettingsError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        for key, value in report.as_dict().items():
            print(f"{key:<28} {value:>10,}")
        return 0
    if args.command == "classify-types":
        upgrade_database(database_url)
        try:
            count = asyncio.run(_classify_types(database_url))
        except ModelLoadError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"classified {count} cases")
        return 0
    if args.command == "score-replies":
        upgrade_database(database_url)
        done = asyncio.run(_score_replies(database_url, args.all))
        print(f"scored {done.scored} replies in {done.batches} batches")
        return 0
    if args.command == "import-messages":
        upgrade_database(database_url)
        try:
            summary = asyncio.run(_import_messages(database_url, args.file))
        except HistoryFileError as error:
            for problem in error.problems[:MAX_PROBLEMS_SHOWN]:
                print(f"{args.file}: {problem}", file=sys.stderr)
            if len(error.problems) > MAX_PROBLEMS_SHOWN:
                print(f"… and {len(error.problems) - MAX_PROBLEMS_SHOWN} more", file=sys.stderr)
            print(f"error: {error}; nothing imported", file=sys.stderr)
            return EXIT_BAD_FILE
        except (ModelLoadError, CrmError) as error:
            print(f"error: {error}; nothing imported", file=sys.stderr)
            return 1
        _print_import(args.file, summary)
        return 0
    upgrade_database(database_url)
    result = asyncio.run(_stats(database_url))
    if args.json:
        json.dump(result, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        _print_stats(result)
    return 0


if __name__ == "__main__":
    # A database the command creates (SQLite) holds citizens' data: owner only, however it was started.
    os.umask(0o077)
    sys.exit(main())
