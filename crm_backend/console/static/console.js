// The console's live parts: server-sent events refresh the inbox and the open transcript,
// and the reply form posts without reloading. Everything else is plain forms.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  // Nothing live before the sign-in is complete (the second-factor pages hold no console session
  // yet) or for a role without the live stream (the auditor reads only the audit log).
  if (page === "login" || !body.dataset.csrf || body.dataset.feed === "off") return;
  const csrf = body.dataset.csrf;
  const conversationId = body.dataset.conversation ? Number(body.dataset.conversation) : null;

  function toast(text) {
    const box = document.getElementById("toast");
    if (!box) return;
    box.textContent = text;
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.hidden = true; }, 4000);
  }

  async function fetchHtml(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html-fragment" } });
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.text();
  }

  async function refreshInbox() {
    const rows = document.getElementById("inbox-rows");
    if (!rows) return;
    rows.innerHTML = await fetchHtml("/console/inbox/rows");
    body.dataset.inboxRefreshed = String(Date.now());
  }

  let fetchingMessages = Promise.resolve();
  function refreshMessages() {
    fetchingMessages = fetchingMessages.then(async () => {
      const list = document.getElementById("messages");
      if (!list) return;
      const items = list.querySelectorAll("li[data-id]");
      const after = items.length ? items[items.length - 1].dataset.id : "0";
      const html = await fetchHtml(`/console/conversations/${conversationId}/messages?after=${after}`);
      if (html.trim()) {
        // Follow the conversation only if the agent was reading its end, not scrolled back.
        const following = atEnd(list) || forceScroll;
        list.insertAdjacentHTML("beforeend", html);
        if (following) list.scrollTop = list.scrollHeight;
      }
      forceScroll = false;
    }).catch((error) => console.warn("transcript refresh failed", error));
    return fetchingMessages;
  }

  // The transcript opens at its latest message.
  let forceScroll = false;
  const atEnd = (list) => list.scrollHeight - list.scrollTop - list.clientHeight < 24;
  const transcript = document.getElementById("messages");
  if (transcript) transcript.scrollTop = transcript.scrollHeight;

  const badge = document.getElementById("inbox-badge");
  let unseen = 0;

  const source = new EventSource("/console/events");
  // Events sent while the stream was down (or that the server could not hear: it ends the
  // stream then) are lost: on every reconnect the page re-reads what it shows.
  let opened = false;
  source.addEventListener("open", () => {
    body.dataset.live = "1";
    if (opened) {
      if (page === "inbox") refreshInbox().catch((error) => console.warn("inbox refresh failed", error));
      if (conversationId !== null) refreshMessages();
      body.dataset.resynced = String((Number(body.dataset.resynced) || 0) + 1);
    }
    opened = true;
  });
  source.addEventListener("error", () => { body.dataset.live = "0"; });
  const onEvent = (event) => {
    const data = JSON.parse(event.data);
    if (page === "inbox") refreshInbox().catch((error) => console.warn("inbox refresh failed", error));
    if (conversationId !== null && data.conversation_id === conversationId) refreshMessages();
    if (event.type === "escalation") {
      toast("有新的转人工会话");
      if (page !== "inbox" && badge) {
        unseen += 1;
        badge.textContent = String(unseen);
        badge.hidden = false;
      }
    }
  };
  for (const kind of ["escalation", "message", "claimed", "released", "closed", "reply", "filed"]) {
    source.addEventListener(kind, onEvent);
  }
  source.addEventListener("security", () => {
    toast("安全警报：身份验证失败次数超过每小时上限，请查看审计日志");
  });

  const replyForm = document.getElementById("reply-form");
  if (replyForm) {
    replyForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = replyForm.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        const response = await fetch(replyForm.action, {
          method: "POST",
          credentials: "same-origin",
          headers: { "X-CSRF-Token": csrf, "X-Requested-With": "fetch" },
          body: new URLSearchParams(new FormData(replyForm)),
        });
        const result = await response.json().catch(() => ({}));
        if (!response.ok) {
          toast(result.message || "发送失败，请重试");
          return;
        }
        replyForm.reset();
        toast(result.notice || "已发送");
        // Replying takes the conversation: no 认领 to offer any more.
        const claimForm = document.getElementById("claim-form");
        if (claimForm) claimForm.remove();
        const holder = document.getElementById("holder");
        if (holder) holder.textContent = "处理人：" + replyForm.dataset.author;
        forceScroll = true;
        await refreshMessages();
      } catch (error) {
        toast("网络异常，发送失败，请重试");
      } finally {
        button.disabled = false;
      }
    });
  }
})();
