// DOM and text helpers. Everything from the API goes into the page as text (textContent or an
// attribute), never as markup.

/** An element: props are attributes (class, text, dataset and on are special), children are
 * nodes or strings (added as text); null, undefined and false are skipped. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = String(value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "on") {
      for (const [type, handler] of Object.entries(value)) el.addEventListener(type, handler);
    } else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export const STATES = ["queued", "running", "succeeded", "failed", "canceled", "expired"];
export const FINISHED = new Set(["succeeded", "failed", "canceled", "expired"]);

/** A state badge: the class comes from the known states only, the text says the state. */
export function stateBadge(state) {
  const known = STATES.includes(state) ? state : "unknown";
  return h("span", { class: `state state-${known}`, text: state ?? "unknown" });
}

function span(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ${m % 60} min`;
  return `${Math.floor(hours / 24)} d`;
}

/** "12 s ago" for a past ISO time; an em dash for none. */
export function ago(iso, now = Date.now()) {
  const t = Date.parse(iso ?? "");
  if (Number.isNaN(t)) return iso ? String(iso) : "—";
  const seconds = (now - t) / 1000;
  return seconds < 1 ? "just now" : `${span(seconds)} ago`;
}

/** "in 12 s" for a future ISO time, "due" once it has passed; an em dash for none. */
export function until(iso, now = Date.now()) {
  const t = Date.parse(iso ?? "");
  if (Number.isNaN(t)) return iso ? String(iso) : "—";
  const seconds = (t - now) / 1000;
  return seconds <= 0 ? "due" : `in ${span(seconds)}`;
}

/** A <time> whose text is relative and refreshed by refreshTimes(); the title is absolute. */
export function relTime(iso, kind = "ago") {
  const el = h("time", { datetime: iso ?? undefined, title: iso ?? undefined });
  if (iso) el.dataset.rel = kind;
  el.textContent = kind === "until" ? until(iso) : ago(iso);
  return el;
}

export function refreshTimes(root = document) {
  const now = Date.now();
  for (const el of root.querySelectorAll("time[data-rel]")) {
    const iso = el.getAttribute("datetime");
    el.textContent = el.dataset.rel === "until" ? until(iso, now) : ago(iso, now);
  }
}

export function progressText(progress) {
  if (!progress) return "—";
  const parts = [];
  if (typeof progress.fraction === "number") parts.push(`${Math.round(progress.fraction * 100)}%`);
  if (progress.step) {
    const counted = progress.step_index != null && progress.step_count != null;
    parts.push(counted ? `${progress.step} (${progress.step_index}/${progress.step_count})` : progress.step);
  }
  return parts.length ? parts.join(" · ") : "—";
}

/** A labelled <progress> with its text: indeterminate while a job runs without a fraction. */
export function progressBar(job) {
  const p = job.progress ?? {};
  const text = progressText(p);
  const bar = h("progress", { max: "1", "aria-label": `Progress of ${job.id}`, "aria-valuetext": text });
  if (typeof p.fraction === "number") bar.value = Math.min(1, Math.max(0, p.fraction));
  else if (FINISHED.has(job.state)) bar.value = job.state === "succeeded" ? 1 : 0;
  return h("span", { class: "progress" }, bar, h("span", { class: "progress-text", text }));
}

export function labelsText(labels) {
  return Object.entries(labels ?? {}).map(([k, v]) => `${k}:${v}`).join(", ");
}

/** "a:b, c:d" into [["a", "b"], ["c", "d"]]; throws on an item without a key and a colon. */
export function parseLabels(text) {
  const out = [];
  for (const raw of String(text ?? "").split(",")) {
    const item = raw.trim();
    if (!item) continue;
    const at = item.indexOf(":");
    if (at < 1) throw new Error(`labels look like key:value, got "${item}"`);
    out.push([item.slice(0, at).trim(), item.slice(at + 1).trim()]);
  }
  return out;
}

/** Pretty JSON for a <pre>, cut at max characters (a large result stays downloadable). */
export function prettyJson(value, max = 200_000) {
  const text = JSON.stringify(value, null, 2) ?? String(value);
  return text.length > max ? `${text.slice(0, max)}\n… (${text.length - max} more characters: download the result)` : text;
}
