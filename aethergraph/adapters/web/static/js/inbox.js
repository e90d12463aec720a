// The inbox: every open wait across runs, each with the form its JSON Schema generates, and the latest
// channel messages of the run that asks. A wait opening or closing anywhere updates it live.

import * as api from "./api.js";
import * as stream from "./live.js";
import { clear, fmtTime, h } from "./dom.js";
import { waitCard } from "./wait_card.js";

const MESSAGES = 5;

/** The latest channel messages of these runs: Map run_id -> [{channel, text, ts}], oldest first. */
async function recentMessages(runIds) {
  const ids = runIds.filter((r) => /^[A-Za-z0-9_-]+$/.test(r));
  if (!ids.length) return new Map();
  const list = ids.map((r) => `'${r}'`).join(", ");
  const rows = await api.sql(
    `SELECT run_id, seq, ts, data->>'channel' AS channel, data->>'text' AS text FROM events ` +
      `WHERE type = 'channel.sent' AND run_id IN (${list}) ` +
      `QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) <= ${MESSAGES} ORDER BY run_id, seq`,
  );
  const byRun = new Map();
  for (const row of rows) (byRun.get(row.run_id) || byRun.set(row.run_id, []).get(row.run_id)).push(row);
  return byRun;
}

export function inboxPage(_params, _query, root) {
  const list = h("div", { class: "inbox-list" });
  const message = h("p", { class: "note" });
  const live = stream.indicator();
  const cards = new Map(); // "run/wait" -> its card
  let timer = null;

  async function refresh() {
    let waits;
    try {
      waits = await api.listWaits();
    } catch (error) {
      message.textContent = error.message;
      return;
    }
    const open = new Set(waits.map((w) => `${w.run_id}/${w.wait_id}`));
    for (const [key, card] of cards) {
      if (open.has(key)) continue;
      if (card.matches(".answered, .answering")) card.classList.add("closed"); // keeps its outcome
      else {
        card.remove(); // answered elsewhere, expired, or its run ended
        cards.delete(key);
      }
    }
    const fresh = waits.filter((w) => !cards.has(`${w.run_id}/${w.wait_id}`));
    let messages = new Map();
    try {
      messages = await recentMessages([...new Set(fresh.map((w) => w.run_id))]);
    } catch {
      /* messages are context only */
    }
    for (const w of fresh) {
      if (cards.has(`${w.run_id}/${w.wait_id}`)) continue; // a refresh that overlapped this one added it
      const card = waitCard(w);
      const said = messages.get(w.run_id) || [];
      if (said.length) {
        card.querySelector(".prompt").before(h("div", { class: "conversation" }, said.map((m) =>
          h("div", { class: `msg msg-message ch-${m.channel}` }, h("span", { class: "badge channel" }, m.channel), h("span", { class: "msg-text" }, m.text),
            h("span", { class: "note" }, ` ${fmtTime(m.ts)}`)))));
      }
      cards.set(`${w.run_id}/${w.wait_id}`, card);
      list.append(card);
    }
    message.textContent = open.size ? `${open.size} open` : "nothing is waiting for an answer";
  }
  const soon = () => {
    clearTimeout(timer);
    timer = setTimeout(refresh, 100);
  };

  clear(root, h("div", { class: "inbox-page" }, h("div", { class: "toolbar" }, h("h1", {}, "Inbox"), live.el), message, list));
  refresh();
  const stop = stream.followAll((ev) => {
    if (ev.type.startsWith("wait.") || ev.type.startsWith("run.")) soon();
  }, {
    onState: live.show,
    onFallback: refresh,
  });
  return () => {
    clearTimeout(timer);
    stop();
  };
}
