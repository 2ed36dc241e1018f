// Reading golden signals: one row per service (server side preferred — it is
// what the callee measured), with its series for sparklines and charts.
import { getJson } from "./api";
import type { StatListing, StatRow } from "./types";

export const STATS_REFRESH_MS = 5000;

export async function serviceStats(window = "5m"): Promise<Map<string, StatRow>> {
  const listing = await getJson<StatListing>(`/v1/stats?window=${window}&series=true`);
  return preferServerSide(listing.rows, (r) => r.service);
}

export function preferServerSide(rows: StatRow[], key: (r: StatRow) => string): Map<string, StatRow> {
  const byKey = new Map<string, StatRow>();
  for (const row of rows) {
    const k = key(row);
    const seen = byKey.get(k);
    if (!seen || (seen.side !== "server" && row.side === "server")) byKey.set(k, row);
  }
  return byKey;
}

export async function edges(window = "5m", query = ""): Promise<StatRow[]> {
  const listing = await getJson<StatListing>(`/v1/edges?window=${window}${query}`);
  return [...preferServerSide(listing.rows, (r) => `${r.caller ?? "?"}\u0000${r.service}`).values()];
}
