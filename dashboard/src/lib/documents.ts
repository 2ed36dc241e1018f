import { failure, request } from "./api";
import type { Doc } from "../components/DocumentEditor";

/** A stored document with its revision (the ETag), or a fresh one on 404. */
export async function readDocument(url: string, fresh: Record<string, unknown>): Promise<Doc> {
  const r = await request(url);
  if (r.status === 404) return { revision: null, body: fresh };
  if (!r.ok) throw await failure(r);
  const etag = (r.headers.get("ETag") ?? r.headers.get("X-Crossway-Index") ?? "").replace(/"/g, "");
  return { revision: etag ? Number(etag) : null, body: (await r.json()) as Record<string, unknown> };
}
