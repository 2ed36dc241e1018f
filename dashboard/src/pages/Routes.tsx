import { Card, Empty, Page } from "../components/Page";
import { NameForm } from "../components/NameForm";
import { getJson, seg } from "../lib/api";
import { pageState, useLive } from "../lib/hooks";
import type { RouteEntry } from "../lib/types";

export function summariseMatch(route: Record<string, unknown>): string {
  const match = (route.match ?? {}) as Record<string, unknown>;
  const parts: string[] = [];
  for (const [k, v] of Object.entries(match)) parts.push(`${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
  return parts.join(" ") || "everything";
}

export function SplitBar({ weights }: { weights: number[] }) {
  const total = weights.reduce((a, b) => a + b, 0) || 1;
  return (
    <div class="split-bar" aria-hidden="true">
      {weights.map((w, i) => (
        <span key={i} style={{ width: `${(w / total) * 100}%` }} />
      ))}
    </div>
  );
}

export function Routes() {
  const routes = useLive(() => getJson<RouteEntry[]>("/v1/routes"), ["/routes/"], []);
  return (
    <Page
      id="routes"
      title="Gateway routes"
      subtitle="What every gateway following this control plane serves; changes reach them through the watch"
      state={pageState(routes)}
      error={routes.error}
      actions={<NameForm base="/routes" label="New route" placeholder="route name" testid="route-new" />}
    >
      <Card>
        {routes.data && routes.data.length === 0 ? (
          <Empty>
            No gateway routes yet. Create one here or with <code>crossway gateway</code>'s route files.
          </Empty>
        ) : (
          <div class="table-wrap">
            <table class="table cards-on-phone">
              <thead>
                <tr>
                  <th>Route</th>
                  <th>Match</th>
                  <th>Backends</th>
                  <th>Split</th>
                  <th class="num">Revision</th>
                </tr>
              </thead>
              <tbody>
                {(routes.data ?? []).map((r) => {
                  const backends = r.route.backends ?? [];
                  return (
                    <tr key={r.name} data-testid={`route-row-${r.name}`}>
                      <td data-label="Route">
                        <a class="strong" href={`/routes/${seg(r.name)}`}>
                          {r.name}
                        </a>
                      </td>
                      <td data-label="Match" class="mono">
                        {summariseMatch(r.route)}
                      </td>
                      <td data-label="Backends">
                        {backends.length ? (
                          backends.map((b) => (
                            <span key={b.service} class="tag">
                              {b.service} {b.weight ?? 1}
                            </span>
                          ))
                        ) : (
                          <span class="muted">{"redirect" in r.route ? "redirect" : "direct response"}</span>
                        )}
                      </td>
                      <td data-label="Split" style={{ minWidth: "120px" }}>
                        {backends.length > 0 && <SplitBar weights={backends.map((b) => b.weight ?? 1)} />}
                      </td>
                      <td data-label="Revision" class="num">
                        {r.revision}
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
      </Card>
    </Page>
  );
}
