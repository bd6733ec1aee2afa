// HTTP to the groklab api: the stored API key as a Bearer header, a key form on 401, SSE over fetch.

const KEY_STORAGE = "groklab.apiKey";

export class Unauthorized extends Error {}

// A non-2xx answer other than 401, with its status, so that a page can tell "not defined for this
// run" (422) or "not there yet" (404) from a failure.
export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function storedKey() {
  return localStorage.getItem(KEY_STORAGE);
}

export function forgetKey() {
  localStorage.removeItem(KEY_STORAGE);
}

function headers(extra = {}) {
  const key = storedKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function problem(response) {
  try {
    const body = await response.json();
    return body.detail || body.title || response.statusText;
  } catch {
    return response.statusText;
  }
}

export async function request(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (response.status === 401) throw new Unauthorized(await problem(response));
  if (!response.ok) throw new HttpError(response.status, `${method} ${path}: ${response.status} ${await problem(response)}`);
  return response.json();
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);

// Buckets of each series, downsampled by the server: a 10^7-step run costs `maxPoints` rows a series.
export async function queryBuckets(runId, names, maxPoints) {
  const answer = await post("/v1/metrics/query", { run_ids: [runId], names, max_points: maxPoints });
  const byName = Object.fromEntries(names.map((name) => [name, []]));
  for (const row of answer.rows) byName[row.name]?.push(row);
  return { endStep: answer.end_step, bucketWidth: answer.bucket_width, byName };
}

// Every point of the series, shaped as one-point buckets so that charts take either.
export async function queryPoints(runId, names) {
  const answer = await post("/v1/metrics/query", { run_ids: [runId], names });
  const byName = Object.fromEntries(names.map((name) => [name, []]));
  for (const row of answer.rows) {
    byName[row.name]?.push({ step_start: row.step, step_end: row.step, min: row.value, max: row.value, mean: row.value });
  }
  return { endStep: answer.end_step, byName };
}

// EventSource cannot send an Authorization header, so the stream is read with fetch and parsed here.
export function streamMetrics(runId, afterStep, { onPoints, onEnd, onError }) {
  const controller = new AbortController();
  let lastId = afterStep;
  let stopped = false;

  async function connect() {
    const response = await fetch(`/v1/runs/${runId}/metrics/stream?after_step=${lastId}`, {
      headers: headers({ Accept: "text/event-stream" }),
      signal: controller.signal,
    });
    if (response.status === 401) throw new Unauthorized(await problem(response));
    if (!response.ok) throw new Error(`stream: ${response.status} ${await problem(response)}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        if (event.type === "points") {
          const data = JSON.parse(event.data);
          lastId = data.step;
          onPoints(data);
        } else if (event.type === "end") {
          onEnd(JSON.parse(event.data));
          return true;
        }
      }
    }
  }

  (async () => {
    while (!stopped) {
      try {
        if (await connect()) return;
      } catch (error) {
        if (stopped || error.name === "AbortError") return;
        onError?.(error);
        if (error instanceof Unauthorized) return;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000)); // reconnect from the last step seen
    }
  })();
  return () => {
    stopped = true;
    controller.abort();
  };
}

function parseEvent(text) {
  const event = { type: "message", data: "" };
  for (const line of text.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event.type = value;
    else if (field === "data") event.data += (event.data ? "\n" : "") + value;
  }
  return event;
}

export function saveKey(key) {
  localStorage.setItem(KEY_STORAGE, key.trim());
}
