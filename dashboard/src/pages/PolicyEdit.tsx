import { Card, Page } from "../components/Page";
import { DocumentEditor } from "../components/DocumentEditor";
import { seg } from "../lib/api";
import { readDocument } from "../lib/documents";
import { pageState, useLive } from "../lib/hooks";

const TEMPLATE = { timeout: "2s", retries: { attempts: 2 } };

export function PolicyEdit({ service }: { service: string }) {
  const url = `/v1/policies/${seg(service)}`;
  const doc = useLive(() => readDocument(url, TEMPLATE), [`/policies/${service}`], [url]);
  return (
    <Page
      id="policy"
      title={service}
      subtitle={
        <>
          <a href="/policies">← call policies</a>
          {doc.data && (doc.data.revision === null ? " · no policy yet (defaults apply)" : ` · revision ${doc.data.revision}`)}
          {" · "}
          <a href={`/services/${seg(service)}`}>service</a>
        </>
      }
      state={pageState(doc)}
      error={doc.error}
    >
      <Card title="Policy document">
        <DocumentEditor url={url} doc={doc.data} prefix="policy" onSaved={() => doc.reload()} />
      </Card>
      <Card title="Fields">
        <dl class="kv">
          <dt>timeout</dt>
          <dd>bounds a whole call, retries and waits included, e.g. "2s"</dd>
          <dt>retries</dt>
          <dd>{"{attempts, on: [503, ...], ...}"}; null for none</dd>
          <dt>breaker</dt>
          <dd>circuit breaker ({"{}"} for its defaults)</dd>
          <dt>bulkhead</dt>
          <dd>concurrency limit</dd>
          <dt>outlier</dt>
          <dd>outlier ejection of failing instances</dd>
          <dt>balancer</dt>
          <dd>round_robin (default), least_request, ring_hash, maglev, ...</dd>
          <dt>hash_header</dt>
          <dd>the header ring_hash / maglev hash</dd>
          <dt>zone_aware</dt>
          <dd>prefer instances in the caller's zone</dd>
        </dl>
        <p class="muted small">The server validates every field and names the one it refuses; see docs/resilience.md.</p>
      </Card>
    </Page>
  );
}
