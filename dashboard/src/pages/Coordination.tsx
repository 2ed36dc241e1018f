import { useEffect, useState } from "preact/hooks";
import { Card, Empty, Page, Status } from "../components/Page";
import { getJson } from "../lib/api";
import { ago, fmtAge } from "../lib/format";
import { pageState, useLive } from "../lib/hooks";

interface Holder {
  session: string;
  name: string;
  fence: number;
  since: number;
  value?: string;
}
interface Lock {
  lock: string;
  holder: Holder | null;
  waiting: Holder[];
}
interface Election {
  election: string;
  leader: Holder | null;
  candidates: Holder[];
}
interface Semaphore {
  semaphore: string;
  limit: number | null;
  holders: Holder[];
  waiting: Holder[];
}
interface Session {
  session: string;
  name: string;
  ttl: string;
  created: number;
}

interface State {
  locks: Lock[];
  elections: Election[];
  semaphores: Semaphore[];
  sessions: Session[];
}

const PREFIXES = ["/locks/", "/elections/", "/semaphores/", "/sessions/"];

async function load(): Promise<State> {
  const [locks, elections, semaphores, sessions] = await Promise.all([
    getJson<Lock[]>("/v1/locks"),
    getJson<Election[]>("/v1/elections"),
    getJson<Semaphore[]>("/v1/semaphores"),
    getJson<Session[]>("/v1/sessions"),
  ]);
  return { locks, elections, semaphores, sessions };
}

function who(h: Holder | null): string {
  return h ? `${h.name || "(anonymous)"} · ${h.session}` : "—";
}

export function Coordination() {
  const state = useLive(load, PREFIXES, []);
  const [now, setNow] = useState(Date.now() / 1000);
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now() / 1000), 1000);
    return () => clearInterval(t);
  }, []);
  const d = state.data;
  const held = new Map<string, string[]>();
  for (const l of d?.locks ?? []) if (l.holder) held.set(l.holder.session, [...(held.get(l.holder.session) ?? []), `lock ${l.lock}`]);
  for (const m of d?.semaphores ?? []) for (const h of m.holders) held.set(h.session, [...(held.get(h.session) ?? []), `semaphore ${m.semaphore}`]);
  for (const e of d?.elections ?? []) if (e.leader) held.set(e.leader.session, [...(held.get(e.leader.session) ?? []), `leader of ${e.election}`]);
  return (
    <Page id="coordination" title="Coordination" subtitle="Locks, leader elections, semaphores and the sessions that hold them" state={pageState(state)} error={state.error}>
      <div class="grid-2">
        <Card title="Locks">
          {d && d.locks.length === 0 ? (
            <Empty>No locks held or awaited.</Empty>
          ) : (
            <Table head={["Lock", "Holder", "Fence", "Waiting"]}>
              {(d?.locks ?? []).map((l) => (
                <tr key={l.lock} data-testid={`lock-row-${l.lock}`}>
                  <td data-label="Lock" class="strong">
                    {l.lock}
                  </td>
                  <td data-label="Holder">{l.holder ? <Status level="held" label={who(l.holder)} /> : <span class="muted">free</span>}</td>
                  <td data-label="Fence" class="num">
                    {l.holder?.fence ?? "—"}
                  </td>
                  <td data-label="Waiting" class="num">
                    {l.waiting.length}
                  </td>
                </tr>
              ))}
            </Table>
          )}
        </Card>
        <Card title="Leader elections">
          {d && d.elections.length === 0 ? (
            <Empty>No elections.</Empty>
          ) : (
            <Table head={["Election", "Leader", "Value", "Candidates"]}>
              {(d?.elections ?? []).map((e) => (
                <tr key={e.election} data-testid={`leader-row-${e.election}`}>
                  <td data-label="Election" class="strong">
                    {e.election}
                  </td>
                  <td data-label="Leader">{e.leader ? <Status level="leader" label={who(e.leader)} /> : <span class="muted">no leader</span>}</td>
                  <td data-label="Value" class="mono">
                    {e.leader?.value ?? "—"}
                  </td>
                  <td data-label="Candidates" class="num">
                    {e.candidates.length}
                  </td>
                </tr>
              ))}
            </Table>
          )}
        </Card>
      </div>
      <div class="grid-2">
        <Card title="Sessions">
          {d && d.sessions.length === 0 ? (
            <Empty>No live sessions.</Empty>
          ) : (
            <Table head={["Session", "Name", "TTL", "Age", "Holds"]}>
              {(d?.sessions ?? []).map((s) => (
                <tr key={s.session} data-testid={`session-row-${s.session}`}>
                  <td data-label="Session" class="mono">
                    {s.session}
                  </td>
                  <td data-label="Name">{s.name || <span class="muted">—</span>}</td>
                  <td data-label="TTL">{s.ttl}</td>
                  <td data-label="Age" title={ago(s.created)}>
                    {fmtAge(now - s.created)}
                  </td>
                  <td data-label="Holds">{(held.get(s.session) ?? []).join(", ") || <span class="muted">nothing</span>}</td>
                </tr>
              ))}
            </Table>
          )}
        </Card>
        <Card title="Semaphores">
          {d && d.semaphores.length === 0 ? (
            <Empty>No semaphores.</Empty>
          ) : (
            <Table head={["Semaphore", "Holders", "Limit", "Waiting"]}>
              {(d?.semaphores ?? []).map((s) => (
                <tr key={s.semaphore} data-testid={`semaphore-row-${s.semaphore}`}>
                  <td data-label="Semaphore" class="strong">
                    {s.semaphore}
                  </td>
                  <td data-label="Holders">{s.holders.map((h) => h.name || h.session).join(", ") || "—"}</td>
                  <td data-label="Limit" class="num">
                    {s.holders.length}/{s.limit ?? "?"}
                  </td>
                  <td data-label="Waiting" class="num">
                    {s.waiting.length}
                  </td>
                </tr>
              ))}
            </Table>
          )}
        </Card>
      </div>
    </Page>
  );
}

function Table({ head, children }: { head: string[]; children: preact.ComponentChildren }) {
  return (
    <div class="table-wrap">
      <table class="table cards-on-phone">
        <thead>
          <tr>
            {head.map((h) => (
              <th key={h}>{h}</th>
            ))}
          </tr>
        </thead>
        <tbody>{children}</tbody>
      </table>
    </div>
  );
}
