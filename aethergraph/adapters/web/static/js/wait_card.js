// One open wait: its prompt and a form generated from its JSON Schema (an approval as buttons).
// Submitting it sends a resume command through the API and shows the outcome, rejections included.

import { resumeRun } from "./api.js";
import { fmtTime, h, runLink } from "./dom.js";
import { approvalChoices, FieldError, schemaForm } from "./schema_form.js";

/** A card for `wait` ({run_id, wait_id, kind, prompt, payload_schema, channel, node_id, deadline}). */
export function waitCard(wait, { showRun = true, onOutcome } = {}) {
  const outcome = h("div", { class: "outcome", role: "status" });
  const card = h("form", { class: `card wait-card ch-${wait.channel || "console"}`, "data-wait": `${wait.run_id}/${wait.wait_id}`, novalidate: true });
  const buttons = [];

  const send = async (payload) => {
    buttons.forEach((b) => (b.disabled = true));
    card.classList.add("answering"); // the wait may close (its event) before the outcome comes back
    outcome.className = "outcome pending";
    outcome.textContent = "sending…";
    let result;
    try {
      result = await resumeRun(wait, payload);
    } catch (error) {
      result = { status: "error", message: error.message };
    }
    showOutcome(outcome, result);
    const final = result.status === "accepted" || result.status === "duplicate" || result.reason === "wait_closed" || result.reason === "run_ended";
    card.classList.remove("answering");
    if (!final) buttons.forEach((b) => (b.disabled = false));
    else card.classList.add("answered");
    onOutcome?.(result, wait);
  };

  const choices = approvalChoices(wait);
  let body;
  if (choices) {
    const hasChoice = Boolean(wait.payload_schema?.properties?.choice);
    body = h("div", { class: "choices" }, choices.map((choice, i) => {
      const button = h("button", {
        type: "button", class: i === 0 ? "approve" : "reject", "data-choice": choice,
        onclick: () => send(hasChoice ? { choice } : { approved: i === 0 }),
      }, choice);
      buttons.push(button);
      return button;
    }));
  } else {
    const form = schemaForm(wait.payload_schema, { label: wait.kind === "text" ? "answer" : wait.kind || "answer" });
    const submit = h("button", { type: "submit", class: "primary" }, "Send");
    buttons.push(submit);
    card.addEventListener("submit", (event) => {
      event.preventDefault();
      let payload;
      try {
        payload = form.read();
      } catch (error) {
        if (!(error instanceof FieldError)) throw error;
        showOutcome(outcome, { status: "invalid", message: error.message });
        card.querySelector(`[data-path="${CSS.escape(error.path || "")}"]`)?.focus?.();
        return;
      }
      send(payload === undefined ? null : payload);
    });
    body = h("div", {}, form.el, h("div", { class: "actions" }, submit));
  }

  card.append(
    h("div", { class: "wait-head" },
      h("span", { class: "badge kind" }, wait.kind || "wait"),
      h("span", { class: "badge channel" }, wait.channel || "console"),
      showRun ? h("span", {}, " run ", runLink(wait.run_id)) : null,
      h("span", { class: "note" }, ` ${wait.wait_id}${wait.node_id && wait.node_id !== "root" ? " at " + wait.node_id : ""}`),
      wait.deadline ? h("span", { class: "note" }, ` · expires ${fmtTime(wait.deadline)}`) : null),
    h("p", { class: "prompt" }, wait.prompt || "(no prompt)"),
    body,
    outcome,
  );
  return card;
}

function showOutcome(el, result) {
  const ok = result.status === "accepted";
  el.className = `outcome ${ok ? "ok" : "bad"}`;
  el.dataset.status = result.status || "";
  el.dataset.reason = result.reason || "";
  const head = ok ? "accepted: the run continues" : `${result.status || "error"}${result.reason ? " (" + result.reason + ")" : ""}`;
  el.replaceChildren(h("b", {}, head), result.message && !ok ? h("div", { class: "message" }, result.message) : null);
}
