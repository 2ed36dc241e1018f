import { useEffect, useRef } from "preact/hooks";
import { useLocation } from "preact-iso";
import { Card, Empty, Page } from "../components/Page";
import { getJson, seg } from "../lib/api";
import { fmtMs, fmtPct, fmtRps, rateLevel } from "../lib/format";
import { pageState, useLive, usePolled } from "../lib/hooks";
import { STATS_REFRESH_MS, edges } from "../lib/stats";
import { onThemeChange } from "../lib/theme";
import type { ServiceSummary } from "../lib/types";
import type { Graph } from "../components/graph";

export function Topology() {
  const { route } = useLocation();
  const rows = usePolled(() => edges("5m"), STATS_REFRESH_MS, []);
  const services = useLive(() => getJson<ServiceSummary[]>("/v1/services"), ["/services/"], []);
  const host = useRef<HTMLDivElement>(null);
  const graph = useRef<Graph | null>(null);

  useEffect(() => {
    let cancelled = false;
    let off = () => {};
    import("../components/graph").then(({ createGraph }) => {
      if (cancelled || !host.current) return;
      graph.current = createGraph(host.current, (s) => route(`/services/${seg(s)}`));
      off = onThemeChange(() => graph.current?.restyle());
      drawRef.current(); // the latest data, not this effect's first render's
    });
    return () => {
      cancelled = true;
      off();
      graph.current?.destroy();
      graph.current = null;
    };
  }, []);

  function draw() {
    const list = rows.data ?? [];
    const health = new Map((services.data ?? []).map((s) => [s.name, s]));
    const names = new Set<string>([...health.keys()]);
    list.forEach((e) => (names.add(e.service), names.add(e.caller ?? "unknown")));
    const nodeLevel = (n: string) => {
      const s = health.get(n);
      if (!s) return "unknown";
      return s.healthy === s.instances ? "passing" : s.healthy === 0 ? "critical" : "warning";
    };
    graph.current?.update(
      [...names].sort().map((id) => ({ id, level: nodeLevel(id) })),
      list.map((e) => ({
        caller: e.caller ?? "unknown",
        callee: e.service,
        level: rateLevel(e.success_rate),
        label: `${fmtRps(e.rps)} rps · ${fmtPct(e.success_rate)}`,
      })),
    );
  }
  const drawRef = useRef(draw);
  drawRef.current = draw;
  useEffect(draw, [rows.data, services.data]);

  const list = rows.data ?? [];
  return (
    <Page id="topology" title="Topology" subtitle="Who calls whom over the last 5 minutes; edges coloured by success rate" state={pageState(rows)} error={rows.error}>
      <Card
        actions={
          <div class="legend">
            <span>
              <i style={{ background: "var(--passing)" }} />≥ 99%
            </span>
            <span>
              <i style={{ background: "var(--warning)" }} />≥ 95%
            </span>
            <span>
              <i style={{ background: "var(--critical)" }} />
              below
            </span>
          </div>
        }
        title="Service graph"
      >
        <div class="topology" data-testid="topology-graph" ref={host} />
        {rows.data && list.length === 0 && <Empty>No calls between services in the last 5 minutes. Edges appear once callers push their golden signals.</Empty>}
      </Card>
      <Card title="Edges">
        <div class="table-wrap">
          <table class="table cards-on-phone">
            <thead>
              <tr>
                <th>Caller → callee</th>
                <th class="num">RPS</th>
                <th class="num">Success</th>
                <th class="num">p99</th>
              </tr>
            </thead>
            <tbody>
              {list.map((e) => (
                <tr key={`${e.caller}-${e.service}`} data-testid={`edge-${e.caller ?? "unknown"}-${e.service}`}>
                  <td data-label="Edge">
                    <a href={`/services/${seg(e.caller ?? "")}`}>{e.caller ?? "unknown"}</a> → <a href={`/services/${seg(e.service)}`}>{e.service}</a>
                  </td>
                  <td data-label="RPS" class="num">
                    {fmtRps(e.rps)}
                  </td>
                  <td data-label="Success" class={`num text-${rateLevel(e.success_rate)}`}>
                    {fmtPct(e.success_rate)}
                  </td>
                  <td data-label="p99" class="num">
                    {fmtMs(e.p99_ms)}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </Card>
    </Page>
  );
}
