// The gateway's API from the page: the user's key (sessionStorage, sent as Authorization: Bearer),
// problem+json errors, short-lived stream tokens for EventSource, and streams that reconnect.
// The key never goes into a URL: EventSource gets a stream token (?access_token=) instead.

const KEY_STORAGE = "jobgate.apiKey";

function readKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) ?? "";
  } catch {
    return "";
  }
}

let apiKey = readKey();

export const auth = {
  get key() {
    return apiKey;
  },
  set(key) {
    apiKey = key.trim();
    try {
      sessionStorage.setItem(KEY_STORAGE, apiKey);
    } catch {
      /* the key lives for this page only */
    }
    tokens.reset();
  },
  clear() {
    apiKey = "";
    try {
      sessionStorage.removeItem(KEY_STORAGE);
    } catch {
      /* nothing stored */
    }
    tokens.reset();
  },
  /** Called with the ApiError of every 401: the page asks for a key. */
  onUnauthorized: (error) => {},
};

/** A problem+json answer (or a network failure: status 0). */
export class ApiError extends Error {
  constructor(status, code, detail, title = "") {
    super(detail || title || code);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.title = title;
  }
}

/** Call the API: JSON in and out, or the Response itself with raw. Throws ApiError; a 401 also
 * goes to auth.onUnauthorized unless notify is false (the caller deals with it). */
export async function api(
  path,
  { method = "GET", body, raw = false, notify = true, accept = "application/json", signal } = {},
) {
  const headers = { Accept: accept };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      signal,
    });
  } catch (error) {
    throw new ApiError(0, "network_error", `the gateway could not be reached (${error.message})`);
  }
  if (!response.ok) {
    let problem = null;
    try {
      problem = await response.json();
    } catch {
      /* not JSON: the status says enough */
    }
    const error = new ApiError(
      response.status,
      problem?.code ?? `http_${response.status}`,
      problem?.detail ?? response.statusText,
      problem?.title ?? "",
    );
    if (response.status === 401 && notify) auth.onUnauthorized(error);
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/** Stream tokens (POST /v1/stream-tokens): fetched when a stream opens, and renewed at three
 * quarters of their life while a stream holds one (hold/release), so a reopen finds a valid one
 * at hand. reset() (a new key, or none) starts a new generation: an answer to a request made
 * before it is dropped, never installed, so the old key's token and timer cannot come back. */
class TokenSource {
  constructor() {
    this.token = null;
    this.expiresAt = 0;
    this.pending = null;
    this.timer = null;
    this.renewAt = 0;
    this.generation = 0;
    this.holders = new Set();
  }

  reset() {
    this.generation += 1;
    this.token = null;
    this.expiresAt = 0;
    this.pending = null;
    this.stopTimer();
  }

  stopTimer() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  /** A stream that needs tokens (from open() until close()): renewals run while any does. */
  hold(holder) {
    this.holders.add(holder);
    if (this.timer === null && this.token !== null) this.schedule();
  }

  release(holder) {
    this.holders.delete(holder);
    if (this.holders.size === 0) this.stopTimer();
  }

  schedule() {
    this.stopTimer();
    if (this.holders.size === 0 || this.token === null) return;
    const generation = this.generation;
    // Three quarters of the life the token had, counted from now for one already part-used.
    const delay = Math.max(0, this.renewAt - Date.now());
    this.timer = setTimeout(() => {
      this.timer = null;
      if (generation !== this.generation || !apiKey || this.holders.size === 0) return;
      this.renew().catch((error) => {
        // A key revoked meanwhile: the page asks for another (the streams find out on their own).
        if (generation === this.generation && error.status === 401) auth.onUnauthorized(error);
      });
    }, delay);
  }

  /** Whether token is the current one and valid for at least margin ms more. */
  valid(token, margin = 5000) {
    return token !== null && token === this.token && this.expiresAt - Date.now() > margin;
  }

  invalidate(token) {
    if (token === this.token) this.reset();
  }

  async get() {
    if (this.valid(this.token, 1000)) return this.token;
    return this.renew();
  }

  renew() {
    if (this.pending) return this.pending;
    const generation = this.generation;
    const pending = (async () => {
      let answer;
      try {
        answer = await api("/v1/stream-tokens", { method: "POST", notify: false });
      } catch (error) {
        if (generation === this.generation) throw error; // else the old key's failure: moot
      } finally {
        if (this.pending === pending) this.pending = null;
      }
      // Asked for (or refused) with a key replaced since: ask again with the current one.
      if (generation !== this.generation) return this.get();
      // Its lifetime by this browser's clock (the two clocks may disagree), at least 1 s.
      const life = Math.max(1000, Date.parse(answer.expires_at) - Date.now());
      this.token = answer.token;
      this.expiresAt = Date.now() + life;
      this.renewAt = Date.now() + life * 0.75;
      this.schedule();
      return this.token;
    })();
    this.pending = pending;
    return pending;
  }
}

export const tokens = new TokenSource();

/** The statuses that refuse a stream (or its token) for good, and the stream's status for each:
 * retrying would only ask again (with a new token each time) to be refused again. */
const REFUSED = {
  400: "invalid",
  401: "unauthorized",
  403: "forbidden",
  404: "not_found",
  410: "not_found",
};

/** An EventSource that reconnects: by itself while its URL still works (the browser sends
 * Last-Event-ID), or reopened here with a fresh stream token and ?last_event_id= when the
 * browser gave up or the token it holds is no longer current, after a delay that grows to 15 s.
 * EventSource does not say why it gave up: a GET of the stream (with the key, aborted once its
 * answer has begun) asks, and a refusal (401, 403, 404) stops the stream instead of retrying.
 * onStatus gets "connecting", "live", "reconnecting", or for a stop "unauthorized", "forbidden",
 * "not_found" or "invalid" with the ApiError; onOpen is called each time the stream connects,
 * with how many times it had before. */
export class LiveStream {
  constructor(
    path,
    { params = {}, events = {}, onStatus = () => {}, onOpen = () => {}, lastEventId = null } = {},
  ) {
    this.path = path;
    this.params = params;
    this.events = events;
    this.onStatus = onStatus;
    this.onOpen = onOpen;
    this.opened = 0;
    this.lastEventId = lastEventId;
    this.source = null;
    this.token = null;
    this.closed = false;
    this.stopped = null; // the status it stopped with
    this.attempt = 0;
    this.timer = null;
    this.probe = null;
    this.epoch = 0; // each open() and close(): work begun before one is dropped after it
  }

  url(withToken) {
    const url = new URL(this.path, location.href);
    for (const [name, value] of Object.entries(this.params)) {
      for (const item of [].concat(value)) if (item) url.searchParams.append(name, item);
    }
    if (withToken && this.token) url.searchParams.set("access_token", this.token);
    if (this.lastEventId) url.searchParams.set("last_event_id", this.lastEventId);
    return url;
  }

  async open() {
    const epoch = ++this.epoch;
    this.closed = false;
    this.stopped = null;
    clearTimeout(this.timer);
    this.onStatus(this.attempt ? "reconnecting" : "connecting");
    this.token = null;
    if (apiKey) {
      tokens.hold(this);
      try {
        this.token = await tokens.get();
      } catch (error) {
        if (epoch !== this.epoch) return;
        if (!this.stop(error)) this.retry();
        return;
      }
    }
    if (epoch !== this.epoch) return;
    const source = new EventSource(this.url(true));
    this.source = source;
    source.onopen = () => {
      if (source !== this.source) return;
      this.attempt = 0;
      this.onStatus("live");
      this.onOpen(this.opened++);
    };
    source.onerror = () => this.failed(source);
    // Every event's id is kept for a reopen (?last_event_id=), a "message" too, whether or not its
    // data is of use here: a stream may open with one that only says where it starts. (An "id:"
    // line with no "data:" reaches no listener: only the browser's own reconnects send it.)
    const names = new Set(["message", ...Object.keys(this.events)]);
    for (const name of names) {
      const handler = this.events[name];
      source.addEventListener(name, (event) => {
        if (source !== this.source) return;
        if (event.lastEventId) this.lastEventId = event.lastEventId;
        if (!handler) return;
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          return;
        }
        handler(data, event);
      });
    }
  }

  /** Stop for good if error is a refusal: true if it was. */
  stop(error) {
    const status = REFUSED[error?.status];
    if (!status) return false;
    this.close();
    this.stopped = status;
    this.onStatus(status, error);
    return true;
  }

  failed(source) {
    if (source !== this.source || this.closed) return;
    const gaveUp = source.readyState === EventSource.CLOSED;
    if (gaveUp) {
      source.close();
      this.source = null;
      if (this.token) tokens.invalidate(this.token); // maybe refused: ask for a new one
      this.onStatus("reconnecting");
      this.diagnose();
    } else if (this.token && !tokens.valid(this.token)) {
      // The browser would come back with a token that has expired (or soon will): a new one.
      source.close();
      this.source = null;
      this.retry();
    } else {
      this.onStatus("reconnecting");
    }
  }

  /** Why the browser gave up: a refusal stops the stream, anything else is retried. */
  async diagnose() {
    const epoch = this.epoch;
    const probe = new AbortController();
    this.probe = probe;
    let error = null;
    try {
      await api(this.url(false).href, {
        raw: true,
        notify: false,
        accept: "text/event-stream",
        signal: probe.signal,
      });
    } catch (caught) {
      error = caught;
    } finally {
      probe.abort(); // an answer that has begun is a stream: not read
      if (this.probe === probe) this.probe = null;
    }
    if (epoch !== this.epoch || this.closed) return;
    if (!this.stop(error)) this.retry();
  }

  retry() {
    this.onStatus("reconnecting");
    // 0.5 s doubling to 15 s, give or take a fifth, so that many pages do not come back at once.
    const delay = Math.min(15_000, 500 * 2 ** this.attempt) * (0.8 + Math.random() * 0.4);
    this.attempt = Math.min(this.attempt + 1, 10);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      if (!this.closed) this.open();
    }, delay);
  }

  close() {
    this.epoch += 1;
    this.closed = true;
    clearTimeout(this.timer);
    this.probe?.abort();
    this.probe = null;
    this.source?.close();
    this.source = null;
    tokens.release(this);
  }
}
