import { useState } from "preact/hooks";
import { useLocation } from "preact-iso";
import { Card, Empty, Page, Status } from "../components/Page";
import { getJson, seg } from "../lib/api";
import { ago } from "../lib/format";
import { pageState, useLive } from "../lib/hooks";
import type { ConfigKeyRow } from "../lib/types";

interface Props {
  query?: Record<string, string>;
}

/** Namespaces → groups → keys, picked with `?ns=` and `&group=`. */
export function ConfigBrowser({ query = {} }: Props) {
  const namespaces = useLive(() => getJson<string[]>("/v1/config"), ["/config/"], []);
  const ns = query.ns ?? namespaces.data?.[0];
  const groups = useLive(
    () => (ns ? getJson<{ group: string; keys: number }[]>(`/v1/config/${seg(ns)}`) : Promise.resolve([])),
    ["/config/"],
    [ns],
  );
  const group = query.group ?? groups.data?.[0]?.group;
  const keys = useLive(
    () => (ns && group ? getJson<ConfigKeyRow[]>(`/v1/config/${seg(ns)}/${seg(group)}`) : Promise.resolve([])),
    ["/config/"],
    [ns, group],
  );
  return (
    <Page id="config" title="Config" subtitle="Namespaces, groups and keys of the config center" state={pageState(namespaces)} error={namespaces.error} actions={<NewKey ns={ns} group={group} />}>
      {namespaces.data && namespaces.data.length === 0 ? (
        <Card>
          <Empty>
            No configuration yet. Publish a key with <code>crossway config set</code>, or create one here.
          </Empty>
        </Card>
      ) : (
        <div class="browser">
          <Card title="Namespaces">
            <div class="list">
              {(namespaces.data ?? []).map((n) => (
                <a key={n} href={`/config?ns=${seg(n)}`} data-testid={`ns-${n}`} class={n === ns ? "active" : ""}>
                  {n}
                </a>
              ))}
            </div>
          </Card>
          <Card title="Groups">
            <div class="list">
              {(groups.data ?? []).map((g) => (
                <a key={g.group} href={`/config?ns=${seg(ns!)}&group=${seg(g.group)}`} data-testid={`group-${ns}-${g.group}`} class={g.group === group ? "active" : ""}>
                  <span>{g.group}</span>
                  <span class="muted">{g.keys}</span>
                </a>
              ))}
            </div>
          </Card>
          <Card title={group ? `Keys in ${ns}/${group}` : "Keys"}>
            {keys.data && keys.data.length === 0 ? (
              <Empty>No keys in this group.</Empty>
            ) : (
              <div class="table-wrap">
                <table class="table cards-on-phone">
                  <thead>
                    <tr>
                      <th>Key</th>
                      <th>Format</th>
                      <th class="num">Version</th>
                      <th>Modified</th>
                      <th>Gray release</th>
                    </tr>
                  </thead>
                  <tbody>
                    {(keys.data ?? []).map((k) => (
                      <tr key={k.key}>
                        <td data-label="Key">
                          <a class="strong mono" href={`/config/${seg(ns!)}/${seg(group!)}/${seg(k.key)}`} data-testid={`key-${ns}-${group}-${k.key}`}>
                            {k.key}
                          </a>
                        </td>
                        <td data-label="Format">
                          <span class="tag">{k.format}</span>
                        </td>
                        <td data-label="Version" class="num">
                          {k.version}
                        </td>
                        <td data-label="Modified" title={new Date(k.modified * 1000).toLocaleString()}>
                          {ago(k.modified)} <span class="muted">by {k.author}</span>
                        </td>
                        <td data-label="Gray release">{k.beta ? <Status level="warning" label={`beta: ${k.beta_selector ?? ""}`} /> : <span class="muted">—</span>}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            )}
          </Card>
        </div>
      )}
    </Page>
  );
}

function NewKey({ ns, group }: { ns?: string | undefined; group?: string | undefined }) {
  const { route } = useLocation();
  const [open, setOpen] = useState(false);
  const [path, setPath] = useState("");
  if (!open) {
    return (
      <button onClick={() => (setPath(`${ns ?? "default"}/${group ?? "app"}/`), setOpen(true))} data-testid="config-new">
        New key
      </button>
    );
  }
  const parts = path.split("/");
  const valid = parts.length === 3 && parts.every((p) => p.length > 0);
  return (
    <form
      class="row"
      onSubmit={(e) => {
        e.preventDefault();
        if (valid) route(`/config/${parts.map(seg).join("/")}`);
      }}
    >
      <input value={path} onInput={(e) => setPath(e.currentTarget.value)} placeholder="namespace/group/key" aria-label="namespace/group/key" autoFocus />
      <button class="primary" type="submit" disabled={!valid}>
        Open editor
      </button>
      <button type="button" onClick={() => setOpen(false)}>
        Cancel
      </button>
    </form>
  );
}
