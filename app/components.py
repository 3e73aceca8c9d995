"""The app's resources, each opened and closed by one aiohttp cleanup context.

`init_app` (`app/factory.py`) builds the object graph and registers the routes before the
app starts; nothing in it connects or loads. What does connect, load or run is here, one
async generator per resource, in the order the app enters them at start (and leaves them,
reversed, at cleanup):

1. `database`: the SQLAlchemy engine; checks the schema is at the head revision and refuses to
   start otherwise (``python -m crm_backend migrate`` brings it there); binds the sessions.
2. `http_client`: the aiohttp client session the engine client talks through.
3. `models`: the dispatcher (category, case type, gazetteer), the letter gate's model, the
   knowledge base's warm-up; the bundled category model is registered as the first version when
   the database has none, and the current version is served (`crm_backend.services.model_versions`).
4. `live_connections`: the shared state of this process (see `SharedState`); at cleanup it
   closes the citizens' open web chats.
5. `followup_loop`, `engine_replay_loop`, `hot_issue_job`, `retention_job`, `category_model_jobs`:
   the background loops.
6. `task_dump`: ``kill -USR1 <pid>`` logs the stack of every task the app is running (what a
   request that never ends is waiting for), and the app goes on.

The components built before start that need a resource opened here hold it indirectly: the
session factory is bound when the engine exists; the engine client asks ``app[http_key]``
for its session; the dispatcher and the letter gate are built empty (`StartupDesk`,
`StartupLetterGate`) and given their models by `models`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.settings import Settings
from bot.followup import CaseFollowup
from bot.hub import ConversationHub
from bot.letters import LetterGate, LetterKindModel
from bot.replay import EngineReplay
from crm_backend.console.feed import LiveFeed
from crm_backend.db import create_engine
from crm_backend.dispatch.service import Dispatcher
from crm_backend.hotissues.service import HotIssueJob
from crm_backend.memory import release_free_memory
from crm_backend.schema import SchemaNotCurrent, ensure_current
from crm_backend.services.knowledge import KnowledgeBase
from crm_backend.services.model_versions import ModelFollower, RetrainJob, ensure_registered
from crm_backend.services.retention import RetentionJob
from crm_backend.shared import ProcessState, open_shared_state

logger = logging.getLogger(__name__)


class StartupDesk(Dispatcher):
    """The dispatcher the actions, the console and the hot-issue job are built with.

    It has no models until the `models` context loads them and calls `adopt` (the app
    serves nothing before that); a call before then raises AttributeError.
    """

    def __init__(self) -> None:  # the models come at start, through `adopt`
        pass

    def adopt(self, loaded: Dispatcher) -> None:
        """Take the loaded dispatcher's models, gazetteer and keywords."""
        vars(self).update(vars(loaded))


class StartupLetterGate(LetterGate):
    """The letter gate the pipeline is built with; the `models` context loads its model."""

    def __init__(self) -> None:  # the model comes at start, through `adopt`
        pass

    def adopt(self, loaded: LetterGate) -> None:
        """Take the loaded gate's model."""
        vars(self).update(vars(loaded))


@dataclass(frozen=True)
class SharedState:
    """What the app's handlers share in the moment: open web chats (`hub`), the consoles' live
    feed, and what app processes share (`across`: per-sender locks, fan-out, leases).

    Built by `shared_state`, the one place that chooses the implementations: in-process for the
    embedded default (one app process), Redis when ``REDIS_URL`` is set (`crm_backend.shared`).
    Redis is opened by the `processes` cleanup context, entered before `live_connections`.
    """

    hub: ConversationHub
    feed: LiveFeed
    across: ProcessState  # sender locks, fan-out and leases: in this process, or through Redis


def shared_state(settings: Settings) -> SharedState:
    """The shared state for this process's settings: in-process, or through Redis when ``REDIS_URL`` is set."""
    across = open_shared_state(settings.redis_url)
    return SharedState(hub=ConversationHub(across.fanout), feed=LiveFeed(across.fanout), across=across)


settings_key = web.AppKey("settings", Settings)
database_key = web.AppKey("database", AsyncEngine)
sessions_key = web.AppKey("sessions", async_sessionmaker[AsyncSession])
http_key = web.AppKey("http", aiohttp.ClientSession)
desk_key = web.AppKey("desk", StartupDesk)
letters_key = web.AppKey("letters", StartupLetterGate)
knowledge_key = web.AppKey("knowledge", KnowledgeBase)
shared_key = web.AppKey("shared_state", SharedState)
followups_key = web.AppKey("followups", CaseFollowup)
replay_key = web.AppKey("engine_replay", EngineReplay)
hot_issues_key = web.AppKey("hot_issues", HotIssueJob)
retention_key = web.AppKey("retention", RetentionJob)
model_follower_key = web.AppKey("model_follower", ModelFollower)
retrain_key = web.AppKey("category_retrain", RetrainJob)


async def database(app: web.Application) -> AsyncIterator[None]:
    """The database engine: refuses to start on a schema that is not at head; disposed at cleanup.

    Raises:
        SchemaNotCurrent: the database was not migrated (logged: run ``python -m crm_backend migrate``).
    """
    engine = create_engine(app[settings_key].database_url)
    try:
        revision = await ensure_current(engine)
    except SchemaNotCurrent as error:
        logger.error("refusing to start: %s", error)
        await engine.dispose()
        raise
    except BaseException:
        await engine.dispose()
        raise
    logger.info("database at schema revision %s", revision)
    app[database_key] = engine
    app[sessions_key].configure(bind=engine)
    yield
    await engine.dispose()


async def http_client(app: web.Application) -> AsyncIterator[None]:
    """The HTTP client session to the engine; closed at cleanup."""
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    app[http_key] = http
    yield
    await http.close()


async def models(app: web.Application) -> AsyncIterator[None]:
    """Load the dispatcher's and the letter gate's models (in threads), then warm up the knowledge base.

    Raises:
        ModelLoadError: a model is missing (``bin/setup`` trains them).
    """
    settings = app[settings_key]
    started = time.perf_counter()
    desk = await asyncio.to_thread(
        Dispatcher.load, settings.category_model_path, case_type_model_path=settings.case_type_model_path
    )
    app[desk_key].adopt(desk)
    artifact = await asyncio.to_thread(settings.category_model_path.read_bytes)
    await ensure_registered(app[sessions_key], desk.classifier, artifact, decided_by="bundled")
    await app[model_follower_key].sync()  # the current version, if another one than the bundled
    app[letters_key].adopt(LetterGate(await asyncio.to_thread(LetterKindModel.load, settings.letter_model_path)))
    await app[knowledge_key].warm_up()
    # Loading and training leave their temporaries' memory with the allocator: give it back.
    await asyncio.to_thread(release_free_memory)
    logger.info("models loaded in %.2fs", time.perf_counter() - started)
    yield


async def processes(app: web.Application) -> AsyncIterator[None]:
    """What app processes share (Redis when ``REDIS_URL`` is set): listening starts once every
    listener has subscribed, and stops after the last live connection has closed."""
    across = app[shared_key].across
    await across.start()
    yield
    await across.close()


async def live_connections(app: web.Application) -> AsyncIterator[None]:
    """Citizens' open web chats, closed at cleanup (the consoles' streams end earlier, at shutdown)."""
    yield
    await app[shared_key].hub.close_all()


async def end_live_streams(app: web.Application) -> None:
    """``on_shutdown``: end every console's event stream.

    Not a cleanup context: cleanup runs after the server has waited for open requests, and an
    open stream would hold the shutdown for its whole timeout.
    """
    app[shared_key].feed.close()


async def followup_loop(app: web.Application) -> AsyncIterator[None]:
    """The case notices and the 回访 loop (off when ``FOLLOWUP_CHECK_SECONDS`` is 0)."""
    followups = app[followups_key]
    followups.start()
    yield
    await followups.stop()


async def engine_replay_loop(app: web.Application) -> AsyncIterator[None]:
    """The replay of messages the engine missed (off when ``ENGINE_REPLAY_SECONDS`` is 0)."""
    replay = app[replay_key]
    replay.start()
    yield
    await replay.stop()


async def task_dump(app: web.Application) -> AsyncIterator[None]:
    """On SIGUSR1, log where every task of the app is waiting; nothing is interrupted."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, _log_tasks)
    yield
    loop.remove_signal_handler(signal.SIGUSR1)


def _log_tasks() -> None:
    tasks = asyncio.all_tasks()
    out = io.StringIO()
    for task in tasks:
        out.write(f"--- {task.get_name()}: {task.get_coro()!r}\n")
        task.print_stack(limit=20, file=out)
    logger.warning("SIGUSR1: %d tasks\n%s", len(tasks), out.getvalue())


async def retention_job(app: web.Application) -> AsyncIterator[None]:
    """The daily retention job (off when ``RETENTION_RUN_SECONDS`` is 0)."""
    job = app[retention_key]
    job.start()
    yield
    await job.stop()


async def category_model_jobs(app: web.Application) -> AsyncIterator[None]:
    """This process follows the current category model (``CATEGORY_MODEL_CHECK_SECONDS``); one process
    retrains it weekly (``CATEGORY_RETRAIN_SECONDS``)."""
    follower, retrain = app[model_follower_key], app[retrain_key]
    follower.start()
    retrain.start()
    yield
    await retrain.stop()
    await follower.stop()


async def hot_issue_job(app: web.Application) -> AsyncIterator[None]:
    """The hot-issue ranking (off when ``HOT_ISSUES_REFRESH_SECONDS`` is 0)."""
    job = app[hot_issues_key]
    job.start()
    yield
    await job.stop()
