// Number and time formatting shared by the pages.

export function fmtRps(v: number | null | undefined): string {
  if (v === null || v === undefined) return "—";
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

export function fmtPct(v: number | null | undefined): string {
  if (v === null || v === undefined) return "—";
  const pct = v * 100;
  return (pct === 100 ? "100" : pct >= 99.9 ? pct.toFixed(2) : pct.toFixed(1)) + "%";
}

export function fmtMs(v: number | null | undefined): string {
  if (v === null || v === undefined) return "—";
  if (v >= 1000) return (v / 1000).toFixed(2) + " s";
  return (v >= 10 ? v.toFixed(0) : v.toFixed(1)) + " ms";
}

export function fmtUs(us: number): string {
  return fmtMs(us / 1000);
}

/** "3m 12s" from seconds. */
export function fmtAge(seconds: number): string {
  if (!isFinite(seconds) || seconds < 0) return "—";
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function fmtTime(unixSeconds: number): string {
  return new Date(unixSeconds * 1000).toLocaleString();
}

export function ago(unixSeconds: number): string {
  return fmtAge(Date.now() / 1000 - unixSeconds) + " ago";
}

/** passing / warning / critical for a success rate. */
export function rateLevel(v: number | null | undefined): "passing" | "warning" | "critical" | "unknown" {
  if (v === null || v === undefined) return "unknown";
  if (v >= 0.99) return "passing";
  if (v >= 0.95) return "warning";
  return "critical";
}

/** A safe fragment of a data-testid. */
export function tid(...parts: string[]): string {
  return parts.join("-");
}
