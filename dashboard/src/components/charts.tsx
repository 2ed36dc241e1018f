// Time-series charts and sparklines on uPlot (canvas; small and fast).
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { useEffect, useRef } from "preact/hooks";
import { onThemeChange } from "../lib/theme";

function cssVar(name: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

interface SparklineProps {
  values: (number | null)[];
  testid: string;
  level?: string;
}

/** A 120×28 line of recent values, no axes. */
export function Sparkline({ values, testid, level = "passing" }: SparklineProps) {
  const host = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (!host.current) return;
    const xs = values.map((_, i) => i);
    const make = () =>
      new uPlot(
        {
          width: 120,
          height: 28,
          pxAlign: false,
          cursor: { show: false },
          legend: { show: false },
          select: { show: false, left: 0, top: 0, width: 0, height: 0 },
          scales: { x: { time: false }, y: { range: (_u, _min, max) => [0, Math.max(max ?? 1, 1e-9) * 1.15] } },
          axes: [{ show: false }, { show: false }],
          series: [{}, { stroke: cssVar(`--${level}`), width: 1.5, fill: cssVar(`--${level}-soft`), points: { show: false } }],
        },
        [xs, values] as uPlot.AlignedData,
        host.current!,
      );
    let plot = make();
    const off = onThemeChange(() => {
      plot.destroy();
      plot = make();
    });
    return () => {
      off();
      plot.destroy();
    };
  }, [values.join(","), level]);
  return <div class="sparkline" data-testid={testid} ref={host} />;
}

interface ChartSeries {
  label: string;
  values: (number | null)[];
  color: string;
  dash?: number[];
}

interface TimeChartProps {
  testid: string;
  title: string;
  times: number[];
  series: ChartSeries[];
  /** Formats a value in the hover legend. */
  unit?: (v: number) => string;
  /** Formats the y axis' ticks (defaults to `unit`). */
  tick?: (v: number) => string;
  /** Names the y axis (its unit). */
  yLabel?: string;
  yMax?: number;
  yMin?: number;
  /** The window shown, in seconds before now: the x axis spans it even while
   * only the last few points have data. */
  windowSeconds?: number;
}

// Below this many points a line alone is a dash at the edge of the chart:
// points are drawn too.
const FEW_POINTS = 12;

/** A full-width time chart with axes; the legend names the series and shows
 * their values under the cursor. */
export function TimeChart({ testid, title, times, series, unit, tick, yLabel, yMax, yMin, windowSeconds }: TimeChartProps) {
  const host = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const el = host.current;
    if (!el) return;
    const make = () => {
      const grid = cssVar("--border");
      const text = cssVar("--muted");
      const fmtTick = tick ?? unit ?? String;
      const now = Date.now() / 1000;
      const last = times.length ? times[times.length - 1] : now;
      const xMax = Math.max(now, last);
      const xMin = windowSeconds ? Math.min(xMax - windowSeconds, times[0] ?? xMax) : undefined;
      const opts: uPlot.Options = {
        width: Math.max(el.clientWidth, 200),
        height: 180,
        scales: {
          x: xMin === undefined ? { time: true } : { time: true, range: () => [xMin, xMax] },
          y: {
            range: (_u, min, max) => [yMin ?? Math.min(0, min ?? 0), yMax ?? Math.max((max ?? 1) * 1.1, 1e-9)],
          },
        },
        axes: [
          { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } },
          {
            stroke: text,
            grid: { stroke: grid, width: 1 },
            ticks: { stroke: grid },
            size: 56,
            ...(yLabel ? { label: yLabel, labelSize: 18, labelFont: "12px system-ui, sans-serif" } : {}),
            values: (_u, ticks) => ticks.map((v) => fmtTick(v)),
          },
        ],
        series: [
          {},
          ...series.map((s) => {
            const present = s.values.filter((v) => v !== null).length;
            return {
              label: s.label,
              stroke: cssVar(s.color),
              width: 2,
              ...(s.dash ? { dash: s.dash } : {}),
              spanGaps: false,
              points: { show: present <= FEW_POINTS, size: 6, width: 1.5, fill: cssVar(s.color) },
              // Empty until the cursor is over the chart: no row of "--".
              value: (_u: uPlot, v: number | null, _si: number, idx: number | null) =>
                idx === null ? "" : v === null ? "—" : unit ? unit(v) : String(v),
            };
          }),
        ],
      };
      return new uPlot(opts, [times, ...series.map((s) => s.values)] as uPlot.AlignedData, el);
    };
    let plot = make();
    const resize = new ResizeObserver(() => plot.setSize({ width: Math.max(el.clientWidth, 200), height: 180 }));
    resize.observe(el);
    const off = onThemeChange(() => {
      plot.destroy();
      plot = make();
    });
    return () => {
      off();
      resize.disconnect();
      plot.destroy();
    };
  }, [times.join(","), JSON.stringify(series.map((s) => s.values)), windowSeconds]);
  return (
    <div class="chart">
      <h3>{title}</h3>
      <div data-testid={testid} ref={host} class="chart-host" />
    </div>
  );
}
