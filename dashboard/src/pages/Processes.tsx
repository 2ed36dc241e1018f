import { useState } from "preact/hooks";
import { Card, Empty, InlineError, Page, Status } from "../components/Page";
import { call, getJson, seg } from "../lib/api";
import { ago } from "../lib/format";
import { pageState, usePolled } from "../lib/hooks";
import { describe } from "../components/DocumentEditor";

interface Process {
  service: string;
  replica: number;
  instance_id: string;
  pid: number | null;
  port: number | null;
  state: string;
  restarts: number;
  started_at: number | null;
  last_exit: string | number | null;
}

interface Listing {
  project: string;
  processes: Process[];
}

function level(state: string): string {
  if (state === "running" || state === "healthy") return "passing";
  if (state === "starting" || state === "stopping" || state === "restarting") return "warning";
  return "critical";
}

export function Processes() {
  const listing = usePolled(() => getJson<Listing>("/v1/processes"), 3000, []);
  const [error, setError] = useState<string | null>(null);
  const services = [...new Set((listing.data?.processes ?? []).map((p) => p.service))];
  async function restart(service: string) {
    setError(null);
    try {
      await call(`/v1/processes/${seg(service)}/restart`, { method: "POST" });
      listing.reload();
    } catch (exc) {
      setError(describe(exc));
    }
  }
  return (
    <Page id="processes" title="Processes" subtitle={listing.data ? `Supervised by crossway up · project ${listing.data.project}` : "Supervised by crossway up"} state={pageState(listing)} error={listing.error}>
      <InlineError testid="process-error" error={error} />
      {listing.data && listing.data.processes.length === 0 && (
        <Card>
          <Empty>No processes are supervised.</Empty>
        </Card>
      )}
      {services.map((service) => (
        <Card
          key={service}
          title={<a href={`/services/${seg(service)}`}>{service}</a>}
          actions={
            <button data-testid={`process-restart-${service}`} onClick={() => restart(service)}>
              Rolling restart
            </button>
          }
        >
          <div class="table-wrap">
            <table class="table cards-on-phone">
              <thead>
                <tr>
                  <th>Instance</th>
                  <th>State</th>
                  <th class="num">PID</th>
                  <th class="num">Port</th>
                  <th class="num">Restarts</th>
                  <th>Started</th>
                  <th>Last exit</th>
                </tr>
              </thead>
              <tbody>
                {(listing.data?.processes ?? [])
                  .filter((p) => p.service === service)
                  .map((p) => (
                    <tr key={p.instance_id} data-testid={`process-row-${p.instance_id}`}>
                      <td data-label="Instance" class="mono">
                        {p.instance_id}
                      </td>
                      <td data-label="State">
                        <Status level={level(p.state)} label={p.state} />
                      </td>
                      <td data-label="PID" class="num">
                        {p.pid ?? "—"}
                      </td>
                      <td data-label="Port" class="num">
                        {p.port ?? "—"}
                      </td>
                      <td data-label="Restarts" class="num">
                        {p.restarts}
                      </td>
                      <td data-label="Started">{p.started_at ? ago(p.started_at) : "—"}</td>
                      <td data-label="Last exit">{p.last_exit ?? "—"}</td>
                    </tr>
                  ))}
              </tbody>
            </table>
          </div>
        </Card>
      ))}
    </Page>
  );
}
