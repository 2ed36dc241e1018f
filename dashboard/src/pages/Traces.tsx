import { useState } from "preact/hooks";
import { useLocation } from "preact-iso";
import { Card, Empty, Page, Status } from "../components/Page";
import { getJson, seg } from "../lib/api";
import { fmtUs } from "../lib/format";
import { pageState, useLive } from "../lib/hooks";
import { summarise, type TraceSummary } from "../lib/traces";
import type { Span } from "../lib/types";

const LOOKBACKS: [string, number][] = [
  ["15 minutes", 15 * 60_000],
  ["1 hour", 3_600_000],
  ["6 hours", 6 * 3_600_000],
  ["1 day", 86_400_000],
];

function searchUrl(q: Record<string, string>): string {
  const params = new URLSearchParams({ limit: q.limit ?? "50", lookback: q.lookback ?? String(3_600_000) });
  if (q.service) params.set("serviceName", q.service);
  if (q.minDuration) params.set("minDuration", String(Math.round(Number(q.minDuration) * 1000)));
  if (q.errors === "true") params.set("annotationQuery", "error");
  return `/api/v2/traces?${params}`;
}

export function Traces({ query = {} }: { query?: Record<string, string> }) {
  const { route } = useLocation();
  const services = useLive(() => getJson<string[]>("/api/v2/services"), [], []);
  const key = JSON.stringify(query);
  const results = useLive(async () => (await getJson<Span[][]>(searchUrl(query))).filter((t) => t.length).map(summarise), [], [key]);
  const [service, setService] = useState(query.service ?? "");
  const [minDuration, setMinDuration] = useState(query.minDuration ?? "");
  const [errors, setErrors] = useState(query.errors === "true");
  const [lookback, setLookback] = useState(query.lookback ?? String(3_600_000));

  function submit(e: Event) {
    e.preventDefault();
    const q: Record<string, string> = { lookback };
    if (service) q.service = service;
    if (minDuration) q.minDuration = minDuration;
    if (errors) q.errors = "true";
    q.t = String(Date.now()); // a new search even with the same criteria
    route(`/traces?${new URLSearchParams(q)}`);
  }

  return (
    <Page id="traces" title="Traces" subtitle="Search the traces the control plane keeps (Zipkin v2 API)" state={pageState(services, results)} error={results.error ?? services.error}>
      <Card>
        <form class="form-row" onSubmit={submit}>
          <label class="field">
            Service
            <select data-testid="trace-search-service" value={service} onChange={(e) => setService(e.currentTarget.value)}>
              <option value="">any service</option>
              {(services.data ?? []).map((s) => (
                <option key={s} value={s}>
                  {s}
                </option>
              ))}
            </select>
          </label>
          <label class="field">
            Min duration (ms)
            <input data-testid="trace-search-min-duration" type="number" min={0} step="any" style={{ width: "9em" }} value={minDuration} onInput={(e) => setMinDuration(e.currentTarget.value)} />
          </label>
          <label class="field">
            Within
            <select value={lookback} onChange={(e) => setLookback(e.currentTarget.value)}>
              {LOOKBACKS.map(([label, ms]) => (
                <option key={ms} value={String(ms)}>
                  {label}
                </option>
              ))}
            </select>
          </label>
          <label class="row" style={{ paddingBottom: "6px" }}>
            <input data-testid="trace-search-errors" type="checkbox" checked={errors} onChange={(e) => setErrors(e.currentTarget.checked)} />
            errors only
          </label>
          <button class="primary" type="submit" data-testid="trace-search-submit">
            Search
          </button>
        </form>
      </Card>
      <Card title={results.data ? `${results.data.length} trace${results.data.length === 1 ? "" : "s"}` : "Results"}>
        {results.data && results.data.length === 0 ? <Empty>No traces match. Services send spans to /api/v2/spans (Zipkin) or /v1/traces (OTLP).</Empty> : <TraceTable rows={results.data ?? []} />}
      </Card>
    </Page>
  );
}

function TraceTable({ rows }: { rows: TraceSummary[] }) {
  const { route } = useLocation();
  const longest = Math.max(1, ...rows.map((r) => r.duration));
  return (
    <div class="table-wrap">
      <table class="table cards-on-phone">
        <thead>
          <tr>
            <th>Root span</th>
            <th>Services</th>
            <th class="num">Spans</th>
            <th>Duration</th>
            <th>Started</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((t) => (
            <tr key={t.id} data-testid={`trace-row-${t.id}`} class="clickable" onClick={(e) => (e.target as HTMLElement).closest("a") || route(`/traces/${seg(t.id)}`)}>
              <td data-label="Root span">
                <a class="strong" href={`/traces/${seg(t.id)}`}>
                  {t.root.localEndpoint?.serviceName ?? "?"}: {t.root.name ?? "(unnamed)"}
                </a>
                <div class="muted small mono ellipsis" title={t.id}>
                  {t.id}
                </div>
              </td>
              <td data-label="Services" class="chips">
                {t.services.map((s) => (
                  <span key={s} class="tag">
                    {s}
                  </span>
                ))}
                {t.errors > 0 && <Status level="critical" label={`${t.errors} error${t.errors > 1 ? "s" : ""}`} />}
              </td>
              <td data-label="Spans" class="num">
                {t.spans}
              </td>
              <td data-label="Duration" style={{ minWidth: "140px" }}>
                <div class="split-bar" style={{ width: `${Math.max(4, (t.duration / longest) * 100)}%` }}>
                  <span style={{ width: "100%", background: t.errors ? "var(--critical)" : "var(--accent)" }} />
                </div>
                <span class="small">{fmtUs(t.duration)}</span>
              </td>
              <td data-label="Started">{new Date(t.start / 1000).toLocaleTimeString()}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
