/*
 * 12345 citizen chat client (plain ES2020, no dependencies).
 *
 * Protocol: JSON text frames over ws(s)://<same host>/ws
 *   client -> server
 *     {"type":"hello","session":<token|null>}                 first frame on every (re)connect
 *     {"type":"message","id":<uuid>,"text":"...","payload"?:"..."}  typed text or button click
 *   server -> client
 *     {"type":"welcome","session":"...","history":[...],"handoff":bool,"handoff_state"?:{...}}
 *         full conversation; the server is the source of truth, so the list is re-rendered;
 *         handoff_state (only while staff hold the conversation) as in the handoff frame
 *     {"type":"ack","id":"..."}                               message stored: drop it from the outbox
 *     {"type":"reply","in_reply_to":..., "messages":[{text,buttons,sender,at}]}
 *     {"type":"handoff","active":bool,"on_duty"?:bool,"next_duty_start"?:iso|null,"text"?:"..."}
 *         show/hide the human-agent banner; text (the bot's hand-off sentence from domain.yml)
 *         says whether staff answer shortly or when they next come on duty. No typing
 *         indicator runs while staff hold the conversation: the page cannot know they type.
 *     {"type":"error","code":"...","message":"...","id":...}  notice; an id means "refused for good"
 *   The server closes the socket with 1012 when frames for this page may have been lost (its
 *   live fan-out was away): the page reconnects at once and the welcome's history catches up.
 *
 * Every citizen message is kept in localStorage ("c12345.outbox") until acked, and is resent
 * after each welcome unless the welcome history already contains its id.
 * All message content is rendered with textContent only.
 */
(function () {
  'use strict';

  const SESSION_KEY = 'c12345.session';
  const OUTBOX_KEY = 'c12345.outbox';
  const MAX_LENGTH = 2000;
  const COUNTER_THRESHOLD = 1800;
  const TYPING_TIMEOUT_MS = 15000;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const RESYNC_CLOSE_CODE = 1012; // the server missed frames for this page: reconnect at once
  const STATUS_TEXT = {
    connecting: '连接中…',
    online: '已连接',
    offline: '网络已断开，正在重连…',
  };

  const dom = {};
  let HANDOFF_TEXT = ''; // the page's own banner sentence, used when the server sends none
  const state = {
    ws: null,
    ready: false, // welcome received on the current socket
    attempt: 0, // reconnect attempts since the last welcome
    reconnectTimer: null,
    typingTimer: null,
    outbox: [],
    handoff: false, // staff hold the conversation: the bot stays silent
  };

  /* ---------- Small helpers ---------- */

  const store = {
    get(key) {
      try {
        return window.localStorage.getItem(key);
      } catch (err) {
        return null;
      }
    },
    set(key, value) {
      try {
        window.localStorage.setItem(key, value);
      } catch (err) {
        console.warn('localStorage unavailable:', err && err.name);
      }
    },
  };

  function newId() {
    if (window.crypto && typeof window.crypto.randomUUID === 'function') {
      return window.crypto.randomUUID();
    }
    const bytes = new Uint8Array(16);
    if (window.crypto && typeof window.crypto.getRandomValues === 'function') {
      window.crypto.getRandomValues(bytes);
    } else {
      for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
    return [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20), hex.slice(20)].join('-');
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function pad2(n) {
    return String(n).padStart(2, '0');
  }

  function formatTime(iso) {
    const date = iso ? new Date(iso) : new Date();
    if (Number.isNaN(date.getTime())) return '';
    const time = pad2(date.getHours()) + ':' + pad2(date.getMinutes());
    const now = new Date();
    if (date.toDateString() === now.toDateString()) return time;
    const day = (date.getMonth() + 1) + '月' + date.getDate() + '日 ';
    return (date.getFullYear() === now.getFullYear() ? '' : date.getFullYear() + '年') + day + time;
  }

  function findBubble(id) {
    if (!id) return null;
    for (const node of dom.messages.querySelectorAll('.msg-in[data-id]')) {
      if (node.dataset.id === id) return node;
    }
    return null;
  }

  /* ---------- Outbox (persisted until acked) ---------- */

  function loadOutbox() {
    let items = [];
    try {
      items = JSON.parse(store.get(OUTBOX_KEY) || '[]');
    } catch (err) {
      console.warn('Ignoring unreadable outbox');
    }
    if (!Array.isArray(items)) return [];
    return items.filter((m) => m && typeof m.id === 'string' && typeof m.text === 'string');
  }

  function saveOutbox() {
    store.set(OUTBOX_KEY, JSON.stringify(state.outbox));
  }

  function removeFromOutbox(id) {
    const before = state.outbox.length;
    state.outbox = state.outbox.filter((m) => m.id !== id);
    if (state.outbox.length !== before) saveOutbox();
  }

  /* ---------- Rendering ---------- */

  function isNearBottom() {
    const s = dom.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  function scrollToBottom() {
    dom.scroller.scrollTop = dom.scroller.scrollHeight;
  }

  function appendToList(node, forceScroll) {
    const stick = forceScroll || isNearBottom();
    dom.messages.appendChild(node);
    if (stick) scrollToBottom();
  }

  function disableButtonGroups() {
    for (const group of dom.messages.querySelectorAll('.msg-buttons')) {
      group.classList.add('is-used');
      for (const button of group.querySelectorAll('button')) button.disabled = true;
    }
  }

  function buildButtons(buttons) {
    const group = el('div', 'msg-buttons');
    group.setAttribute('role', 'group');
    for (const spec of buttons) {
      if (!spec) continue;
      const title = String(spec.title ?? spec.payload ?? '');
      const button = el('button', 'msg-button', title);
      button.type = 'button';
      button.addEventListener('click', () => onQuickReply(button, title, spec.payload));
      group.appendChild(button);
    }
    return group;
  }

  function buildMeta(at, isCitizen) {
    const meta = el('div', 'msg-meta');
    meta.appendChild(el('span', 'msg-time', formatTime(at)));
    if (isCitizen) meta.appendChild(el('span', 'msg-state'));
    return meta;
  }

  /** Build one bubble from a history item, a reply message or an outbox item. */
  function buildMessage(item) {
    const isCitizen = item.direction === 'in';
    const sender = item.sender || {};
    const isStaff = !isCitizen && sender.kind === 'staff';
    const node = el('div', 'msg ' + (isCitizen ? 'msg-in' : 'msg-out'));
    if (isStaff) node.classList.add('msg-staff');
    if (!isCitizen && sender.kind === 'system') node.classList.add('msg-system');
    if (item.id) node.dataset.id = String(item.id);

    if (isStaff) node.appendChild(el('div', 'msg-sender', sender.name || '人工客服'));
    const text = item.text == null ? '' : String(item.text);
    if (text !== '') node.appendChild(el('div', 'msg-text', text));
    const buttons = Array.isArray(item.buttons) ? item.buttons : [];
    if (!isCitizen && buttons.length) node.appendChild(buildButtons(buttons));
    node.appendChild(buildMeta(item.at, isCitizen));
    return node;
  }

  function renderMessage(item, forceScroll) {
    // Buttons of older messages become stale once the citizen says anything after them.
    if (item.direction === 'in') disableButtonGroups();
    appendToList(buildMessage(item), forceScroll);
  }

  function setDeliveryState(node, status) {
    if (!node) return;
    node.classList.toggle('is-pending', status === 'pending');
    node.classList.toggle('is-failed', status === 'failed');
    const label = node.querySelector('.msg-state');
    if (label) label.textContent = status === 'pending' ? '发送中' : status === 'failed' ? '未发送' : '';
  }

  function renderPending(item) {
    renderMessage({ direction: 'in', id: item.id, text: item.text, at: item.at }, true);
    setDeliveryState(findBubble(item.id), 'pending');
  }

  function showNotice(text, isError) {
    appendToList(el('div', 'notice' + (isError ? ' notice-error' : ''), text), true);
  }

  function showTyping() {
    const stick = isNearBottom();
    dom.typing.hidden = false;
    if (stick) scrollToBottom();
    clearTimeout(state.typingTimer);
    state.typingTimer = setTimeout(hideTyping, TYPING_TIMEOUT_MS);
  }

  function hideTyping() {
    clearTimeout(state.typingTimer);
    state.typingTimer = null;
    dom.typing.hidden = true;
  }

  function setStatus(name) {
    dom.status.dataset.state = name;
    dom.status.textContent = STATUS_TEXT[name];
  }

  /** Show or hide the staff banner; `info` is the server's hand-off state (on_duty, text). */
  function setHandoff(active, info) {
    const details = info && typeof info === 'object' ? info : {};
    const text = typeof details.text === 'string' && details.text ? details.text : HANDOFF_TEXT;
    state.handoff = active;
    if (active) hideTyping();
    dom.handoffBanner.textContent = text;
    if (typeof details.on_duty === 'boolean') {
      dom.handoffBanner.dataset.onDuty = details.on_duty ? '1' : '0';
    } else {
      delete dom.handoffBanner.dataset.onDuty;
    }
    // The banner takes height from the list above the composer: keep the last message in view.
    const stick = isNearBottom();
    dom.handoffBanner.hidden = !active;
    if (stick) scrollToBottom();
  }

  /* ---------- Sending ---------- */

  /** Send one outbox item if the session is established; otherwise it waits in the outbox. */
  function transmit(item) {
    const ws = state.ws;
    if (!state.ready || !ws || ws.readyState !== WebSocket.OPEN) return false;
    const frame = { type: 'message', id: item.id, text: item.text };
    if (item.payload !== undefined && item.payload !== null) frame.payload = item.payload;
    try {
      ws.send(JSON.stringify(frame));
    } catch (err) {
      console.warn('Send failed, message kept in outbox:', err && err.name);
      return false;
    }
    // While staff hold the conversation the bot stays silent and nobody is known to be typing.
    if (!state.handoff) showTyping();
    return true;
  }

  function sendCitizenMessage(text, payload) {
    const item = { id: newId(), text: text, at: new Date().toISOString() };
    if (payload !== undefined && payload !== null) item.payload = String(payload);
    state.outbox.push(item);
    saveOutbox();
    renderPending(item);
    transmit(item);
  }

  function onQuickReply(button, title, payload) {
    if (button.disabled) return;
    button.classList.add('is-chosen');
    sendCitizenMessage(title, payload);
  }

  function submitInput() {
    const text = dom.input.value.trim().slice(0, MAX_LENGTH);
    if (!text) return;
    dom.input.value = '';
    updateComposer();
    sendCitizenMessage(text);
  }

  /* ---------- Composer ---------- */

  function autoGrow() {
    const input = dom.input;
    input.style.height = 'auto'; // CSSOM writes are allowed under style-src 'self'
    input.style.height = Math.min(input.scrollHeight + 2, 140) + 'px';
  }

  function updateComposer() {
    const length = dom.input.value.length;
    dom.send.disabled = dom.input.value.trim() === '';
    dom.counter.hidden = length <= COUNTER_THRESHOLD;
    dom.counter.textContent = length + ' / ' + MAX_LENGTH;
    dom.counter.classList.toggle('is-full', length >= MAX_LENGTH);
    autoGrow();
  }

  function onInputKeydown(event) {
    if (event.key !== 'Enter' || event.shiftKey) return;
    // Enter used to confirm an IME candidate (Chinese input) must not send.
    if (event.isComposing || event.keyCode === 229) return;
    event.preventDefault();
    submitInput();
  }

  /* ---------- Incoming frames ---------- */

  function onWelcome(frame) {
    if (typeof frame.session === 'string' && frame.session) store.set(SESSION_KEY, frame.session);
    const history = Array.isArray(frame.history) ? frame.history.filter(Boolean) : [];

    dom.messages.replaceChildren();
    hideTyping();
    for (const item of history) renderMessage(item, true);

    const known = new Set(history.map((h) => h.id).filter(Boolean).map(String));
    state.outbox = state.outbox.filter((m) => !known.has(m.id));
    saveOutbox();

    state.ready = true;
    state.attempt = 0;
    setStatus('online');
    setHandoff(Boolean(frame.handoff), frame.handoff_state);

    for (const item of state.outbox) renderPending(item);
    for (const item of state.outbox) transmit(item);

    scrollToBottom();
    document.body.dataset.ready = '1';
  }

  function onAck(frame) {
    removeFromOutbox(frame.id);
    setDeliveryState(findBubble(frame.id), 'delivered');
  }

  function onReply(frame) {
    hideTyping();
    const messages = Array.isArray(frame.messages) ? frame.messages : [];
    for (const message of messages) {
      if (message) renderMessage(Object.assign({}, message, { direction: 'out' }), false);
    }
    const count = Number(document.body.dataset.replies) || 0;
    document.body.dataset.replies = String(count + 1);
  }

  /** Citizens only ever see Chinese; a non-Chinese server message is logged, not shown. */
  function errorText(frame) {
    const message = typeof frame.message === 'string' ? frame.message : '';
    if (/[\u4e00-\u9fff]/.test(message)) return message;
    console.info('Server error ' + frame.code + ': ' + message);
    return '抱歉，消息未能处理，请稍后再试。';
  }

  function onError(frame) {
    hideTyping();
    showNotice(errorText(frame), true);
    if (frame.id) {
      removeFromOutbox(frame.id);
      setDeliveryState(findBubble(frame.id), 'failed');
    }
  }

  function handleFrame(raw) {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch (err) {
      console.warn('Ignoring non-JSON frame');
      return;
    }
    if (!frame || typeof frame !== 'object') return;
    switch (frame.type) {
      case 'welcome': onWelcome(frame); break;
      case 'ack': onAck(frame); break;
      case 'reply': onReply(frame); break;
      case 'handoff': setHandoff(Boolean(frame.active), frame); break;
      case 'error': onError(frame); break;
      default: console.warn('Ignoring unknown frame type:', frame.type);
    }
  }

  /* ---------- Connection ---------- */

  function socketUrl() {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    return scheme + '://' + location.host + '/ws';
  }

  function scheduleReconnect() {
    if (state.reconnectTimer) return;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, state.attempt));
    const delay = Math.min(BACKOFF_MAX_MS, base * (0.8 + Math.random() * 0.4)); // ±20 % jitter
    state.attempt += 1;
    console.info('Chat connection lost; reconnecting in ' + (delay / 1000).toFixed(1) + ' s');
    state.reconnectTimer = setTimeout(() => {
      state.reconnectTimer = null;
      connect();
    }, delay);
  }

  function onSocketClosed(sock, event) {
    if (sock !== state.ws) return;
    state.ws = null;
    state.ready = false;
    hideTyping();
    if (event && event.code === RESYNC_CLOSE_CODE) {
      // The server may have missed frames for this page: read the conversation again now.
      state.attempt = 0;
      connect();
      return;
    }
    setStatus('offline');
    scheduleReconnect();
  }

  function connect() {
    if (state.ws) return;
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    if (navigator.onLine === false) {
      // No network: keep waiting (the 'online' event or the next retry tries again).
      setStatus('offline');
      scheduleReconnect();
      return;
    }

    let sock;
    try {
      sock = new WebSocket(socketUrl());
    } catch (err) {
      console.warn('WebSocket could not be created:', err && err.message);
      setStatus('offline');
      scheduleReconnect();
      return;
    }
    state.ws = sock;
    state.ready = false;

    sock.addEventListener('open', () => {
      if (sock !== state.ws) return;
      sock.send(JSON.stringify({ type: 'hello', session: store.get(SESSION_KEY) }));
    });
    sock.addEventListener('message', (event) => {
      if (sock === state.ws) handleFrame(event.data);
    });
    // 'error' is always followed by 'close', which schedules the reconnect.
    sock.addEventListener('close', (event) => onSocketClosed(sock, event));
  }

  function onOnline() {
    if (state.ws) return;
    state.attempt = 0;
    connect();
  }

  function onOffline() {
    // The close handshake cannot finish without a network, so treat the socket as gone now.
    const sock = state.ws;
    if (!sock) return;
    onSocketClosed(sock);
    sock.close();
  }

  /* ---------- Start ---------- */

  function init() {
    dom.messages = document.getElementById('messages');
    dom.scroller = document.getElementById('scroller');
    dom.typing = document.getElementById('typing');
    dom.status = document.getElementById('status');
    dom.handoffBanner = document.getElementById('handoff-banner');
    dom.form = document.getElementById('composer');
    dom.input = document.getElementById('input');
    dom.send = document.getElementById('send');
    dom.counter = document.getElementById('counter');
    HANDOFF_TEXT = dom.handoffBanner.textContent;

    document.body.dataset.replies = '0';
    dom.input.maxLength = MAX_LENGTH;
    dom.form.addEventListener('submit', (event) => {
      event.preventDefault();
      submitInput();
    });
    dom.input.addEventListener('keydown', onInputKeydown);
    dom.input.addEventListener('input', updateComposer);
    window.addEventListener('online', onOnline);
    window.addEventListener('offline', onOffline);

    // Show anything still unsent from an earlier visit until the server's history arrives.
    state.outbox = loadOutbox();
    for (const item of state.outbox) renderPending(item);

    updateComposer();
    setStatus('connecting');
    if (window.matchMedia && window.matchMedia('(pointer: fine)').matches) dom.input.focus();
    connect();
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', init);
  } else {
    init();
  }
})();
