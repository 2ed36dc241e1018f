import { Card, Empty, Page } from "../components/Page";
import { NameForm } from "../components/NameForm";
import { getJson, seg } from "../lib/api";
import { pageState, useLive } from "../lib/hooks";
import type { RouteEntry } from "../lib/types";

/** One header or query-parameter condition, as read: "x-canary = 1",
 * "x-user starts a", "debug present", "not x-beta present". */
function condition(value: unknown): string {
  if (typeof value !== "object" || value === null) return String(value);
  const c = value as Record<string, unknown>;
  const test =
    c.exact !== undefined ? `= ${String(c.exact)}` : c.prefix !== undefined ? `starts ${String(c.prefix)}` : c.regex !== undefined ? `~ ${String(c.regex)}` : "present";
  const text = c.name === undefined ? Object.entries(c).map(([k, v]) => `${k}=${String(v)}`).join(" ") : `${String(c.name)} ${test}`;
  return c.invert ? `not ${text}` : text;
}

/** A route's match as fields and their values: list-valued fields (methods,
 * headers, query) as one value per item rather than raw JSON. */
export function matchFields(route: Record<string, unknown>): { field: string; values: string[] }[] {
  const match = (route.match ?? {}) as Record<string, unknown>;
  return Object.entries(match).map(([field, v]) => ({
    field,
    values: Array.isArray(v) ? v.map(condition) : [typeof v === "object" && v !== null ? condition(v) : String(v)],
  }));
}

export function summariseMatch(route: Record<string, unknown>): string {
  return matchFields(route).map((f) => `${f.field} ${f.values.join(", ")}`).join(" · ") || "every request";
}

export function MatchChips({ route }: { route: Record<string, unknown> }) {
  const fields = matchFields(route);
  if (fields.length === 0) return <span class="muted">every request</span>;
  return (
    <span class="match">
      {fields.map((f) => (
        <span key={f.field} class="match-field">
          <span class="muted small">{f.field.replace(/_/g, " ")}</span>
          {f.values.map((v, i) => (
            <span key={i} class="tag">
              {v}
            </span>
          ))}
        </span>
      ))}
    </span>
  );
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
                      <td data-label="Match">
                        <MatchChips route={r.route} />
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
