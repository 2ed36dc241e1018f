import { useState } from "preact/hooks";
import { Card, Page, Status } from "../components/Page";
import { getJson, seg } from "../lib/api";
import { fmtUs } from "../lib/format";
import { pageState, useLive } from "../lib/hooks";
import { isError, serviceOf, summarise, tree } from "../lib/traces";
import type { Span } from "../lib/types";

export function Trace({ id }: { id: string }) {
  const trace = useLive(() => getJson<Span[]>(`/api/v2/trace/${seg(id)}`), [], [id]);
  const spans = trace.data ?? [];
  const summary = spans.length ? summarise(spans) : null;
  return (
    <Page
      id="trace"
      title={summary ? `${serviceOf(summary.root)}: ${summary.root.name ?? "(unnamed)"}` : "Trace"}
      subtitle={
        <>
          <a href="/traces">← traces</a> · <span class="mono">{id}</span>
          {summary && ` · ${fmtUs(summary.duration)} · ${summary.spans} spans · ${summary.services.join(", ")}`}
        </>
      }
      state={pageState(trace)}
      error={trace.error}
    >
      <Card title="Waterfall">{summary && <Waterfall spans={spans} start={summary.start} total={summary.duration} />}</Card>
    </Page>
  );
}

function Waterfall({ spans, start, total }: { spans: Span[]; start: number; total: number }) {
  const [open, setOpen] = useState<string | null>(null);
  const scale = (us: number) => `${(us / Math.max(total, 1)) * 100}%`;
  return (
    <div class="waterfall" data-testid="waterfall">
      <div class="span-row muted small" style={{ cursor: "default" }}>
        <span>Service · span</span>
        <div class="span-track">
          {[0, 0.25, 0.5, 0.75].map((f) => (
            <span key={f} class="span-time" style={{ left: `${f * 100}%` }}>
              {fmtUs(total * f)}
            </span>
          ))}
        </div>
      </div>
      {tree(spans).map(({ span, depth }) => {
        const key = span.id + (span.kind ?? "");
        const offset = (span.timestamp ?? start) - start;
        const error = isError(span);
        return (
          <div key={key} class="span-row" data-testid={`span-${span.id}`} onClick={() => setOpen(open === key ? null : key)}>
            <span class="span-label" style={{ paddingLeft: `${depth * 16}px` }} title={span.name}>
              <strong>{serviceOf(span)}</strong> <span class="muted">{span.name ?? ""}</span>
              {span.kind && <span class="tag span-kind">{span.kind.toLowerCase()}</span>}
            </span>
            <div class="span-track">
              <div class={error ? "span-bar error" : "span-bar"} style={{ left: scale(offset), width: scale(span.duration ?? 0) }} />
              <span class="span-time" style={{ left: `calc(${scale(offset + (span.duration ?? 0))} + 4px)`, top: "2px" }}>
                {fmtUs(span.duration ?? 0)}
              </span>
            </div>
            {open === key && <SpanDetail span={span} error={error} />}
          </div>
        );
      })}
    </div>
  );
}

function SpanDetail({ span, error }: { span: Span; error: boolean }) {
  const rows: [string, string][] = [
    ["span id", span.id],
    ["parent", span.parentId ?? "—"],
    ["kind", span.kind ?? "—"],
    ["service", serviceOf(span)],
    ["remote", span.remoteEndpoint?.serviceName ?? "—"],
    ["start", span.timestamp ? new Date(span.timestamp / 1000).toISOString() : "—"],
    ["duration", fmtUs(span.duration ?? 0)],
    ...Object.entries(span.tags ?? {}),
  ];
  return (
    <div class="span-detail" onClick={(e) => e.stopPropagation()}>
      {error && <Status level="critical" label="error" />}
      <dl class="kv">
        {rows.map(([k, v]) => [<dt key={`k${k}`}>{k}</dt>, <dd key={`v${k}`}>{v}</dd>])}
      </dl>
    </div>
  );
}
