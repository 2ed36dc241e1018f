import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { Card, Empty, InlineError, Page, Status } from "../components/Page";
import { Editor } from "../components/Editor";
import { SideBySide } from "../components/Diff";
import { ApiError, call, failure, getJson, request, seg } from "../lib/api";
import { ago } from "../lib/format";
import { pageState, useLive } from "../lib/hooks";
import { lint } from "../lib/lint";
import type { ConfigKeyRow, HistoryRow } from "../lib/types";

const FORMATS = ["yaml", "json", "toml", "properties", "text"];

interface Current {
  exists: boolean;
  content: string;
  version: number;
  format: string;
}

interface Beta {
  content: string;
  format: string;
  selector: string;
  author?: string;
  time?: number;
}

function formatOf(key: string): string {
  const ext = key.split(".").pop()?.toLowerCase() ?? "";
  if (ext === "yml" || ext === "yaml") return "yaml";
  if (FORMATS.includes(ext)) return ext;
  return "text";
}

async function readContent(url: string, fallbackFormat: string): Promise<Current> {
  const r = await request(url, { headers: { Accept: "*/*" } });
  if (r.status === 404) return { exists: false, content: "", version: 0, format: fallbackFormat };
  if (!r.ok) throw await failure(r);
  return {
    exists: true,
    content: await r.text(),
    version: Number(r.headers.get("X-Crossway-Version") ?? 0),
    format: r.headers.get("X-Crossway-Format") ?? fallbackFormat,
  };
}

/** The key's beta, read only when the group's key listing says it has one
 * (asking a key without a beta would be a 404 in the console). */
async function readBeta(group: string, entry: string, base: string): Promise<Beta | null> {
  const keys = await getJson<ConfigKeyRow[]>(group);
  if (!keys.some((k) => k.key === entry && k.beta)) return null;
  const r = await request(`${base}/beta`);
  if (r.status === 404) return null;
  if (!r.ok) throw await failure(r);
  return (await r.json()) as Beta;
}

function describe(exc: unknown): string {
  return exc instanceof ApiError ? exc.describe() : String(exc);
}

export function ConfigKey({ ns, group, entry }: { ns: string; group: string; entry: string }) {
  const base = `/v1/config/${seg(ns)}/${seg(group)}/${seg(entry)}`;
  const watched = [`/config/${ns}/${group}/${entry}`];
  const current = useLive(() => readContent(base, formatOf(entry)), watched, [base]);
  const history = useLive(() => getJson<HistoryRow[]>(`${base}/history`).catch(() => [] as HistoryRow[]), watched, [base]);
  const beta = useLive(() => readBeta(`/v1/config/${seg(ns)}/${seg(group)}`, entry, base), watched, [base]);

  const [draft, setDraft] = useState<string | null>(null);
  const [format, setFormat] = useState<string | null>(null);
  const [message, setMessage] = useState("");
  const [error, setError] = useState<{ message: string; text: string } | null>(null);
  const [saved, setSaved] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    setDraft(null);
    setFormat(null);
    setError(null);
    setSaved(null);
  }, [base]);

  const server = current.data;
  const text = draft ?? server?.content ?? "";
  const fmt = format ?? server?.format ?? formatOf(entry);
  const dirty = draft !== null && draft !== server?.content;
  const hint = useMemo(() => lint(fmt, text), [fmt, text]);
  // The editor follows the server's content only while nothing is drafted.
  const followedRef = useRef("");
  if (draft === null) followedRef.current = `${base}@${server?.version}:${server?.content.length}`;
  const followed = followedRef.current;

  async function save() {
    setBusy(true);
    setError(null);
    setSaved(null);
    try {
      const headers: Record<string, string> = { "Content-Type": "application/octet-stream" };
      if (message) headers["X-Crossway-Message"] = encodeURIComponent(message);
      if (server) headers["If-Match"] = String(server.exists ? server.version : 0);
      const r = await call(`${base}?format=${fmt}`, { method: "PUT", body: text, headers });
      const body = (await r.json()) as { version: number; changed?: boolean };
      setSaved(body.changed === false ? `No change: still version ${body.version}` : `Saved version ${body.version}`);
      setDraft(null);
      setMessage("");
      current.reload();
      history.reload();
    } catch (exc) {
      setError({ message: describe(exc), text });
    } finally {
      setBusy(false);
    }
  }

  return (
    <Page
      id="config-key"
      title={<span class="mono">{entry}</span>}
      subtitle={
        <>
          <a href={`/config?ns=${seg(ns)}&group=${seg(group)}`}>
            ← {ns} / {group}
          </a>
          {server?.exists ? ` · version ${server.version}` : server ? " · new key" : ""}
        </>
      }
      state={pageState(current, history)}
      error={current.error}
    >
      <Card
        title="Content"
        actions={
          <div class="form-row">
            <label class="field">
              Format
              <select data-testid="config-format" value={fmt} onChange={(e) => setFormat(e.currentTarget.value)}>
                {FORMATS.map((f) => (
                  <option key={f} value={f}>
                    {f}
                  </option>
                ))}
              </select>
            </label>
            <label class="field">
              Message
              <input data-testid="config-message" placeholder="why this change" value={message} onInput={(e) => setMessage(e.currentTarget.value)} />
            </label>
            <button class="primary" data-testid="config-save" onClick={save} disabled={busy}>
              {busy ? "Saving…" : "Save"}
            </button>
          </div>
        }
      >
        <div class="stack">
          {dirty && <div class="muted small">Unsaved changes.</div>}
          <Editor
            testid="config-editor"
            value={text}
            resetKey={followed}
            language={fmt}
            onChange={(t) => (setDraft(t), setSaved(null))}
          />
          {/* The browser's parse hint until the server has judged this very text:
              then only the server's message (their positions can differ). */}
          {hint && error?.text !== text && (
            <div class="banner banner-warning small" data-testid="config-lint">
              {hint} — the server checks again on save.
            </div>
          )}
          <InlineError testid="config-error" error={error?.message} />
          {saved && (
            <div class="inline-ok" data-testid="config-saved">
              {saved}
            </div>
          )}
        </div>
      </Card>
      <GrayRelease base={base} beta={beta.data ?? null} text={text} fmt={fmt} reload={() => (beta.reload(), current.reload(), history.reload())} />
      <div class="grid-2">
        <Card title="History">
          <History base={base} rows={history.data ?? []} reload={() => (current.reload(), history.reload())} />
        </Card>
        <Card title="Compare versions">
          <DiffPanel base={base} rows={history.data ?? []} />
        </Card>
      </div>
    </Page>
  );
}

function History({ base, rows, reload }: { base: string; rows: HistoryRow[]; reload: () => void }) {
  const [confirming, setConfirming] = useState<number | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  if (rows.length === 0) return <Empty>No versions yet.</Empty>;
  const latest = rows[0]?.version;
  async function rollback(version: number) {
    setError(null);
    try {
      const r = await call(`${base}/rollback`, {
        method: "POST",
        body: JSON.stringify({ version }),
        headers: { "Content-Type": "application/json" },
      });
      const body = (await r.json()) as { version: number };
      setDone(`Rolled back to version ${version}: now version ${body.version}`);
      reload();
    } catch (exc) {
      setError(describe(exc));
    } finally {
      setConfirming(null);
    }
  }
  return (
    <div class="stack">
      <InlineError testid="rollback-error" error={error} />
      {done && (
        <div class="inline-ok" data-testid="rollback-done">
          {done}
        </div>
      )}
      <div class="table-wrap">
        <table class="table cards-on-phone">
          <thead>
            <tr>
              <th class="num">Ver.</th>
              <th>When</th>
              <th>Author</th>
              <th>Message</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {rows.map((h) => (
              <tr key={h.version} data-testid={`history-row-${h.version}`}>
                <td data-label="Version" class="num">
                  {h.version}
                </td>
                <td data-label="When" title={new Date(h.time * 1000).toLocaleString()}>
                  {ago(h.time)}
                </td>
                <td data-label="Author">{h.author}</td>
                <td data-label="Message" class="message">
                  {h.deleted ? <Status level="critical" label="deleted" /> : null} {h.message || <span class="muted">—</span>}
                </td>
                <td class="actions">
                  {h.version === latest ? (
                    <span class="muted small">current</span>
                  ) : confirming === h.version ? (
                    <span class="confirm">
                      Roll back to v{h.version}?
                      <button class="primary" data-testid="confirm-yes" onClick={() => rollback(h.version)}>
                        Yes
                      </button>
                      <button data-testid="confirm-no" onClick={() => setConfirming(null)}>
                        No
                      </button>
                    </span>
                  ) : (
                    <button data-testid={`rollback-${h.version}`} onClick={() => setConfirming(h.version)}>
                      Roll back
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </div>
  );
}

async function versionText(base: string, version: number): Promise<string> {
  const r = await request(`${base}?version=${version}`, { headers: { Accept: "*/*" } });
  return r.ok ? r.text() : "";
}

function DiffPanel({ base, rows }: { base: string; rows: HistoryRow[] }) {
  const versions = rows.map((r) => r.version);
  const [from, setFrom] = useState<number | null>(null);
  const [to, setTo] = useState<number | null>(null);
  const [texts, setTexts] = useState<{ before: string; after: string } | null>(null);
  const a = from ?? versions[1] ?? versions[0];
  const b = to ?? versions[0];
  useEffect(() => {
    if (a === undefined || b === undefined) return;
    let stale = false;
    Promise.all([versionText(base, a), versionText(base, b)]).then(([before, after]) => !stale && setTexts({ before, after }));
    return () => {
      stale = true;
    };
  }, [base, a, b]);
  if (versions.length === 0) return <Empty>Nothing to compare yet.</Empty>;
  const select = (testid: string, value: number | undefined, set: (v: number) => void) => (
    <select data-testid={testid} value={String(value)} onChange={(e) => set(Number(e.currentTarget.value))}>
      {versions.map((v) => (
        <option key={v} value={String(v)}>
          version {v}
        </option>
      ))}
    </select>
  );
  return (
    <div class="stack">
      <div class="form-row">
        <label class="field">From {select("diff-from", a, setFrom)}</label>
        <label class="field">To {select("diff-to", b, setTo)}</label>
      </div>
      {texts ? <SideBySide testid="diff-view" before={texts.before} after={texts.after} /> : <div class="loading">Loading…</div>}
    </div>
  );
}

function GrayRelease({ base, beta, text, fmt, reload }: { base: string; beta: Beta | null; text: string; fmt: string; reload: () => void }) {
  const [selector, setSelector] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  async function act(label: string, path: string, init: RequestInit) {
    setError(null);
    setDone(null);
    try {
      await call(path, init);
      setDone(label);
      reload();
    } catch (exc) {
      setError(describe(exc));
    }
  }
  return (
    <Card title="Gray release">
      <div class="stack">
        {beta ? (
          <div class="row">
            <Status level="warning" label="beta published" />
            <span>
              to instances matching <code>{beta.selector}</code>
            </span>
          </div>
        ) : (
          <p class="muted">
            No beta. Publish the editor's content to the instances whose labels match a selector (<code>canary=true</code>, <code>zone in (eu-1,eu-2)</code>); the others keep the release.
          </p>
        )}
        <div class="form-row">
          <label class="field grow">
            Selector
            <input data-testid="beta-selector" placeholder="canary=true" value={selector} onInput={(e) => setSelector(e.currentTarget.value)} />
          </label>
          <button
            data-testid="beta-publish"
            disabled={!selector.trim()}
            onClick={() =>
              act("Beta published", `${base}?format=${fmt}&beta=${encodeURIComponent(selector.trim())}`, {
                method: "PUT",
                body: text,
                headers: { "Content-Type": "application/octet-stream" },
              })
            }
          >
            Publish beta
          </button>
          <button data-testid="beta-promote" disabled={!beta} onClick={() => act("Beta promoted to the release", `${base}/promote`, { method: "POST" })}>
            Promote
          </button>
          <button class="danger" data-testid="beta-abandon" disabled={!beta} onClick={() => act("Beta abandoned", `${base}/beta`, { method: "DELETE" })}>
            Abandon
          </button>
        </div>
        <InlineError testid="beta-error" error={error} />
        {done && (
          <div class="inline-ok" data-testid="beta-done">
            {done}
          </div>
        )}
        {beta && (
          <details>
            <summary class="muted">Beta content</summary>
            <pre class="card">{beta.content}</pre>
          </details>
        )}
      </div>
    </Card>
  );
}
