import { useEffect, useState } from "preact/hooks";
import { Card, Empty, Page, Status } from "../components/Page";
import { TimeChart } from "../components/charts";
import { getJson, seg } from "../lib/api";
import { fmtAge, fmtMs, fmtPct, fmtRps, rateLevel } from "../lib/format";
import { pageState, useLive, usePolled } from "../lib/hooks";
import { STATS_REFRESH_MS, edges } from "../lib/stats";
import type { Instance, RouteEntry, StatListing, StatRow } from "../lib/types";

const WINDOWS: Record<string, number> = { "5m": 300, "15m": 900, "1h": 3600, "24h": 86400 };

export function Service({ name }: { name: string }) {
  const [window, setWindow] = useState("15m");
  const instances = useLive(() => getJson<Instance[]>(`/v1/services/${seg(name)}`), [`/services/${name}/`], [name]);
  const stats = usePolled(
    () => getJson<StatListing>(`/v1/stats?service=${seg(name)}&window=${window}&series=true`),
    STATS_REFRESH_MS,
    [name, window],
  );
  const callers = usePolled(() => edges("5m", `&service=${seg(name)}`), STATS_REFRESH_MS, [name]);
  const callees = usePolled(() => edges("5m", `&caller=${seg(name)}`), STATS_REFRESH_MS, [name]);
  const routes = useLive(() => getJson<RouteEntry[]>("/v1/routes"), ["/routes/"], []);
  const mine = (routes.data ?? []).filter((r) => (r.route.backends ?? []).some((b) => b.service === name));
  const total = stats.data?.total ?? stats.data?.rows[0];
  return (
    <Page
      id="service"
      title={name}
      // A service page belongs to the Overview (its list of services): the
      // nav highlights Overview here, and the way back names it.
      subtitle={<a href="/">← Overview: all services</a>}
      state={pageState(instances)}
      error={instances.error}
      actions={
        <>
          <a class="button" href={`/policies/${seg(name)}`}>
            Call policy
          </a>
          <a class="button" href={`/traces?service=${seg(name)}`}>
            Traces
          </a>
        </>
      }
    >
      <Card title="Instances">
        {instances.data && instances.data.length === 0 ? (
          <Empty>No instances of {name} are registered right now.</Empty>
        ) : (
          <InstanceTable instances={instances.data ?? []} />
        )}
      </Card>
      <Card
        title="Golden signals"
        actions={
          <select value={window} onChange={(e) => setWindow(e.currentTarget.value)} aria-label="Window">
            {Object.keys(WINDOWS).map((w) => (
              <option key={w} value={w}>
                last {w}
              </option>
            ))}
          </select>
        }
      >
        <Signals total={total} windowSeconds={WINDOWS[window] ?? 900} />
      </Card>
      <div class="grid-2">
        <Card title="Callers">
          <EdgeList testid="callers" rows={callers.data ?? []} other={(r) => r.caller ?? "?"} />
        </Card>
        <Card title="Callees">
          <EdgeList testid="callees" rows={callees.data ?? []} other={(r) => r.service} />
        </Card>
      </div>
      <div class="grid-2">
        <Card title="Gateway routes to this service">
          {mine.length === 0 ? (
            <Empty>No gateway route sends traffic here.</Empty>
          ) : (
            <ul class="list">
              {mine.map((r) => (
                <a key={r.name} href={`/routes/${seg(r.name)}`}>
                  <span>{r.name}</span>
                  <span class="muted">
                    {(r.route.backends ?? []).map((b) => `${b.service} ${b.weight ?? 1}`).join(" · ")}
                  </span>
                </a>
              ))}
            </ul>
          )}
        </Card>
        <Card title="Routes served (last window)">
          <RouteStats rows={stats.data?.rows ?? []} />
        </Card>
      </div>
    </Page>
  );
}

function useNow(intervalMs = 1000): number {
  const [now, setNow] = useState(Date.now() / 1000);
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now() / 1000), intervalMs);
    return () => clearInterval(t);
  }, [intervalMs]);
  return now;
}

function InstanceTable({ instances }: { instances: Instance[] }) {
  const now = useNow();
  return (
    <div class="table-wrap">
      <table class="table cards-on-phone">
        <thead>
          <tr>
            <th>Instance</th>
            <th>Status</th>
            <th>Address</th>
            <th>Zone</th>
            <th>Metadata</th>
            <th class="num">Weight</th>
            <th>Lease age</th>
          </tr>
        </thead>
        <tbody>
          {instances.map((i) => (
            <tr key={i.id} data-testid={`instance-row-${i.id}`}>
              <td data-label="Instance" class="mono">
                {i.id}
              </td>
              <td data-label="Status" data-cell="status">
                <Status level={i.status === "passing" ? "passing" : i.status === "warning" ? "warning" : i.status === "critical" || i.status === "failing" ? "critical" : "unknown"} label={i.status + (i.stale ? " (stale)" : "")} />
                {i.output && <div class="muted small">{i.output}</div>}
              </td>
              <td data-label="Address" class="mono">
                {i.address}:{i.port}
              </td>
              <td data-label="Zone" data-cell="zone">
                {i.zone ?? <span class="muted">—</span>}
              </td>
              <td data-label="Metadata" data-cell="metadata">
                {Object.entries(i.metadata).map(([k, v]) => (
                  <span key={k} class="tag">
                    {k}={v}
                  </span>
                ))}
                {i.tags.map((t) => (
                  <span key={t} class="tag">
                    #{t}
                  </span>
                ))}
              </td>
              <td data-label="Weight" class="num">
                {i.weight}
              </td>
              <td data-label="Lease age" data-cell="lease-age" title={`TTL ${i.ttl}, lease ${i.lease}`}>
                {fmtAge(now - i.registered_at)} <span class="muted small">ttl {i.ttl}</span>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function Signals({ total, windowSeconds }: { total: StatRow | undefined; windowSeconds: number }) {
  const series = total?.series ?? [];
  const times = series.map((p) => p.t);
  return (
    <div class="stack">
      <div class="row muted">
        <span>
          RPS <strong class="strong">{fmtRps(total?.rps)}</strong>
        </span>
        <span>·</span>
        <span>
          success <strong class={`text-${rateLevel(total?.success_rate)}`}>{fmtPct(total?.success_rate)}</strong>
        </span>
        <span>·</span>
        <span>
          p50 {fmtMs(total?.p50_ms)} · p95 {fmtMs(total?.p95_ms)} · p99 {fmtMs(total?.p99_ms)}
        </span>
      </div>
      <div class="charts">
        <TimeChart
          testid="chart-rps"
          title="Requests per second"
          times={times}
          series={[{ label: "rps", values: series.map((p) => p.rps), color: "--accent" }]}
          unit={(v) => fmtRps(v)}
          yLabel="req/s"
          windowSeconds={windowSeconds}
        />
        <TimeChart
          testid="chart-success"
          title="Success rate"
          times={times}
          series={[{ label: "success", values: series.map((p) => (p.success_rate === null ? null : p.success_rate * 100)), color: "--passing" }]}
          unit={(v) => v.toFixed(1) + "%"}
          yMax={100}
          yMin={Math.min(90, ...series.map((p) => (p.success_rate === null ? 100 : p.success_rate * 100 - 1)))}
          tick={(v) => v.toFixed(0) + "%"}
          windowSeconds={windowSeconds}
        />
        <TimeChart
          testid="chart-latency"
          title="Latency"
          times={times}
          series={[
            { label: "p50", values: series.map((p) => p.p50_ms), color: "--accent" },
            { label: "p95", values: series.map((p) => p.p95_ms), color: "--warning", dash: [8, 4] },
            { label: "p99", values: series.map((p) => p.p99_ms), color: "--critical", dash: [2, 3] },
          ]}
          unit={(v) => fmtMs(v)}
          tick={(v) => (v >= 10 ? v.toFixed(0) : v.toFixed(1))}
          yLabel="ms"
          windowSeconds={windowSeconds}
        />
      </div>
    </div>
  );
}

function EdgeList({ testid, rows, other }: { testid: string; rows: StatRow[]; other: (r: StatRow) => string }) {
  return (
    <div data-testid={testid}>
      {rows.length === 0 ? (
        <Empty>None seen in the last 5 minutes.</Empty>
      ) : (
        <ul class="list">
          {rows.map((r) => {
            const peer = other(r);
            return (
              <a key={peer} href={`/services/${seg(peer)}`} data-testid={`edge-${r.caller ?? "unknown"}-${r.service}`}>
                <span class="strong">{peer}</span>
                <span class="muted">
                  {fmtRps(r.rps)} rps · <span class={`text-${rateLevel(r.success_rate)}`}>{fmtPct(r.success_rate)}</span> · p99 {fmtMs(r.p99_ms)}
                </span>
              </a>
            );
          })}
        </ul>
      )}
    </div>
  );
}

function RouteStats({ rows }: { rows: StatRow[] }) {
  if (rows.length === 0) return <Empty>No requests in this window.</Empty>;
  return (
    <div class="table-wrap">
      <table class="table">
        <thead>
          <tr>
            <th>Route</th>
            <th class="num">RPS</th>
            <th class="num">Success</th>
            <th class="num">p99</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((r) => (
            <tr key={`${r.method} ${r.route}`}>
              <td class="mono">
                {r.method} {r.route}
              </td>
              <td class="num">{fmtRps(r.rps)}</td>
              <td class={`num text-${rateLevel(r.success_rate)}`}>{fmtPct(r.success_rate)}</td>
              <td class="num">{fmtMs(r.p99_ms)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
