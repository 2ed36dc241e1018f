// Shapes of the API's answers (the subset the dashboard reads).

export interface ServiceSummary {
  name: string;
  instances: number;
  healthy: number;
  tags: string[];
  zones: string[];
}

export interface Instance {
  service: string;
  id: string;
  address: string;
  port: number;
  weight: number;
  zone: string | null;
  tags: string[];
  metadata: Record<string, string>;
  lease: string;
  ttl: string;
  status: string;
  output: string;
  registered_at: number;
  status_since: number;
  stale: boolean;
}

export interface SeriesPoint {
  t: number;
  requests: number;
  errors: number;
  rps: number;
  success_rate: number | null;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
}

export interface StatRow {
  service: string;
  caller?: string;
  route?: string;
  method?: string;
  side: string;
  requests: number;
  errors: number;
  rps: number;
  success_rate: number | null;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
  series?: SeriesPoint[];
}

export interface StatListing {
  window: string;
  resolution_s: number;
  kind: string;
  rows: StatRow[];
  total?: StatRow;
}

export interface RouteEntry {
  name: string;
  revision: number;
  route: Record<string, unknown> & { backends?: { service: string; weight?: number }[] };
}

export interface PolicyEntry {
  name: string;
  revision: number;
  policy: Record<string, unknown>;
}

export interface ConfigKeyRow {
  key: string;
  version: number;
  format: string;
  md5: string;
  modified: number;
  author: string;
  beta: boolean;
  beta_selector: string | null;
}

export interface HistoryRow {
  version: number;
  md5: string;
  author: string;
  time: number;
  message: string;
  format: string;
  deleted?: boolean;
}

export interface Span {
  traceId: string;
  id: string;
  parentId?: string;
  name?: string;
  kind?: string;
  timestamp?: number;
  duration?: number;
  localEndpoint?: { serviceName?: string };
  remoteEndpoint?: { serviceName?: string };
  tags?: Record<string, string>;
}

export interface Alert {
  fingerprint: string;
  alertname: string;
  state: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  value: number | null;
  value_text: string;
  expr: string;
  started_at: string | null;
  fired_at: string | null;
  resolved_at: string | null;
}

export interface AlertsState {
  active: Alert[];
  history: Alert[];
  evaluations: number;
  rules: number;
  notifications: Record<string, number>;
}

export interface AlertRule {
  name: string;
  expr: string;
  for: string;
  window: string;
  severity: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  notify: string[];
}
