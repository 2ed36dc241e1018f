import { Card, Empty, Page } from "../components/Page";
import { NameForm } from "../components/NameForm";
import { getJson, seg } from "../lib/api";
import { pageState, useLive } from "../lib/hooks";
import type { PolicyEntry } from "../lib/types";

function summary(policy: Record<string, unknown>): string {
  return Object.entries(policy)
    .map(([k, v]) => (typeof v === "object" && v !== null ? `${k} ${JSON.stringify(v)}` : `${k} ${String(v)}`))
    .join(" · ");
}

export function Policies() {
  const policies = useLive(() => getJson<PolicyEntry[]>("/v1/policies"), ["/policies/"], []);
  return (
    <Page
      id="policies"
      title="Call policies"
      subtitle="Timeouts, retries, circuit breakers and balancing that SDK clients apply when calling a service"
      state={pageState(policies)}
      error={policies.error}
      actions={<NameForm base="/policies" label="New policy" placeholder="service (or default)" testid="policy-new" />}
    >
      <Card>
        {policies.data && policies.data.length === 0 ? (
          <Empty>No call policies yet: clients use the defaults. Create one for a service here.</Empty>
        ) : (
          <div class="table-wrap">
            <table class="table cards-on-phone">
              <thead>
                <tr>
                  <th>Service</th>
                  <th>Policy</th>
                  <th class="num">Revision</th>
                </tr>
              </thead>
              <tbody>
                {(policies.data ?? []).map((p) => (
                  <tr key={p.name} data-testid={`policy-row-${p.name}`}>
                    <td data-label="Service">
                      <a class="strong" href={`/policies/${seg(p.name)}`}>
                        {p.name}
                      </a>
                    </td>
                    <td data-label="Policy" class="mono small">
                      {summary(p.policy) || <span class="muted">defaults</span>}
                    </td>
                    <td data-label="Revision" class="num">
                      {p.revision}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </Card>
    </Page>
  );
}
