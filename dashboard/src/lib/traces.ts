import type { Span } from "./types";

export interface TraceSummary {
  id: string;
  root: Span;
  start: number; // µs
  duration: number; // µs
  spans: number;
  services: string[];
  errors: number;
}

export function isError(span: Span): boolean {
  return Boolean(span.tags && ("error" in span.tags || /^5\d\d$/.test(span.tags["http.status_code"] ?? "")));
}

export function serviceOf(span: Span): string {
  return span.localEndpoint?.serviceName ?? "unknown";
}

export function summarise(spans: Span[]): TraceSummary {
  const ids = new Set(spans.map((s) => s.id));
  const root = spans.find((s) => !s.parentId || !ids.has(s.parentId)) ?? spans[0];
  const start = Math.min(...spans.map((s) => s.timestamp ?? Infinity));
  const end = Math.max(...spans.map((s) => (s.timestamp ?? 0) + (s.duration ?? 0)));
  return {
    id: spans[0].traceId,
    root,
    start,
    duration: Math.max(root.duration ?? 0, end - start),
    spans: spans.length,
    services: [...new Set(spans.map(serviceOf))].sort(),
    errors: spans.filter(isError).length,
  };
}

export interface Row {
  span: Span;
  depth: number;
}

/** Spans in tree order (children after their parent, by start time). */
export function tree(spans: Span[]): Row[] {
  const ids = new Set(spans.map((s) => s.id));
  const children = new Map<string, Span[]>();
  const roots: Span[] = [];
  for (const s of spans) {
    if (s.parentId && ids.has(s.parentId) && s.parentId !== s.id) {
      const list = children.get(s.parentId) ?? [];
      list.push(s);
      children.set(s.parentId, list);
    } else roots.push(s);
  }
  const byStart = (a: Span, b: Span) => (a.timestamp ?? 0) - (b.timestamp ?? 0);
  const rows: Row[] = [];
  const seen = new Set<string>();
  const walk = (s: Span, depth: number) => {
    if (seen.has(s.id + (s.kind ?? ""))) return;
    seen.add(s.id + (s.kind ?? ""));
    rows.push({ span: s, depth });
    (children.get(s.id) ?? []).sort(byStart).forEach((c) => walk(c, depth + 1));
  };
  roots.sort(byStart).forEach((r) => walk(r, 0));
  return rows;
}
