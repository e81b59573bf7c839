// The jobs page: a live table of jobs (GET /v1/jobs, then /v1/events), filters kept in the URL's
// query, and a job view at #/jobs/{id} (details, events, result, actions).

import { ApiError, LiveStream, api, auth } from "./api.js";
import {
  FINISHED,
  STATES,
  h,
  labelsText,
  parseLabels,
  prettyJson,
  progressBar,
  progressText,
  refreshTimes,
  relTime,
  stateBadge,
} from "./format.js";

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 50; // ?limit= in the URL changes it (1-500)
const RECORDS_PER_PAGE = 20;
const EXAMPLES = {
  extract: { url: "https://example.com", maxPages: 3 },
  catchall: { query: "Series B rounds in logistics", limit: 10 },
  pulse: { fileUrl: "https://example.com/report.pdf" },
};
const COLUMNS = ["Job", "Provider", "State", "Native status", "Progress", "ETA", "Polls", "Age"];

const page = {
  providers: new Map(), // name -> capabilities
  filters: { provider: "", state: "", label: "" },
  limit: PAGE_SIZE,
  jobs: new Map(), // id -> job, for every row shown
  rows: new Map(), // id -> <tr>
  order: [], // ids shown, newest first
  nextCursor: null,
  listed: false, // the first page is in: events may add rows
  pending: [], // events that came before it
  generation: 0,
  stream: null,
  view: null, // the open job view
};

// -- alerts and connection state -----------------------------------------------------------------

function showAlert(error, context = "") {
  const box = $("alert");
  box.replaceChildren();
  const code = error instanceof ApiError ? error.code : "error";
  const detail = error instanceof ApiError ? error.detail : String(error.message ?? error);
  box.append(
    h("p", {},
      context ? `${context}: ` : "",
      h("strong", { class: "code", text: code }),
      " ",
      h("span", { class: "detail", text: detail }),
    ),
    h("button", { type: "button", class: "secondary", on: { click: clearAlert } }, "Dismiss"),
  );
}

function clearAlert() {
  $("alert").replaceChildren();
}

const CONNECTION = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  unauthorized: "Needs an API key",
  forbidden: "Not allowed",
  not_found: "Not found",
  invalid: "Refused",
  offline: "Offline",
};

function setConnection(state) {
  const el = $("conn");
  if (el.dataset.state === state) return;
  el.dataset.state = state;
  $("conn-text").textContent = CONNECTION[state] ?? state;
}

// -- the key -------------------------------------------------------------------------------------

/** Show the key form: no key, a key refused (401), or one without the scope (403: "forbidden"). */
function askForKey(error, state = "unauthorized") {
  const panel = $("auth");
  const wasHidden = panel.hidden;
  panel.hidden = false;
  const refused = error && error.code !== "auth_required";
  $("auth-message").replaceChildren(
    h("strong", {
      text: refused ? "The gateway refused this key." : "This gateway needs an API key.",
    }),
    " Enter a key with the jobs:read scope (and jobs:write to submit, cancel, rerun or continue).",
    error ? h("span", { class: "hint block", text: `${error.code}: ${error.detail}` }) : null,
  );
  $("forget-key").hidden = !auth.key;
  setConnection(state);
  if (wasHidden || document.activeElement === document.body) $("api-key").focus();
}

auth.onUnauthorized = (error) => askForKey(error);

function showKeyState() {
  const panel = $("auth");
  if (auth.key) {
    panel.hidden = false;
    $("auth-message").textContent = `Using the key ${auth.key.slice(0, 11)}… (this tab only).`;
    $("forget-key").hidden = false;
  } else if (!panel.hidden && !["unauthorized", "forbidden"].includes($("conn").dataset.state)) {
    panel.hidden = true;
  }
}

// -- filters in the URL --------------------------------------------------------------------------

function readFilters() {
  const q = new URLSearchParams(location.search);
  page.filters = {
    provider: q.get("provider") ?? "",
    state: STATES.includes(q.get("state")) ? q.get("state") : "",
    label: q.getAll("label").join(", "),
  };
  const limit = Number(q.get("limit"));
  page.limit = Number.isInteger(limit) && limit >= 1 && limit <= 500 ? limit : PAGE_SIZE;
  const select = $("f-provider");
  if (page.filters.provider && ![...select.options].some((o) => o.value === page.filters.provider)) {
    select.append(h("option", { value: page.filters.provider, text: page.filters.provider }));
  }
  select.value = page.filters.provider;
  $("f-state").value = page.filters.state;
  $("f-label").value = page.filters.label;
}

function labelFilters() {
  try {
    return parseLabels(page.filters.label);
  } catch {
    return [];
  }
}

function writeFilters() {
  let labels;
  try {
    labels = parseLabels($("f-label").value);
  } catch (error) {
    showAlert(new ApiError(0, "invalid_label", error.message), "Filter");
    $("f-label").focus();
    return;
  }
  const q = new URLSearchParams();
  if ($("f-provider").value) q.set("provider", $("f-provider").value);
  if ($("f-state").value) q.set("state", $("f-state").value);
  for (const [k, v] of labels) q.append("label", `${k}:${v}`);
  if (page.limit !== PAGE_SIZE) q.set("limit", String(page.limit));
  const search = q.toString() ? `?${q}` : "";
  if (search !== location.search) {
    history.pushState(null, "", `${location.pathname}${search}${location.hash}`);
  }
  readFilters();
  clearAlert();
  restartTable();
}

function matches(job) {
  const f = page.filters;
  if (f.provider && job.provider !== f.provider) return false;
  if (f.state && job.state !== f.state) return false;
  for (const [k, v] of labelFilters()) if ((job.labels ?? {})[k] !== v) return false;
  return true;
}

function describeFilters() {
  const f = page.filters;
  const parts = [];
  if (f.provider) parts.push(`provider ${f.provider}`);
  if (f.state) parts.push(`state ${f.state}`);
  if (f.label) parts.push(`labels ${f.label}`);
  return parts.length ? `; ${parts.join(", ")}` : "";
}

// -- the table -----------------------------------------------------------------------------------

function newer(a, b) {
  // Newest first: created_at, then the id (ids sort by creation too).
  const ta = Date.parse(a.created_at);
  const tb = Date.parse(b.created_at);
  if (ta !== tb) return ta > tb;
  return a.id > b.id;
}

function cell(column, ...children) {
  // The column name rides along for the stacked layout of narrow screens (style.css).
  return h("td", { "data-label": COLUMNS[column] }, ...children);
}

function renderRow(job, row) {
  row.dataset.state = job.state;
  row.replaceChildren(
    cell(0,
      h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, class: "job-link" },
        h("code", { text: job.id })),
      Object.keys(job.labels ?? {}).length
        ? h("span", { class: "labels", text: labelsText(job.labels) })
        : null,
    ),
    cell(1, job.provider),
    cell(2, stateBadge(job.state)),
    cell(3, job.native_status ?? "—"),
    cell(4, progressBar(job)),
    cell(5, FINISHED.has(job.state) || !job.eta ? "—" : relTime(job.eta, "until")),
    cell(6, String(job.polls)),
    cell(7, relTime(job.created_at)),
  );
  row.cells[2].dataset.col = "state";
}

function upsert(job, { fromList = false } = {}) {
  if (!job?.id) return;
  if (!page.listed && !fromList) {
    page.pending.push(job);
    return;
  }
  const known = page.jobs.get(job.id);
  if (known && known.version > job.version) return; // an older copy: keep the newer
  if (page.view?.id === job.id) updateView(job);
  if (!matches(job)) {
    if (known) removeRow(job.id); // it left the filter (e.g. its state changed)
    return;
  }
  if (!known && !fromList && page.nextCursor !== null) {
    // Older than every row shown? Then it belongs to a page not loaded yet.
    const oldest = page.jobs.get(page.order[page.order.length - 1]);
    if (oldest && !newer(job, oldest)) return;
  }
  page.jobs.set(job.id, job);
  let row = page.rows.get(job.id);
  if (!row) {
    row = h("tr", { dataset: { jobId: job.id } });
    page.rows.set(job.id, row);
    let at = page.order.findIndex((id) => newer(job, page.jobs.get(id)));
    if (at === -1) at = page.order.length;
    $("jobs-body").insertBefore(row, page.rows.get(page.order[at]) ?? null);
    page.order.splice(at, 0, job.id);
  }
  renderRow(job, row);
  showCount();
}

function removeRow(id) {
  page.rows.get(id)?.remove();
  page.rows.delete(id);
  page.jobs.delete(id);
  page.order = page.order.filter((other) => other !== id);
  showCount();
}

function showCount() {
  const n = page.order.length;
  $("jobs-caption").textContent =
    `${n} job${n === 1 ? "" : "s"}${page.nextCursor ? " (more below)" : ""}, newest first, updated live${describeFilters()}`;
  $("jobs-empty").hidden = n > 0 || !page.listed;
  $("load-more").hidden = !page.nextCursor;
}

function listQuery(cursor) {
  const q = new URLSearchParams({ limit: String(page.limit) });
  if (page.filters.provider) q.set("provider", page.filters.provider);
  if (page.filters.state) q.set("state", page.filters.state);
  for (const [k, v] of labelFilters()) q.append("label", `${k}:${v}`);
  if (cursor) q.set("cursor", cursor);
  return `/v1/jobs?${q}`;
}

async function loadPage(cursor = null) {
  const generation = page.generation;
  const button = $("load-more");
  button.disabled = true;
  try {
    const body = await api(listQuery(cursor));
    if (generation !== page.generation) return; // the filters changed meanwhile
    // The first page read again (a stream came back) leaves the pages loaded since as they are.
    if (cursor || !page.listed) page.nextCursor = body.next_cursor;
    for (const job of body.jobs) upsert(job, { fromList: true });
    if (!page.listed) {
      page.listed = true;
      const early = page.pending.splice(0);
      for (const job of early) upsert(job);
    }
    showCount();
  } catch (error) {
    if (error.status !== 401) showAlert(error, "Listing jobs");
  } finally {
    button.disabled = false;
  }
}

function onTableEvent(data) {
  upsert({ ...data, id: data.id ?? data.job_id });
}

function restartTable() {
  page.generation += 1;
  page.stream?.close();
  page.jobs.clear();
  page.rows.clear();
  page.order = [];
  page.pending = [];
  page.listed = false;
  page.nextCursor = null;
  $("jobs-body").replaceChildren();
  showCount();
  // The stream connects first and the first page is read once it has (its events wait for that
  // page), so no change falls between the two. /v1/events starts from now: a stream that comes
  // back without having seen an event reads the first page again for what it missed.
  // provider filters on the server; state and labels here: /v1/events filters by the state an
  // event was written in, so a job leaving the chosen state would never say so.
  const generation = page.generation;
  const stream = new LiveStream("/v1/events", {
    params: { provider: page.filters.provider },
    events: { created: onTableEvent, state: onTableEvent, progress: onTableEvent },
    onStatus: (status, error) => {
      if (page.stream !== stream) return;
      if (status === "unauthorized" || status === "forbidden") {
        askForKey(error, status);
        return;
      }
      setConnection(status);
      // Refused for good (a filter the gateway rejects, no such route): the list still comes.
      if (error) showAlert(error, "Live updates");
    },
    onOpen: (before) => {
      if (before === 0 || !stream.lastEventId) loadPage();
    },
  });
  page.stream = stream;
  stream.open();
  // A stream that cannot connect (a proxy that refuses streams) still gets the list.
  setTimeout(() => {
    if (page.generation === generation && !page.listed && stream.opened === 0) loadPage();
  }, 4000);
}

// -- providers and the submit form ---------------------------------------------------------------

async function loadProviders() {
  const body = await api("/v1/providers");
  page.providers = new Map(body.providers.map((p) => [p.name, p.capabilities ?? {}]));
  const filter = $("f-provider");
  const chosen = page.filters.provider;
  filter.replaceChildren(h("option", { value: "", text: "All providers" }));
  const submit = $("s-provider");
  const before = submit.value;
  submit.replaceChildren();
  for (const [name, caps] of page.providers) {
    filter.append(h("option", { value: name, text: name }));
    if (caps.submit) submit.append(h("option", { value: name, text: name }));
  }
  if (chosen && !page.providers.has(chosen)) filter.append(h("option", { value: chosen, text: chosen }));
  filter.value = chosen;
  if (before) submit.value = before;
  fillExample();
}

let lastExample = "";

function fillExample() {
  const area = $("s-request");
  const example = JSON.stringify(EXAMPLES[$("s-provider").value] ?? {}, null, 2);
  if (!area.value.trim() || area.value === lastExample) area.value = example;
  lastExample = example;
}

async function submitJob(event) {
  event.preventDefault();
  const status = $("submit-status");
  status.replaceChildren();
  let request;
  let labels;
  try {
    request = JSON.parse($("s-request").value);
    if (typeof request !== "object" || request === null || Array.isArray(request)) {
      throw new Error("the request must be a JSON object");
    }
    labels = Object.fromEntries(parseLabels($("s-labels").value));
  } catch (error) {
    showAlert(new ApiError(0, "invalid_input", error.message), "Submit");
    return;
  }
  const button = event.submitter ?? $("submit-form").querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const job = await api("/v1/jobs", {
      method: "POST",
      body: { provider: $("s-provider").value, request, labels },
    });
    clearAlert();
    upsert(job);
    status.append("Submitted ", jobLink(job.id), ".");
  } catch (error) {
    showAlert(error, "Submit");
  } finally {
    button.disabled = false;
  }
}

function jobLink(id) {
  return h("a", { href: `#/jobs/${encodeURIComponent(id)}` }, h("code", { text: id }));
}

// -- the job view --------------------------------------------------------------------------------

function route() {
  const match = /^#\/jobs\/([^/]+)$/.exec(location.hash);
  const id = match ? decodeURIComponent(match[1]) : null;
  if (id === page.view?.id) return;
  if (page.view) closeView();
  if (id) openView(id);
}

async function openView(id) {
  const view = { id, job: null, stream: null, actionsKey: "", resultKey: "", resultPage: 1 };
  page.view = view;
  const section = $("job");
  section.hidden = false;
  $("job-title").textContent = id;
  $("job-details").replaceChildren();
  $("job-actions").replaceChildren();
  $("action-status").replaceChildren();
  $("job-result").replaceChildren();
  $("timeline").replaceChildren();
  $("timeline-status").textContent = "";
  $("job-heading").focus();
  section.scrollIntoView?.({ block: "nearest" });
  try {
    const job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    if (page.view !== view) return;
    updateView(job);
  } catch (error) {
    if (page.view !== view) return;
    showAlert(error, `Job ${id}`);
    return;
  }
  followJob(view);
}

function followJob(view, lastEventId = null) {
  view.stream?.close();
  const onJob = (kind) => (data) => {
    if (page.view !== view) return;
    const job = { ...data, id: data.id ?? data.job_id };
    addTimeline(kind, job);
    upsert(job);
    updateView(job);
  };
  view.stream = new LiveStream(`/v1/jobs/${encodeURIComponent(view.id)}/events`, {
    lastEventId,
    events: {
      created: onJob("created"),
      state: onJob("state"),
      progress: onJob("progress"),
      records: (data) => page.view === view && addTimeline("records", data),
      end: async (data) => {
        if (page.view !== view) return;
        view.stream.close(); // or EventSource reconnects and gets "end" again
        addTimeline("end", data);
        $("timeline-status").textContent = "The job is finished: its stream has ended.";
        try {
          updateView(await api(`/v1/jobs/${encodeURIComponent(view.id)}`));
        } catch {
          /* the job was deleted: the timeline says so */
        }
      },
    },
    onStatus: (status, error) => {
      if (page.view !== view) return;
      if (status === "unauthorized") askForKey(error);
      const words = {
        connecting: "Connecting…",
        live: "Following live.",
        reconnecting: "Reconnecting…",
        unauthorized: "Not following: needs an API key.",
        forbidden: "Not following: this key is not allowed to read this job.",
        not_found: "Not following: there is no such job (any more).",
      };
      let text = words[status] ?? `Not following: ${status}.`;
      if (error && status !== "unauthorized") text += ` (${error.code}: ${error.detail})`;
      $("timeline-status").textContent = text;
    },
  });
  view.stream.open();
}

function closeView() {
  const view = page.view;
  if (!view) return;
  view.stream?.close();
  page.view = null;
  $("job").hidden = true;
  const link = page.rows.get(view.id)?.querySelector("a.job-link");
  (link ?? $("jobs-heading")).focus();
}

function addTimeline(kind, data) {
  let text;
  if (kind === "created") text = `created, ${data.state}`;
  else if (kind === "state") text = `${data.from ?? "?"} → ${data.state}`;
  else if (kind === "progress") text = progressText(data.progress);
  else if (kind === "records") text = `${data.count} records from ${data.offset}${data.total_records != null ? ` of ${data.total_records}` : ""}`;
  else text = `stream ended: ${data.reason}${data.state ? `, ${data.state}` : ""}`;
  const when = data.updated_at ?? null;
  const list = $("timeline");
  list.append(
    h("li", { class: `ev ev-${kind}` },
      when ? h("time", { datetime: when, text: new Date(when).toLocaleTimeString() }) : null,
      h("strong", { text: kind }),
      h("span", { text }),
      data.native_status ? h("span", { class: "native", text: `(${data.native_status})` }) : null,
    ),
  );
  while (list.children.length > 500) list.firstElementChild.remove();
}

/** A time both ways: relative (refreshed) and this browser's local clock. */
function stamp(iso) {
  if (!iso) return "—";
  return [relTime(iso), h("span", { class: "hint", text: ` (${new Date(iso).toLocaleString()})` })];
}

function term(name, ...value) {
  return [h("dt", { text: name }), h("dd", {}, ...value)];
}

function updateView(job) {
  const view = page.view;
  if (!view || view.id !== job.id) return;
  if (view.job && view.job.version > job.version) return;
  view.job = job;
  $("job-details").replaceChildren(
    ...term("Id", h("code", { text: job.id })),
    ...term("State", stateBadge(job.state)),
    ...term("Native status", job.native_status ?? "—"),
    ...term("Provider", job.provider),
    ...term("Upstream id", h("code", { text: job.upstream_id })),
    ...term("Progress", progressBar(job)),
    ...term("ETA", FINISHED.has(job.state) || !job.eta ? "—" : relTime(job.eta, "until")),
    ...term("Created", stamp(job.created_at)),
    ...term("Started", stamp(job.started_at)),
    ...term("Updated", stamp(job.updated_at)),
    ...term("Finished", stamp(job.finished_at)),
    ...term("Next poll", job.next_poll_at ? relTime(job.next_poll_at, "until") : "—"),
    ...term("Polls", String(job.polls)),
    ...term("Labels", labelsText(job.labels) || "—"),
    ...(job.rerun_of ? term("Rerun of", jobLink(job.rerun_of)) : []),
    ...term("Error", job.error ? `${job.error.code}: ${job.error.message}` : "—"),
  );
  $("job-details").dataset.state = job.state;
  renderActions(view, job);
  renderResult(view, job);
}

// -- actions -------------------------------------------------------------------------------------

function renderActions(view, job) {
  const caps = page.providers.get(job.provider) ?? {};
  const can = {
    cancel: caps.cancel && !FINISHED.has(job.state),
    // Native where the provider has it; otherwise a resubmission of the stored request.
    rerun: (caps.rerun || caps.submit) && FINISHED.has(job.state),
    continue: caps.continue && job.state === "succeeded",
  };
  const key = JSON.stringify(can);
  if (key === view.actionsKey) return; // unchanged: keep focus and typed input
  view.actionsKey = key;
  const box = $("job-actions");
  const hadFocus = box.contains(document.activeElement);
  const parts = [];
  if (can.cancel) {
    parts.push(h("button", { type: "button", id: "act-cancel", on: { click: (e) => act(view, "cancel", e.currentTarget) } }, "Cancel job"));
  }
  if (can.rerun) {
    parts.push(h("button", { type: "button", id: "act-rerun", on: { click: (e) => act(view, "rerun", e.currentTarget) } }, "Rerun"));
  }
  if (can.continue) {
    const input = h("input", { id: "act-limit", type: "number", min: "1", step: "1", inputmode: "numeric" });
    parts.push(
      h("form", { class: "row-form", id: "act-continue", on: { submit: (e) => {
        e.preventDefault();
        const body = input.value ? { new_limit: Number(input.value) } : {};
        act(view, "continue", e.submitter, body);
      } } },
        h("div", { class: "field" }, h("label", { for: "act-limit", text: "New limit" }), input),
        h("button", { type: "submit" }, "Continue"),
      ),
    );
  }
  if (!parts.length) parts.push(h("p", { class: "hint", text: "No actions for this job now." }));
  box.replaceChildren(h("h3", { class: "visually-hidden", text: "Actions" }), ...parts);
  if (hadFocus && !box.contains(document.activeElement)) $("job-heading").focus();
}

async function act(view, action, button, body = undefined) {
  const status = $("action-status");
  status.replaceChildren();
  if (button) button.disabled = true;
  try {
    const job = await api(`/v1/jobs/${encodeURIComponent(view.id)}/${action}`, {
      method: "POST",
      body: action === "continue" ? body : undefined,
    });
    clearAlert();
    upsert(job);
    if (action === "rerun") {
      status.append("Rerun started as ", jobLink(job.id), ".");
    } else {
      status.textContent = action === "cancel" ? "Cancel requested." : "Continued: following the job again.";
      updateView(job);
      if (action === "continue" && page.view === view) followJob(view, view.stream?.lastEventId);
    }
  } catch (error) {
    showAlert(error, `${action[0].toUpperCase()}${action.slice(1)} ${view.id}`);
  } finally {
    if (button?.isConnected) button.disabled = false;
  }
}

// -- results -------------------------------------------------------------------------------------

function renderResult(view, job) {
  const r = job.result ?? {};
  // Rebuilt only when the result changes, not on every progress event (a page being read stays).
  const key = JSON.stringify([r.available, r.kind, r.total_records, r.partial, FINISHED.has(job.state)]);
  if (key === view.resultKey) return;
  view.resultKey = key;
  const box = $("job-result");
  if (!r.available) {
    box.replaceChildren(h("p", { class: "hint", text: FINISHED.has(job.state) ? "This job has no result." : "No result yet." }));
    return;
  }
  const url = `/v1/jobs/${encodeURIComponent(job.id)}/result`;
  const filename = `${job.id}-result.json`;
  const link = h("a", { href: url, download: filename, class: "button", id: "result-download", on: {
    click: (event) => {
      if (!auth.key) return; // a plain link: no key is needed
      event.preventDefault();
      download(url, filename, event.currentTarget);
    },
  } }, r.kind === "paged" ? "Download page 1" : "Download result");
  const facts = [r.kind, r.partial ? "partial" : null, r.total_records != null ? `${r.total_records} records` : null, r.size != null ? `${r.size} bytes` : null]
    .filter(Boolean).join(" · ");
  box.replaceChildren(h("p", { class: "result-head" }, link, " ", h("span", { class: "hint", text: facts })), h("div", { id: "result-body" }));
  if (r.kind === "inline") showInline(view, url);
  else if (r.kind === "paged") showPage(view, url, 1);
}

async function download(url, filename, link) {
  link.setAttribute("aria-busy", "true");
  try {
    const response = await api(url, { raw: true });
    const blob = await response.blob();
    const href = URL.createObjectURL(blob);
    const a = h("a", { href, download: filename, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(href), 60_000);
  } catch (error) {
    showAlert(error, "Download");
  } finally {
    link.removeAttribute("aria-busy");
  }
}

async function showInline(view, url) {
  try {
    const body = await api(url);
    if (page.view !== view) return;
    $("result-body")?.replaceChildren(h("pre", { class: "json", tabindex: "0", "aria-label": "Result (JSON)", text: prettyJson(body.data ?? body) }));
  } catch (error) {
    if (page.view === view) $("result-body")?.replaceChildren(h("p", { class: "hint", text: `${error.code}: ${error.detail}` }));
  }
}

async function showPage(view, url, number) {
  const target = $("result-body");
  if (!target) return;
  target.setAttribute("aria-busy", "true");
  try {
    const body = await api(`${url}?page=${number}&page_size=${RECORDS_PER_PAGE}`);
    if (page.view !== view) return;
    view.resultPage = body.page ?? number;
    const total = body.total_pages ?? 1;
    const nav = h("nav", { class: "pager", "aria-label": "Result pages" },
      h("button", { type: "button", class: "secondary", id: "page-prev", disabled: view.resultPage <= 1,
        on: { click: () => showPage(view, url, view.resultPage - 1) } }, "Previous page"),
      h("span", { id: "page-label", "aria-live": "polite", text: `Page ${view.resultPage} of ${total}${body.total_records != null ? ` · ${body.total_records} records` : ""}` }),
      h("button", { type: "button", class: "secondary", id: "page-next", disabled: view.resultPage >= total,
        on: { click: () => showPage(view, url, view.resultPage + 1) } }, "Next page"),
    );
    const start = (view.resultPage - 1) * (body.page_size ?? RECORDS_PER_PAGE) + 1;
    const records = h("ol", { class: "records", start: String(start) },
      (body.records ?? []).map((record) => h("li", {}, h("pre", { class: "json", text: prettyJson(record, 20_000) }))));
    const focused = document.activeElement?.id;
    const region = h("div", { class: "records-wrap", role: "region", tabindex: "0", "aria-label": `Records of page ${view.resultPage}` }, records);
    target.replaceChildren(nav, region);
    if (focused === "page-prev" || focused === "page-next") {
      // Keep the keyboard where it was; at the first or last page, on the other button.
      const same = $(focused);
      (same.disabled ? $(focused === "page-prev" ? "page-next" : "page-prev") : same).focus();
    }
  } catch (error) {
    if (page.view === view) showAlert(error, "Result page");
  } finally {
    target.removeAttribute("aria-busy");
  }
}

// -- start ---------------------------------------------------------------------------------------

async function start() {
  page.stream?.close();
  showKeyState();
  try {
    await loadProviders();
  } catch (error) {
    if (error.status === 401) return; // askForKey() has said so
    showAlert(error, "Loading providers");
  }
  restartTable();
  route();
  // A job view whose stream was refused (no key, a key without the scope) tries again.
  const view = page.view;
  if (view?.stream?.stopped) followJob(view, view.stream.lastEventId);
}

function wire() {
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    writeFilters();
  });
  $("f-provider").addEventListener("change", writeFilters);
  $("f-state").addEventListener("change", writeFilters);
  $("f-clear").addEventListener("click", () => {
    $("f-provider").value = "";
    $("f-state").value = "";
    $("f-label").value = "";
    writeFilters();
  });
  $("load-more").addEventListener("click", () => loadPage(page.nextCursor));
  $("s-provider").addEventListener("change", fillExample);
  $("submit-form").addEventListener("submit", submitJob);
  $("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    auth.set(key);
    $("api-key").value = "";
    clearAlert();
    setConnection("connecting");
    $("auth").hidden = true;
    start();
  });
  $("forget-key").addEventListener("click", () => {
    auth.clear();
    $("api-key").value = "";
    page.stream?.close();
    if (page.view) closeView();
    location.hash = "";
    start();
  });
  $("job-close").addEventListener("click", () => {
    history.pushState(null, "", `${location.pathname}${location.search}`);
    route();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && page.view && $("job").contains(document.activeElement)) {
      $("job-close").click();
    }
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("popstate", () => {
    const before = JSON.stringify(page.filters);
    readFilters();
    if (JSON.stringify(page.filters) !== before) restartTable();
    route();
  });
  setInterval(() => refreshTimes(), 5000);
  // A page left open without a connection says so rather than showing stale rows as live.
  window.addEventListener("offline", () => setConnection("offline"));
  window.addEventListener("online", () => restartTable());
}

readFilters();
wire();
start();
