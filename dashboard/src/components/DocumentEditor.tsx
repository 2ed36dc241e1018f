// Editing one validated JSON document of the control plane (a gateway route,
// a call policy): JSON or YAML in the editor, always sent as JSON; the
// server's 400 (message and field) shown inline; If-Match on the revision
// read, so a concurrent change is a 412 rather than a lost update.
import { useEffect, useRef, useState } from "preact/hooks";
import { parse as parseYaml, stringify as toYaml } from "yaml";
import { Editor } from "./Editor";
import { InlineError } from "./Page";
import { ApiError, call } from "../lib/api";

export interface Doc {
  revision: number | null; // null: not stored yet
  body: Record<string, unknown>;
}

interface Props {
  url: string;
  doc: Doc | undefined;
  prefix: string; // test-id prefix: "route" → route-editor, route-save, …
  onSaved: (revision: number) => void;
}

export function render(body: unknown, syntax: string): string {
  return syntax === "yaml" ? toYaml(body) : JSON.stringify(body, null, 2) + "\n";
}

export function describe(exc: unknown): string {
  return exc instanceof ApiError ? exc.describe() : String(exc);
}

export async function putDocument(url: string, body: unknown, revision: number | null): Promise<number> {
  const headers: Record<string, string> = { "Content-Type": "application/json" };
  if (revision !== null) headers["If-Match"] = String(revision);
  const r = await call(url, { method: "PUT", body: JSON.stringify(body), headers });
  return ((await r.json()) as { revision: number }).revision;
}

export function DocumentEditor({ url, doc, prefix, onSaved }: Props) {
  const [syntax, setSyntax] = useState("json");
  const [draft, setDraft] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [saved, setSaved] = useState<{ text: string; revision: number } | null>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    setDraft(null);
    setError(null);
    setSaved(null);
  }, [url]);
  const text = draft ?? (doc ? render(doc.body, syntax) : "");
  // The editor follows the stored document only while nothing is drafted.
  const followed = useRef("");
  if (draft === null) followed.current = `${url}@${doc?.revision}`;

  function switchSyntax(next: string) {
    try {
      const body = syntax === "yaml" ? parseYaml(text) : JSON.parse(text);
      setDraft(render(body, next));
    } catch {
      setDraft(null); // unparsable draft: start again from the stored document
    }
    setSyntax(next);
  }

  async function save() {
    setError(null);
    setSaved(null);
    let body: unknown;
    try {
      body = syntax === "yaml" ? parseYaml(text) : JSON.parse(text);
    } catch (exc) {
      setError(`${syntax.toUpperCase()} does not parse: ${(exc as Error).message}`);
      return;
    }
    setBusy(true);
    try {
      const revision = await putDocument(url, body, doc?.revision ?? 0);
      setSaved({ text: `Saved: revision ${revision}`, revision });
      setDraft(null);
      onSaved(revision);
    } catch (exc) {
      setError(describe(exc));
    } finally {
      setBusy(false);
    }
  }

  return (
    <div class="stack">
      <div class="form-row">
        <label class="field">
          Syntax
          <select data-testid={`${prefix}-syntax`} value={syntax} onChange={(e) => switchSyntax(e.currentTarget.value)}>
            <option value="json">JSON</option>
            <option value="yaml">YAML</option>
          </select>
        </label>
        <span class="grow" />
        <button class="primary" data-testid={`${prefix}-save`} onClick={save} disabled={busy || !doc}>
          {busy ? "Saving…" : "Save"}
        </button>
      </div>
      <Editor
        testid={`${prefix}-editor`}
        value={text}
        language={syntax}
        resetKey={`${followed.current}|${syntax}`}
        onChange={(t) => (setDraft(t), setSaved(null))}
      />
      <InlineError testid={`${prefix}-error`} error={error} />
      {saved && saved.revision === doc?.revision && (
        <div class="inline-ok" data-testid={`${prefix}-saved`}>
          {saved.text}
        </div>
      )}
    </div>
  );
}
