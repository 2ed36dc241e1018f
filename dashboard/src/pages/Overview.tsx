import { Card, Empty, Page, Status } from "../components/Page";
import { Sparkline } from "../components/charts";
import { getJson } from "../lib/api";
import { fmtMs, fmtPct, fmtRps, rateLevel } from "../lib/format";
import { pageState, useLive, usePolled } from "../lib/hooks";
import { STATS_REFRESH_MS, serviceStats } from "../lib/stats";
import type { AlertsState, ServiceSummary, StatRow } from "../lib/types";

function health(s: ServiceSummary | undefined): { level: string; label: string } {
  if (!s) return { level: "unknown", label: "not registered" };
  if (s.instances === 0) return { level: "critical", label: "no instances" };
  if (s.healthy === s.instances) return { level: "passing", label: `${s.healthy}/${s.instances} healthy` };
  if (s.healthy === 0) return { level: "critical", label: `0/${s.instances} healthy` };
  return { level: "warning", label: `${s.healthy}/${s.instances} healthy` };
}

export function Overview() {
  const services = useLive(() => getJson<ServiceSummary[]>("/v1/services"), ["/services/"], []);
  const stats = usePolled(() => serviceStats("5m"), STATS_REFRESH_MS, []);
  const alerts = usePolled(() => getJson<AlertsState>("/v1/alerts"), STATS_REFRESH_MS, []);
  const byName = new Map((services.data ?? []).map((s) => [s.name, s]));
  const names = [...new Set([...byName.keys(), ...(stats.data?.keys() ?? [])])].sort();
  const instances = (services.data ?? []).reduce((n, s) => n + s.instances, 0);
  const healthy = (services.data ?? []).reduce((n, s) => n + s.healthy, 0);
  const firing = (alerts.data?.active ?? []).filter((a) => a.state === "firing").length;
  return (
    <Page id="overview" title="Overview" state={pageState(services)} error={services.error} subtitle="Services, their health and golden signals over the last 5 minutes">
      <div class="tiles">
        <Tile label="Services" value={String(services.data?.length ?? "—")} />
        <Tile label="Instances" value={String(instances)} />
        <Tile label="Healthy" value={`${healthy}/${instances}`} level={healthy === instances ? "passing" : "warning"} />
        <Tile label="Alerts firing" value={String(firing)} level={firing ? "critical" : "passing"} href="/alerts" />
      </div>
      {stats.error && <div class="banner banner-warning">Golden signals unavailable: {stats.error.describe()}</div>}
      <Card title="Services">
        {services.data && names.length === 0 ? (
          <Empty>
            No services registered yet. Register one with <code>crossway register</code> or the SDK, and it appears here at once.
          </Empty>
        ) : (
          <div class="table-wrap">
            <table class="table cards-on-phone">
              <thead>
                <tr>
                  <th>Service</th>
                  <th>Health</th>
                  <th class="num">RPS</th>
                  <th class="num">Success</th>
                  <th class="num">p99</th>
                  <th>Last 5 min</th>
                </tr>
              </thead>
              <tbody>
                {names.map((name) => (
                  <ServiceRow key={name} name={name} summary={byName.get(name)} stat={stats.data?.get(name)} />
                ))}
              </tbody>
            </table>
          </div>
        )}
      </Card>
    </Page>
  );
}

function ServiceRow({ name, summary, stat }: { name: string; summary?: ServiceSummary; stat?: StatRow }) {
  const h = health(summary);
  const level = rateLevel(stat?.success_rate);
  return (
    <tr data-testid={`service-row-${name}`}>
      <td data-label="Service">
        <a href={`/services/${encodeURIComponent(name)}`} class="strong">
          {name}
        </a>
        {summary && summary.zones.length > 0 && <div class="muted small">{summary.zones.join(", ")}</div>}
      </td>
      <td data-label="Health" data-cell="health">
        <Status level={h.level} label={h.label} />
      </td>
      <td data-label="RPS" class="num" data-cell="rps">
        {fmtRps(stat?.rps)}
      </td>
      <td data-label="Success" class="num" data-cell="success">
        <span class={`text-${level}`}>{fmtPct(stat?.success_rate)}</span>
      </td>
      <td data-label="p99" class="num" data-cell="p99">
        {fmtMs(stat?.p99_ms)}
      </td>
      <td data-label="Last 5 min">
        <Sparkline testid={`sparkline-${name}`} values={(stat?.series ?? []).map((p) => p.rps)} level={level === "unknown" ? "accent" : level} />
      </td>
    </tr>
  );
}

function Tile({ label, value, level, href }: { label: string; value: string; level?: string; href?: string }) {
  const body = (
    <>
      <div class="tile-label">{label}</div>
      <div class={`tile-value ${level ? "text-" + level : ""}`}>{value}</div>
    </>
  );
  return href ? (
    <a class="tile" href={href}>
      {body}
    </a>
  ) : (
    <div class="tile">{body}</div>
  );
}
