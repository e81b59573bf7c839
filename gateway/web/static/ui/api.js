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

/** Call the API: JSON in and out, or the Response itself with raw. Throws ApiError. */
export async function api(path, { method = "GET", body, raw = false } = {}) {
  const headers = { Accept: "application/json" };
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
    if (response.status === 401) auth.onUnauthorized(error);
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/** Stream tokens (POST /v1/stream-tokens): fetched when a stream opens, renewed at three
 * quarters of their life so a reconnect always has a valid one. */
class TokenSource {
  constructor() {
    this.token = null;
    this.expiresAt = 0;
    this.pending = null;
    this.timer = null;
  }

  reset() {
    this.token = null;
    this.expiresAt = 0;
    clearTimeout(this.timer);
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
    this.pending ??= (async () => {
      try {
        const answer = await api("/v1/stream-tokens", { method: "POST" });
        // Its lifetime by this browser's clock (the two clocks may disagree), at least 1 s.
        const life = Math.max(1000, Date.parse(answer.expires_at) - Date.now());
        this.token = answer.token;
        this.expiresAt = Date.now() + life;
        clearTimeout(this.timer);
        this.timer = setTimeout(() => {
          if (apiKey) this.renew().catch(() => {});
        }, life * 0.75);
        return this.token;
      } finally {
        this.pending = null;
      }
    })();
    return this.pending;
  }
}

export const tokens = new TokenSource();

/** An EventSource that reconnects: by itself while its URL still works (the browser sends
 * Last-Event-ID), or reopened here with a fresh stream token and ?last_event_id= when the
 * browser gave up or the token it holds is no longer current.
 * onStatus gets "connecting", "live", "reconnecting" or "unauthorized"; onOpen is called each
 * time the stream connects, with how many times it had before. */
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
    this.attempt = 0;
    this.timer = null;
  }

  async open() {
    this.closed = false;
    this.onStatus(this.attempt ? "reconnecting" : "connecting");
    const url = new URL(this.path, location.href);
    for (const [name, value] of Object.entries(this.params)) {
      for (const item of [].concat(value)) if (item) url.searchParams.append(name, item);
    }
    this.token = null;
    if (apiKey) {
      try {
        this.token = await tokens.get();
      } catch (error) {
        if (this.closed) return;
        if (error.status === 401 || error.status === 403) {
          this.onStatus("unauthorized", error);
          return;
        }
        this.retry();
        return;
      }
      url.searchParams.set("access_token", this.token);
    }
    if (this.lastEventId) url.searchParams.set("last_event_id", this.lastEventId);
    if (this.closed) return;
    const source = new EventSource(url);
    this.source = source;
    source.onopen = () => {
      this.attempt = 0;
      this.onStatus("live");
      this.onOpen(this.opened++);
    };
    source.onerror = () => this.failed(source);
    for (const [name, handler] of Object.entries(this.events)) {
      source.addEventListener(name, (event) => {
        if (event.lastEventId) this.lastEventId = event.lastEventId;
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

  failed(source) {
    if (source !== this.source || this.closed) return;
    const gaveUp = source.readyState === EventSource.CLOSED;
    if (gaveUp && this.token) tokens.invalidate(this.token); // refused: ask for a new one
    if (gaveUp || (this.token && !tokens.valid(this.token))) {
      source.close();
      this.source = null;
      this.retry();
    } else {
      this.onStatus("reconnecting");
    }
  }

  retry() {
    this.onStatus("reconnecting");
    const delay = Math.min(15_000, 500 * 2 ** this.attempt);
    this.attempt += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      if (!this.closed) this.open();
    }, delay);
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.source?.close();
    this.source = null;
  }
}
