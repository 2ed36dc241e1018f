import { useEffect, useState } from "preact/hooks";
import { Card, InlineError, Page } from "../components/Page";
import { DocumentEditor, describe, putDocument } from "../components/DocumentEditor";
import { seg } from "../lib/api";
import { readDocument } from "../lib/documents";
import { pageState, useLive } from "../lib/hooks";
import { SplitBar, summariseMatch } from "./Routes";

type Backend = { service: string; weight?: number };
const TEMPLATE = { match: { path_prefix: "/" }, backends: [{ service: "my-service", weight: 100 }] };

/** Percentages (summing to 100) from relative weights. */
export function toPercent(weights: number[]): number[] {
  const total = weights.reduce((a, b) => a + b, 0);
  if (total === 0) return weights.map(() => 0);
  const pct = weights.map((w) => Math.round((w / total) * 100));
  const drift = 100 - pct.reduce((a, b) => a + b, 0);
  if (drift !== 0) pct[pct.indexOf(Math.max(...pct))] += drift;
  return pct;
}

/** Set backend `index` to `value` percent; the others share the rest in
 * their current proportions (equally when they are all at zero). */
export function rebalance(pct: number[], index: number, value: number): number[] {
  const next = [...pct];
  next[index] = value;
  const others = pct.map((_, i) => i).filter((i) => i !== index);
  if (others.length === 0) return next;
  const rest = 100 - value;
  const otherTotal = others.reduce((a, i) => a + pct[i], 0);
  let assigned = 0;
  others.forEach((i, k) => {
    const share = k === others.length - 1 ? rest - assigned : Math.round(otherTotal ? (pct[i] / otherTotal) * rest : rest / others.length);
    next[i] = Math.max(0, share);
    assigned += next[i];
  });
  return next;
}

export function RouteEdit({ name }: { name: string }) {
  const url = `/v1/routes/${seg(name)}`;
  const doc = useLive(() => readDocument(url, TEMPLATE), [`/routes/${name}`], [url]);
  const backends = ((doc.data?.body.backends as Backend[] | undefined) ?? []).filter((b) => typeof b === "object");
  const stored = toPercent(backends.map((b) => b.weight ?? 1));
  const [pct, setPct] = useState<number[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [saved, setSaved] = useState<{ text: string; revision: number } | null>(null);
  useEffect(() => setPct(null), [doc.data?.revision, url]);
  const shown = pct ?? stored;

  async function apply() {
    if (!doc.data) return;
    setError(null);
    setSaved(null);
    const body = { ...doc.data.body, backends: backends.map((b, i) => ({ ...b, weight: shown[i] })) };
    try {
      const revision = await putDocument(url, body, doc.data.revision ?? 0);
      setSaved({ text: `Weights applied: revision ${revision}`, revision });
      setPct(null);
      doc.reload();
    } catch (exc) {
      setError(describe(exc));
    }
  }

  return (
    <Page
      id="route"
      title={name}
      subtitle={
        <>
          <a href="/routes">← routes</a>
          {doc.data && (doc.data.revision === null ? " · new route" : ` · revision ${doc.data.revision} · ${summariseMatch(doc.data.body)}`)}
        </>
      }
      state={pageState(doc)}
      error={doc.error}
    >
      {backends.length > 0 && (
        <Card title="Traffic split" actions={<div style={{ width: "200px" }}><SplitBar weights={shown} /></div>}>
          <div class="stack">
            {backends.map((b, i) => (
              <div class="slider-row" key={i}>
                <span class="strong">{b.service}</span>
                <input
                  type="range"
                  min={0}
                  max={100}
                  step={1}
                  value={shown[i]}
                  data-testid={`canary-slider-${i}`}
                  aria-label={`weight of ${b.service}`}
                  onInput={(e) => setPct(rebalance(shown, i, Number(e.currentTarget.value)))}
                />
                <span class="num mono">{shown[i]}%</span>
              </div>
            ))}
            <div class="row">
              <button class="primary" data-testid="canary-apply" onClick={apply} disabled={pct === null || doc.data?.revision === null}>
                Apply weights
              </button>
              {pct !== null && (
                <button onClick={() => setPct(null)} data-testid="canary-reset">
                  Reset
                </button>
              )}
              <span class="muted small">Weights are relative; the sliders keep them summing to 100.</span>
            </div>
            <InlineError testid="canary-error" error={error} />
            {saved && saved.revision === doc.data?.revision && (
              <div class="inline-ok" data-testid="route-saved">
                {saved.text}
              </div>
            )}
          </div>
        </Card>
      )}
      <Card title="Route document">
        <DocumentEditor url={url} doc={doc.data} prefix="route" onSaved={() => doc.reload()} />
      </Card>
    </Page>
  );
}
