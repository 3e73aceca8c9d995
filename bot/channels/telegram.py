"""The Telegram channel: python-telegram-bot 22 inside the app's own aiohttp server.

Webhook mode (production): Telegram posts updates to ``POST /webhooks/telegram``; each call must
carry the secret token registered with ``setWebhook`` in ``X-Telegram-Bot-Api-Secret-Token``,
else it is refused with 403 before its body is read. Telegram does not resend an update it got a
200 for, so the route first stores the update (``telegram_update``, unique ``update_id``) and
only then answers 200; if it cannot be stored the answer is 503 and Telegram tries again later.
A resent ``update_id`` is acknowledged and not processed again. Updates are processed from the
stored rows in background tasks, one chat's in the order they came, and marked processed; rows
left unprocessed (a restart, a database blip) are taken up again at start and every
``RECOVERY_SECONDS``. An update is processed under its chat's lock, shared by every app process
when the locks are (`crm_backend.shared`), after the chat's older stored updates nobody has
processed yet (one stored by another process, still waiting or dead), and skipped if found
processed once the lock is held: the process that stored it and another's recovery pass never
both handle it, and a chat's updates are handled in the order they were stored.
Polling mode (a developer without a public URL): PTB's ``Updater`` asks
Telegram for updates, which are stored the same way before they are processed. Telegram lets
one client poll a bot (a second ``getUpdates`` ends the first with 409 Conflict), so with several
app processes only the holder of the ``telegram-polling`` lease (`crm_backend.shared.Leases`)
polls; another takes over when it stops (at once) or dies (within `POLLING_LEASE_SECONDS`).

Every citizen message goes through the same `MessagePipeline` as the web chat. Rasa's buttons
become inline keyboards; a pressed button's callback is answered and its payload sent to the
engine. Photos and locations are stored with the message; a location is given to the engine as
「位置：北纬…，东经…」, so the report form takes it as the place when it asks for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import itertools
import logging
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from telegram import Message, Update
from telegram.error import TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot.channels.telegram_delivery import KeyedSequencer, TelegramDelivery
from bot.channels.telegram_format import is_stored_token, location_text
from bot.channels.telegram_settings import TelegramSettings
from bot.pipeline import Inbound, MessagePipeline
from bot.responses import Responses
from crm_backend.errors import TooManyMessages, describe_error
from crm_backend.http import json_error, json_response
from crm_backend.models import TelegramCallbackPayload, TelegramUpdate, utcnow
from crm_backend.services.conversations import (
    OutgoingMessage,
    current_conversation,
    log_incoming,
    log_outgoing,
    resolve_identity,
)
from crm_backend.shared import Leases, SenderLocks
from crm_backend.shared.local import LocalLeases, LocalLocks
from crm_backend.validation import clean_text, parse_link_code

logger = logging.getLogger(__name__)

CHANNEL = "telegram"
WEBHOOK_PATH = "/webhooks/telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)
MAX_UPDATE_BYTES = 1024 * 1024
ALLOWED_UPDATES = ["message", "callback_query"]
PHOTO_LABEL = "[图片]"  # what the conversation log (read by staff) shows for a photo
UNSUPPORTED_LABELS = {  # likewise for content the assistant cannot read
    "sticker": "[贴纸]",
    "voice": "[语音]",
    "audio": "[音频]",
    "video": "[视频]",
    "video_note": "[视频消息]",
    "animation": "[动图]",
    "document": "[文件]",
    "contact": "[联系人名片]",
}
START_PAYLOAD = "/greet"
CANCEL_PAYLOAD = "/cancel"
PRIVATE_MESSAGES = filters.ChatType.PRIVATE & filters.UpdateType.MESSAGE
STARTUP_RETRY_SECONDS = (1, 2, 5, 10, 30, 60)
RECOVERY_SECONDS = 30.0  # how often stored updates nobody finished are taken up again
MAX_UPDATE_ATTEMPTS = 5  # an update whose handler keeps failing is given up (and logged) after this
POLLING_LEASE = "telegram-polling"
POLLING_CHECK_SECONDS = 5.0  # how often a process looks whether it (still) holds the polling lease
POLLING_LEASE_SECONDS = 15.0  # a dead poller's lease runs out after this; another process then polls


class TelegramChannel:
    """The PTB application, its handlers, the webhook route and the update workers."""

    def __init__(
        self,
        settings: TelegramSettings,
        pipeline: MessagePipeline,
        sessions: async_sessionmaker[AsyncSession],
        responses: Responses,
        max_logged_chars: int,
        locks: SenderLocks | None = None,
        leases: Leases | None = None,
        privacy_notice: str | None = None,
    ) -> None:
        """
        Args:
            locks: a chat's lock, shared by every app process when they share state.
            leases: with several app processes, polling mode polls in the one holding its lease.
            privacy_notice: said on /start, before the greeting; None says nothing.
        """
        self._privacy_notice = privacy_notice
        self._settings = settings
        self._locks: SenderLocks = locks if locks is not None else LocalLocks()
        self._leases: Leases = leases if leases is not None else LocalLeases()
        self._poller: asyncio.Task[None] | None = None
        self._pipeline = pipeline
        self._sessions = sessions
        self._responses = responses
        self._max_logged_chars = max_logged_chars
        builder = Application.builder().token(settings.bot_token).base_url(settings.api_base_url)
        if settings.mode == "webhook":
            builder = builder.updater(None)  # updates come from our own route
        self.application: Application[Any, Any, Any, Any, Any, Any] = builder.build()
        self.delivery = TelegramDelivery(self.application.bot, sessions, locks=self._locks)
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sequencer = KeyedSequencer("telegram-update")
        self._scheduled: set[int] = set()  # stored updates queued in this process, by row id
        self._failed: set[int] = set()  # update_ids whose handler raised during the current run
        self._add_handlers()

    # --- wiring ---------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """The webhook route (webhook mode) and start/stop with the app."""
        if self._settings.mode == "webhook":
            app.router.add_post(WEBHOOK_PATH, self.webhook)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)

    def _add_handlers(self) -> None:
        application = self.application
        application.add_handler(CommandHandler("start", self._on_start, filters=PRIVATE_MESSAGES))
        application.add_handler(CommandHandler("help", self._on_help, filters=PRIVATE_MESSAGES))
        application.add_handler(CommandHandler("cancel", self._on_cancel, filters=PRIVATE_MESSAGES))
        application.add_handler(CommandHandler("link", self._on_link, filters=PRIVATE_MESSAGES))
        application.add_handler(MessageHandler(PRIVATE_MESSAGES & filters.COMMAND, self._on_help))
        application.add_handler(MessageHandler(PRIVATE_MESSAGES & filters.TEXT, self._on_text))
        application.add_handler(MessageHandler(PRIVATE_MESSAGES & filters.PHOTO, self._on_photo))
        application.add_handler(MessageHandler(PRIVATE_MESSAGES & filters.LOCATION, self._on_location))
        application.add_handler(MessageHandler(PRIVATE_MESSAGES, self._on_unsupported))
        application.add_handler(CallbackQueryHandler(self._on_callback))
        application.add_error_handler(self._on_error)

    async def _on_startup(self, _app: web.Application) -> None:
        self._tasks = [
            asyncio.create_task(self._start(), name="telegram-start"),
            asyncio.create_task(self._recover_updates(), name="telegram-recovery"),
            asyncio.create_task(self.delivery.run_outbox(), name="telegram-outbox"),
        ]
        if self._settings.mode != "webhook":
            self._tasks.append(asyncio.create_task(self._consume_updates(), name="telegram-updates"))

    async def _start(self) -> None:
        """Initialise PTB (it asks Telegram getMe), retrying so a Telegram outage does not stop the app."""
        for attempt in itertools.count():
            try:
                await self.application.initialize()
                break
            except TelegramError as error:
                wait = STARTUP_RETRY_SECONDS[min(attempt, len(STARTUP_RETRY_SECONDS) - 1)]
                logger.warning("telegram: cannot reach the Bot API (%s); retrying in %ss", error, wait)
                await asyncio.sleep(wait)
        bot = self.application.bot
        try:
            if self._settings.mode == "webhook":
                if self._settings.webhook_url:
                    await bot.set_webhook(
                        self._settings.webhook_url,
                        secret_token=self._settings.webhook_secret,
                        allowed_updates=ALLOWED_UPDATES,
                    )
                    logger.info("telegram: webhook registered at %s", self._settings.webhook_url)
            else:
                self._poller = asyncio.create_task(self._poll_while_leased(), name="telegram-polling")
        except TelegramError:
            logger.exception("telegram: could not register the webhook or start polling")
        self._ready.set()
        logger.info("telegram: bot @%s ready (%s mode)", bot.username, self._settings.mode)

    async def _poll_while_leased(self) -> None:
        """Polling mode: poll while this process holds the polling lease, stop when another does."""
        updater = self.application.updater
        assert updater is not None
        while True:
            try:
                async with self._leases.hold(POLLING_LEASE, POLLING_LEASE_SECONDS) as held:
                    if held and not updater.running:
                        await updater.start_polling(allowed_updates=ALLOWED_UPDATES, bootstrap_retries=-1)
                        logger.info("telegram: polling for updates")
                    elif not held and updater.running:
                        await updater.stop()
                        logger.warning("telegram: another process holds the polling lease; stopped polling")
            except TelegramError:
                logger.exception("telegram: could not start polling")
            await asyncio.sleep(POLLING_CHECK_SECONDS)

    async def _on_shutdown(self, _app: web.Application) -> None:
        if self._poller is not None:  # first, so it cannot start polling again once stopped
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        updater = self.application.updater
        if updater is not None and updater.running:
            await updater.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._sequencer.close()
        if self._ready.is_set():
            await self.application.shutdown()

    # --- updates in -----------------------------------------------------------------------------

    async def webhook(self, request: web.Request) -> web.Response:
        """``POST /webhooks/telegram``: check the secret, store the update, then answer 200 (503 if not stored)."""
        supplied = request.headers.get(SECRET_HEADER, "").encode()
        expected = (self._settings.webhook_secret or "").encode()
        if not expected or not hmac.compare_digest(supplied, expected):
            return json_error(403, "forbidden", "missing or wrong secret token")
        if (request.content_length or 0) > MAX_UPDATE_BYTES:
            return json_error(413, "too_large", "update larger than 1 MiB")
        try:
            data = await request.json()
            update = Update.de_json(data, self.application.bot)
        except Exception:  # whatever PTB makes of a malformed body, it is the sender's error
            return json_error(400, "bad_request", "body is not a Telegram update")
        if not isinstance(data, dict) or update is None:
            return json_error(400, "bad_request", "body is not a Telegram update")
        try:
            await self._store(update, data)
        except Exception:  # the database is down or locked: Telegram keeps the update and resends it
            logger.exception("telegram: update %s not stored; answering 503 so Telegram resends it", update.update_id)
            return json_error(503, "unavailable", "update not stored, send it again later")
        return json_response({"ok": True})

    async def _store(self, update: Update, data: dict[str, Any]) -> None:
        """Keep the update (a resent one is already there) and queue it for processing.

        Raises:
            SQLAlchemyError, OSError: when it could not be stored.
        """
        chat = update.effective_chat
        row = TelegramUpdate(update_id=update.update_id, chat_id=str(chat.id) if chat else None, payload=data)
        try:
            async with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            async with self._sessions() as session:
                known = await session.scalar(select(TelegramUpdate).where(TelegramUpdate.update_id == update.update_id))
            if known is None:
                raise
            logger.info("telegram: update %s received again; already stored", update.update_id)
            if known.processed_at is None:
                self._schedule(known.id, known.chat_id)
            return
        self._schedule(row.id, row.chat_id)

    def _schedule(self, row_id: int, chat_id: str | None) -> None:
        """Process a stored update behind its chat's earlier ones (once per process)."""
        if row_id in self._scheduled:
            return
        self._scheduled.add(row_id)
        self._sequencer.submit(chat_id or "none", functools.partial(self._process, row_id, chat_id or "none"))

    async def _process(self, row_id: int, chat_id: str) -> None:
        """Run the handlers on a stored update, then mark it processed (unless a handler failed: retried later).

        With the chat's lock held, the chat's earlier stored updates still unprocessed go first,
        oldest first: another app process may have stored them and not handled them yet (it is
        waiting for the lock, or it died), and the citizen's messages must be read in order.
        """
        try:
            await self._ready.wait()
            async with self._locks.hold(f"telegram-update:{chat_id}"):
                for earlier in await self._unprocessed_before(row_id, chat_id):
                    await self._process_held(earlier)
                await self._process_held(row_id)
        finally:
            self._scheduled.discard(row_id)

    async def _unprocessed_before(self, row_id: int, chat_id: str) -> list[int]:
        """The chat's stored updates older than `row_id` that nobody has processed, oldest first."""
        if chat_id == "none":
            return []
        async with self._sessions() as session:
            rows = await session.scalars(
                select(TelegramUpdate.id)
                .where(
                    TelegramUpdate.chat_id == chat_id,
                    TelegramUpdate.processed_at.is_(None),
                    TelegramUpdate.id < row_id,
                )
                .order_by(TelegramUpdate.id)
            )
            return list(rows.all())

    async def _process_held(self, row_id: int) -> None:
        """`_process` with the chat's lock held."""
        async with self._sessions() as session:
            row = await session.get(TelegramUpdate, row_id)
        if row is None or row.processed_at is not None:
            return
        update = Update.de_json(row.payload, self.application.bot)
        self._failed.discard(row.update_id)
        await self.application.process_update(update)
        failed = row.update_id in self._failed
        self._failed.discard(row.update_id)
        async with self._sessions.begin() as session:
            stored = await session.get(TelegramUpdate, row_id)
            assert stored is not None
            stored.attempts += 1
            if failed and stored.attempts < MAX_UPDATE_ATTEMPTS:
                logger.warning("telegram: update %s failed; it will be tried again", row.update_id)
                return
            if failed:
                logger.error("telegram: update %s failed %s times, giving up", row.update_id, stored.attempts)
            stored.processed_at = utcnow()

    async def _recover_updates(self) -> None:
        """At start and then periodically: queue stored updates that were never finished, oldest first."""
        await self._ready.wait()
        while True:
            try:
                async with self._sessions() as session:
                    rows = (
                        await session.execute(
                            select(TelegramUpdate.id, TelegramUpdate.chat_id)
                            .where(TelegramUpdate.processed_at.is_(None))
                            .order_by(TelegramUpdate.id)
                            .limit(500)
                        )
                    ).all()
                for row_id, chat_id in rows:
                    self._schedule(row_id, chat_id)
                if rows:
                    logger.info("telegram: %s stored updates waiting to be processed", len(rows))
            except Exception:  # a database blip must not end the recovery loop
                logger.exception("telegram: recovery pass failed")
            await asyncio.sleep(RECOVERY_SECONDS)

    async def _consume_updates(self) -> None:
        """Polling mode: store each update PTB's Updater fetched (retrying until stored), then process it."""
        queue = self.application.update_queue
        while True:
            update = await queue.get()
            if not isinstance(update, Update):
                continue
            for attempt in itertools.count():
                try:
                    await self._store(update, update.to_dict())
                    break
                except Exception:
                    wait = STARTUP_RETRY_SECONDS[min(attempt, len(STARTUP_RETRY_SECONDS) - 1)]
                    logger.exception("telegram: polled update %s not stored; retrying in %ss", update.update_id, wait)
                    await asyncio.sleep(wait)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        update_id = update.update_id if isinstance(update, Update) else None
        if update_id is not None:
            self._failed.add(update_id)
        error = context.error
        logger.error("telegram: update %s failed: %s", update_id, describe_error(error) if error else "unknown error")

    # --- handlers -------------------------------------------------------------------------------

    async def _on_start(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        message = _message(update)
        if self._privacy_notice is not None:
            await self._tell(message.chat_id, OutgoingMessage(self._privacy_notice, sender_kind="system"))
        await self._converse(
            message.chat_id,
            Inbound(CHANNEL, str(message.chat_id), "/start", payload=START_PAYLOAD, payload_from_channel=True),
        )

    async def _on_cancel(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        message = _message(update)
        await self._converse(
            message.chat_id,
            Inbound(CHANNEL, str(message.chat_id), "/cancel", payload=CANCEL_PAYLOAD, payload_from_channel=True),
        )

    async def _on_link(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        """`/link 483920`: link this chat to the citizen who was shown the code on another channel."""
        message = _message(update)
        text = message.text or "/link"
        code = parse_link_code(text)
        payload = f'/link_account{{"link_code": "{code}"}}' if code else "/link_account"
        await self._converse(
            message.chat_id, Inbound(CHANNEL, str(message.chat_id), text, payload=payload, payload_from_channel=True)
        )

    async def _on_help(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        message = _message(update)
        await self._answer_directly(message.chat_id, message.text or "/help", "utter_telegram_help")

    async def _on_text(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        message = _message(update)
        await self._converse(message.chat_id, Inbound(CHANNEL, str(message.chat_id), message.text or ""))

    async def _on_photo(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        message = _message(update)
        largest = max(message.photo, key=lambda size: size.width * size.height)
        attachment = {
            "kind": "photo",
            "file_id": largest.file_id,
            "file_unique_id": largest.file_unique_id,
            "width": largest.width,
            "height": largest.height,
        }
        inbound = Inbound(
            CHANNEL,
            str(message.chat_id),
            message.caption or "",
            attachment=attachment,
            attachment_label=PHOTO_LABEL,
        )
        await self._converse(message.chat_id, inbound)

    async def _on_location(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        message = _message(update)
        location = message.location
        assert location is not None
        attachment = {"kind": "location", "latitude": location.latitude, "longitude": location.longitude}
        text = location_text(location.latitude, location.longitude)
        await self._converse(message.chat_id, Inbound(CHANNEL, str(message.chat_id), text, attachment=attachment))

    async def _on_unsupported(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        message = _message(update)
        kind = next((name for name in UNSUPPORTED_LABELS if getattr(message, name, None)), None)
        label = UNSUPPORTED_LABELS.get(kind or "", "[不支持的消息]")
        attachment: dict[str, Any] = {"kind": kind or "other"}
        sticker = message.sticker
        if sticker is not None:
            attachment["file_id"] = sticker.file_id
        await self._answer_directly(message.chat_id, label, "utter_unsupported_content", attachment)

    async def _on_callback(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None
        try:
            await query.answer()  # stops the button's spinner on the citizen's screen
        except TelegramError as error:
            logger.warning("telegram: could not answer callback query %s: %s", query.id, error)
        chat = update.effective_chat
        if chat is None or chat.type != "private" or not query.data:
            return
        payload = await self._payload_for(query.data)
        if payload is None:
            logger.info("telegram: unknown callback data (%d characters) from chat %s", len(query.data), chat.id)
            return
        title = _button_title(query.message, query.data) or payload
        await self._converse(chat.id, Inbound(CHANNEL, str(chat.id), title, payload=payload))

    # --- the conversation -----------------------------------------------------------------------

    async def _converse(self, chat_id: int, inbound: Inbound) -> None:
        try:
            outcome = await self._pipeline.handle(inbound)
        except TooManyMessages as refused:  # not processed: the chat is told so, nothing is stored
            await self.deliver(str(chat_id), [OutgoingMessage(str(refused), sender_kind="system")])
            return
        if outcome.replies:
            await self.deliver(str(chat_id), outcome.replies)

    async def deliver(self, chat_id: str, replies: list[OutgoingMessage]) -> bool:
        """Send replies now (retried; kept in the outbox if they cannot go)."""
        return await self.delivery.deliver(chat_id, replies)

    async def _tell(self, chat_id: int, reply: OutgoingMessage) -> None:
        """Say one of the app's own sentences in the chat, logged in its conversation."""
        async with self._sessions.begin() as session:
            identity = await resolve_identity(session, CHANNEL, str(chat_id))
            log_outgoing(session, await current_conversation(session, identity), [reply])
        await self.delivery.deliver(str(chat_id), [reply])

    async def _answer_directly(
        self, chat_id: int, logged_text: str, response: str, attachment: dict[str, Any] | None = None
    ) -> None:
        """Log the citizen's message and answer it with one of the app's own sentences, without the engine."""
        try:
            await self._pipeline.admit(CHANNEL, str(chat_id))
        except TooManyMessages as refused:
            await self.deliver(str(chat_id), [OutgoingMessage(str(refused), sender_kind="system")])
            return
        reply = OutgoingMessage(self._responses.text(response), sender_kind="system")
        async with self._sessions.begin() as session:
            identity = await resolve_identity(session, CHANNEL, str(chat_id))
            conversation = await current_conversation(session, identity)
            log_incoming(
                session, conversation, clean_text(logged_text), max_chars=self._max_logged_chars, attachment=attachment
            )
            log_outgoing(session, conversation, [reply])
        await self.delivery.deliver(str(chat_id), [reply])

    async def _payload_for(self, callback_data: str) -> str | None:
        if not is_stored_token(callback_data):
            return callback_data
        async with self._sessions() as session:
            stored = await session.get(TelegramCallbackPayload, callback_data)
        return stored.payload if stored is not None else None


def _message(update: Update) -> Message:
    message = update.message
    assert message is not None  # the handlers' filters let only messages through
    return message


def _button_title(message: object, callback_data: str) -> str | None:
    """The title of the pressed button, read back from the message it was on."""
    markup = getattr(message, "reply_markup", None)
    with contextlib.suppress(AttributeError, TypeError):
        for row in markup.inline_keyboard:  # type: ignore[union-attr]
            for button in row:
                if button.callback_data == callback_data:
                    return str(button.text)
    return None
