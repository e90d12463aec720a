// The timeline of a run's events, virtualised: only the rows in view exist in the DOM, so a run of
// 100,000 events scrolls as lightly as one of ten. A filter narrows it by type, node or text.

import { fmtDuration, h, jsonBlock } from "./dom.js";
import { summary } from "./model.js";

const ROW = 24;
const OVERSCAN = 10;

export class Timeline {
  /** `onNode(id)` is called when a row's node is clicked. */
  constructor({ onNode } = {}) {
    this.events = [];
    this.shown = [];
    this.filter = "";
    this.selectedSeq = null;
    this.onNode = onNode;
    this.startTs = null;
    this.follow = true;
    this.input = h("input", { type: "search", placeholder: "filter: type, node, text", class: "tl-filter", oninput: () => this.setFilter(this.input.value) });
    this.count = h("span", { class: "note" });
    this.spacer = h("div", { class: "tl-spacer" });
    this.window = h("div", { class: "tl-window" });
    this.scroller = h("div", { class: "tl-scroll", onscroll: () => this.onScroll() }, this.spacer, this.window);
    this.detail = h("div", { class: "tl-detail" }, h("p", { class: "note" }, "click an event to see it whole"));
    this.el = h("div", { class: "timeline" },
      h("div", { class: "tl-bar" }, this.input, this.count),
      h("div", { class: "tl-body" }, this.scroller, this.detail));
  }

  /** Show these events (journal order); keeps the scroll position, or follows the end if it was there. */
  setEvents(events) {
    this.events = events;
    if (this.startTs === null && events.length) this.startTs = events[0].ts;
    this.applyFilter();
  }

  setFilter(text) {
    this.filter = text.trim().toLowerCase();
    this.applyFilter();
  }

  applyFilter() {
    const f = this.filter;
    this.shown = !f ? this.events : this.events.filter((ev) =>
      ev.type.includes(f) || (ev.node_id || "").toLowerCase().includes(f) || summary(ev).toLowerCase().includes(f));
    this.count.textContent = f ? `${this.shown.length} of ${this.events.length} events` : `${this.events.length} events`;
    this.spacer.style.height = `${this.shown.length * ROW}px`;
    this.scroller.style.height = `${Math.min(480, Math.max(96, this.shown.length * ROW + 4))}px`;
    if (this.follow) this.scroller.scrollTop = this.scroller.scrollHeight;
    this.draw();
  }

  onScroll() {
    const sc = this.scroller;
    this.follow = sc.scrollTop + sc.clientHeight >= sc.scrollHeight - ROW;
    this.draw();
  }

  draw() {
    const top = this.scroller.scrollTop;
    const height = this.scroller.clientHeight || 480;
    const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
    const last = Math.min(this.shown.length, Math.ceil((top + height) / ROW) + OVERSCAN);
    this.window.style.transform = `translateY(${first * ROW}px)`;
    const rows = [];
    for (let i = first; i < last; i++) rows.push(this.row(this.shown[i]));
    this.window.replaceChildren(...rows);
  }

  row(ev) {
    const offset = this.startTs === null ? "" : "+" + fmtDuration(ev.ts - this.startTs);
    const kind = ev.type.split(".")[0];
    return h("div", {
      class: `tl-row k-${kind} t-${ev.type.replace(".", "-")}${ev.seq === this.selectedSeq ? " selected" : ""}`,
      "data-seq": ev.seq,
      onclick: () => this.select(ev),
    },
    h("span", { class: "tl-seq" }, ev.seq),
    h("span", { class: "tl-ts" }, offset),
    h("span", { class: "tl-type" }, ev.type),
    h("span", { class: "tl-node" }, ev.node_id && ev.node_id !== "root" ? ev.node_id : ""),
    h("span", { class: "tl-sum" }, summary(ev)));
  }

  select(ev) {
    this.selectedSeq = ev.seq;
    const node = ev.node_id && ev.node_id !== "root" ? ev.node_id : null;
    this.detail.replaceChildren(
      h("div", { class: "tl-detail-head" }, h("b", {}, `#${ev.seq} ${ev.type}`),
        node ? h("a", { href: "javascript:void 0", onclick: () => this.onNode?.(node) }, ` node ${node}`) : null),
      jsonBlock(ev),
    );
    this.draw();
  }

  /** Scroll to and select the event with this seq. */
  reveal(seq) {
    const index = this.shown.findIndex((ev) => ev.seq === seq);
    if (index < 0) return;
    this.follow = false;
    this.scroller.scrollTop = Math.max(0, index * ROW - this.scroller.clientHeight / 2);
    this.select(this.shown[index]);
  }
}
