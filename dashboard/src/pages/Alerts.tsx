import { useRef, useState } from "preact/hooks";
import { Card, Empty, InlineError, Page, Status } from "../components/Page";
import { Editor } from "../components/Editor";
import { call, getJson } from "../lib/api";
import { pageState, useLive, usePolled } from "../lib/hooks";
import { STATS_REFRESH_MS } from "../lib/stats";
import type { Alert, AlertRule, AlertsState } from "../lib/types";
import { describe } from "../components/DocumentEditor";

interface Rules {
  origin: string;
  source: string;
  yaml: string;
  rules: AlertRule[];
}

function when(iso: string | null): string {
  return iso ? new Date(iso).toLocaleString() : "—";
}

export function Alerts() {
  const state = usePolled(() => getJson<AlertsState>("/v1/alerts"), STATS_REFRESH_MS, []);
  const rules = useLive(() => getJson<Rules>("/v1/alerts/rules"), ["/alerts/"], []);
  const active = state.data?.active ?? [];
  const byRule = new Map<string, Alert[]>();
  for (const a of active) byRule.set(a.alertname, [...(byRule.get(a.alertname) ?? []), a]);
  const history = state.data?.history ?? [];
  return (
    <Page id="alerts" title="Alerts" subtitle="Rules over the golden signals, evaluated by the control plane" state={pageState(state, rules)} error={state.error ?? rules.error}>
      <Card title={`Active (${active.length})`}>
        {active.length === 0 ? (
          <Empty>Nothing is firing.</Empty>
        ) : (
          <div class="stack">
            {[...byRule.entries()].map(([name, alerts]) => (
              <div key={name} class="card stack-tight" data-testid={`alert-${alerts.some((a) => a.state === "firing") ? "firing" : "pending"}-${name}`}>
                <strong>{name}</strong>
                <code class="expr">{alerts[0].expr}</code>
                {alerts.map((a) => (
                  <div key={a.fingerprint} class="row">
                    <Status level={a.state} />
                    <span>{a.annotations.summary ?? a.value_text}</span>
                    <span class="muted small">
                      {Object.entries(a.labels)
                        .filter(([k]) => k !== "alertname")
                        .map(([k, v]) => `${k}=${v}`)
                        .join(" ")}
                    </span>
                    <span class="muted small">since {when(a.fired_at ?? a.started_at)}</span>
                  </div>
                ))}
              </div>
            ))}
          </div>
        )}
      </Card>
      <Card title="Rules" actions={rules.data && <span class="muted small">from {rules.data.origin === "store" ? "the store" : rules.data.source}</span>}>
        {rules.data && rules.data.rules.length === 0 ? (
          <Empty>No alert rules. Add some below or with <code>crossway alerts apply FILE</code>.</Empty>
        ) : (
          <div class="table-wrap">
            <table class="table cards-on-phone">
              <thead>
                <tr>
                  <th>Rule</th>
                  <th>Expression</th>
                  <th>For</th>
                  <th>Severity</th>
                  <th>State</th>
                </tr>
              </thead>
              <tbody>
                {(rules.data?.rules ?? []).map((r) => {
                  const alerts = byRule.get(r.name) ?? [];
                  const firing = alerts.some((a) => a.state === "firing");
                  return (
                    <tr key={r.name} data-testid={`alert-rule-${r.name}`}>
                      <td data-label="Rule" class="strong">
                        {r.name}
                      </td>
                      <td data-label="Expression">
                        <code class="expr">{r.expr}</code>
                      </td>
                      <td data-label="For">{r.for}</td>
                      <td data-label="Severity">{r.severity || "—"}</td>
                      <td data-label="State">{alerts.length === 0 ? <Status level="passing" label="ok" /> : <Status level={firing ? "firing" : "pending"} />}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
      </Card>
      <Card title="History">
        <div data-testid="alert-history">
          {history.length === 0 ? (
            <Empty>No alert has fired or resolved yet.</Empty>
          ) : (
            <div class="table-wrap">
              <table class="table cards-on-phone">
                <thead>
                  <tr>
                    <th>Alert</th>
                    <th>State</th>
                    <th>Value</th>
                    <th>Fired</th>
                    <th>Resolved</th>
                  </tr>
                </thead>
                <tbody>
                  {history.slice(0, 50).map((a, i) => (
                    <tr key={`${a.fingerprint}-${i}`}>
                      <td data-label="Alert" class="strong">
                        {a.alertname}
                      </td>
                      <td data-label="State">
                        <Status level={a.state} />
                      </td>
                      <td data-label="Value">{a.value_text}</td>
                      <td data-label="Fired">{when(a.fired_at ?? a.started_at)}</td>
                      <td data-label="Resolved">{when(a.resolved_at)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </div>
      </Card>
      {rules.data && <RulesEditor yaml={rules.data.yaml} reload={rules.reload} />}
    </Page>
  );
}

function RulesEditor({ yaml, reload }: { yaml: string; reload: () => void }) {
  const [draft, setDraft] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [saved, setSaved] = useState(false);
  const followed = useRef("");
  if (draft === null) followed.current = yaml;
  async function save() {
    setError(null);
    setSaved(false);
    try {
      await call("/v1/alerts/rules", { method: "PUT", body: draft ?? yaml, headers: { "Content-Type": "application/yaml" } });
      setDraft(null);
      setSaved(true);
      reload();
    } catch (exc) {
      setError(describe(exc));
    }
  }
  return (
    <Card title="Rules document" actions={<button class="primary" data-testid="rules-save" onClick={save} disabled={draft === null}>Save rules</button>}>
      <div class="stack">
        <Editor testid="rules-editor" value={draft ?? yaml} language="yaml" resetKey={followed.current} onChange={(t) => (setDraft(t), setSaved(false))} />
        <InlineError testid="rules-error" error={error} />
        {saved && (
          <div class="inline-ok" data-testid="rules-saved">
            Rules saved
          </div>
        )}
      </div>
    </Card>
  );
}
