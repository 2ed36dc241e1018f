// Live updates from `GET /v1/watch?prefix=...` (Server-Sent Events).
//
// Read with fetch streaming rather than EventSource so the bearer token goes
// along. One connection per distinct prefix, shared by every subscriber
// (browsers allow only six connections per host over HTTP/1.1). Subscribers
// are told "something under your prefix changed" and re-read the API: the
// API's answer, not the raw store value, is what pages show.

import { authHeaders } from "./api";

/** Called with the changed key, or null when changes may have been missed
 * (a reconnect, a compaction). */
type Listener = (key: string | null) => void;

interface Channel {
  listeners: Set<Listener>;
  abort: AbortController;
}

const channels = new Map<string, Channel>();
const RETRY_MS = [500, 1000, 2000, 5000];

/** Calls `listener` after every change under `prefix`, and after a reconnect.
 * `onOpen` runs once the stream is established (or has failed), so a caller
 * that lists after it misses nothing. Returns the unsubscribe function. */
export function watchPrefix(prefix: string, listener: Listener, onOpen?: () => void): () => void {
  let channel = channels.get(prefix);
  if (!channel) {
    channel = { listeners: new Set(), abort: new AbortController() };
    channels.set(prefix, channel);
    void run(prefix, channel, onOpen);
  } else if (onOpen) {
    queueMicrotask(onOpen);
  }
  channel.listeners.add(listener);
  return () => {
    const current = channels.get(prefix);
    if (!current) return;
    current.listeners.delete(listener);
    if (current.listeners.size === 0) {
      current.abort.abort();
      channels.delete(prefix);
    }
  };
}

function notify(channel: Channel, key: string | null): void {
  channel.listeners.forEach((l) => l(key));
}

function keyOf(data: string): string | null {
  try {
    return String((JSON.parse(data) as { key?: unknown }).key ?? "") || null;
  } catch {
    return null;
  }
}

async function run(prefix: string, channel: Channel, onOpen?: () => void): Promise<void> {
  let lastId: string | null = null;
  let attempt = 0;
  let opened = false;
  const signal = channel.abort.signal;
  while (!signal.aborted) {
    try {
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (lastId) headers.set("Last-Event-ID", lastId);
      const response = await fetch(`/v1/watch?prefix=${encodeURIComponent(prefix)}`, { headers, signal });
      if (!opened) {
        opened = true;
        onOpen?.();
      } else {
        notify(channel, null); // we may have missed changes while away
      }
      if (!response.ok || !response.body) throw new Error(`watch answered ${response.status}`);
      attempt = 0;
      for await (const frame of frames(response.body, signal)) {
        if (frame.event === "compacted") {
          lastId = null;
          notify(channel, null);
          break;
        }
        if (frame.id) lastId = frame.id;
        if (frame.data) notify(channel, keyOf(frame.data));
      }
    } catch {
      if (!opened) {
        opened = true;
        onOpen?.();
      }
    }
    if (signal.aborted) return;
    await sleep(RETRY_MS[Math.min(attempt++, RETRY_MS.length - 1)], signal);
  }
}

interface Frame {
  id?: string;
  event?: string;
  data?: string;
}

async function* frames(body: ReadableStream<Uint8Array>, signal: AbortSignal): AsyncGenerator<Frame> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    while (!signal.aborted) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end: number;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        yield parseFrame(block);
      }
    }
  } finally {
    reader.releaseLock();
  }
}

function parseFrame(block: string): Frame {
  const frame: Frame = {};
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") frame.id = value;
    else if (field === "event") frame.event = value;
    else if (field === "data") frame.data = (frame.data ? frame.data + "\n" : "") + value;
  }
  return frame;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
