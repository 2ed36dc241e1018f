// The topology graph on cytoscape (loaded with the topology page only).
//
// Theory of operation: the connected services are laid out once per graph
// shape by cytoscape's force-directed `cose`; services with no edges sit in a
// row under them instead of wherever cose's component packing puts them. Those
// "natural" positions are kept, and every fit (first draw, container resize,
// theme change) maps them onto the container: turned a quarter when the
// layout is wide and the container tall (a phone) or the other way round,
// each axis stretched towards the container's size within limits, then fitted
// with padding. Node and label sizes are divided by the zoom whenever the fit
// still zooms out, so text never renders below READABLE_PX and nodes keep
// their size on screen; a narrow container leaves the edge labels out.
import cytoscape from "cytoscape";

export interface GraphEdge {
  caller: string;
  callee: string;
  level: string; // passing | warning | critical | unknown
  label: string;
}

export interface Graph {
  update(nodes: { id: string; level: string }[], edges: GraphEdge[]): void;
  restyle(): void;
  destroy(): void;
}

const PADDING = 36;
const NODE_PX = 30;
const NODE_LABEL_PX = 13;
const EDGE_LABEL_PX = 12;
const READABLE_PX = 11; // the smallest edge label on screen at a fit
const MAX_FIT_ZOOM = 1.25; // a graph of two nodes is not blown up to fill the card
const MAX_STRETCH = 1.6; // nor spread further apart than this
const MAX_ASPECT_CHANGE = 2.2; // one axis stretched at most this much more than the other
const COMPACT_PX = 600; // narrower: no edge labels (the edge table under the graph has them)
const ISOLATED_GAP = 110; // between services with no edges, and below the graph

type Point = { x: number; y: number };

function cssVar(name: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

/** The stylesheet at `scale` (>= 1: sizes in model units grow as the fit
 * zooms out); `narrow` leaves edges unlabelled. */
function style(scale: number, narrow = false): cytoscape.StylesheetJson {
  const levels = ["passing", "warning", "critical", "unknown"];
  return [
    {
      selector: "node",
      style: {
        label: "data(id)",
        "background-color": cssVar("--surface"),
        "border-width": 2.5 * scale,
        "border-color": cssVar("--accent"),
        color: cssVar("--text"),
        "font-size": NODE_LABEL_PX * scale,
        "font-weight": 600,
        "font-family": "system-ui, sans-serif",
        "text-valign": "bottom",
        "text-margin-y": 5 * scale,
        "text-background-color": cssVar("--surface"),
        "text-background-opacity": 0.85,
        "text-background-padding": `${2 * scale}px`,
        "text-background-shape": "roundrectangle",
        width: NODE_PX * scale,
        height: NODE_PX * scale,
      },
    },
    ...levels.map((l) => ({
      selector: `node[level = "${l}"]`,
      style: { "border-color": cssVar(`--${l}`), "background-color": cssVar(`--${l}-soft`) },
    })),
    {
      selector: "edge",
      style: {
        width: 2.5 * scale,
        "curve-style": "bezier",
        "target-arrow-shape": "triangle",
        "arrow-scale": 1.1,
        label: narrow ? "" : "data(label)",
        "font-size": EDGE_LABEL_PX * scale,
        "font-family": "system-ui, sans-serif",
        color: cssVar("--muted"),
        "text-background-color": cssVar("--surface"),
        "text-background-opacity": 1,
        "text-background-padding": `${2 * scale}px`,
        "text-rotation": "none",
        "text-background-shape": "roundrectangle",
      },
    },
    ...levels.map((l) => ({
      selector: `edge[level = "${l}"]`,
      style: { "line-color": cssVar(`--${l}`), "target-arrow-color": cssVar(`--${l}`) },
    })),
  ] as cytoscape.StylesheetJson;
}

/** Positions for the nodes of `cy`: cose for the connected ones, a row below for the rest. */
function layOut(cy: cytoscape.Core): Map<string, Point> {
  const connected = cy.nodes().filter((n) => n.degree(false) > 0);
  const isolated = cy.nodes().filter((n) => n.degree(false) === 0);
  const positions = new Map<string, Point>();
  let bottom = 0;
  let left = 0;
  let width = 0;
  if (connected.nonempty()) {
    // Force-directed: unlike a layered layout, an edge between two nodes of
    // one layer never runs through a third.
    connected
      .union(connected.edgesWith(connected))
      .layout({
        name: "cose",
        animate: false,
        fit: false,
        randomize: false,
        nodeRepulsion: () => 120000,
        idealEdgeLength: () => 110,
        nodeDimensionsIncludeLabels: true,
        componentSpacing: 60,
      } as cytoscape.LayoutOptions)
      .run();
    const bb = connected.boundingBox({});
    connected.forEach((n) => void positions.set(n.id(), { ...n.position() }));
    bottom = bb.y2 + ISOLATED_GAP * 0.7;
    left = bb.x1;
    width = bb.w;
  }
  // Services without edges: a centred row (rows) under the graph.
  const perRow = Math.max(1, Math.floor(width / ISOLATED_GAP) + 1);
  isolated.forEach((n, i) => {
    const row = Math.floor(i / perRow);
    const inRow = Math.min(perRow, isolated.length - row * perRow);
    const x0 = left + width / 2 - ((inRow - 1) * ISOLATED_GAP) / 2;
    positions.set(n.id(), { x: x0 + (i % perRow) * ISOLATED_GAP, y: bottom + row * ISOLATED_GAP * 0.7 });
  });
  return positions;
}

export function createGraph(container: HTMLElement, onSelect: (service: string) => void): Graph {
  const cy = cytoscape({ container, style: style(1), minZoom: 0.2, maxZoom: 3, wheelSensitivity: 0.3 });
  cy.on("tap", "node", (e) => onSelect(e.target.id()));
  let shape = "";
  let natural = new Map<string, Point>();
  let scale = 1;
  let narrow = false;

  /** Map the natural positions onto the container and fit them, readable. */
  function arrange() {
    if (cy.nodes().empty()) return;
    cy.resize();
    const w = cy.width();
    const h = cy.height();
    if (w === 0 || h === 0) return; // hidden: the next resize arranges
    const compact = w < COMPACT_PX;
    const points = [...natural.values()];
    const xs = points.map((p) => p.x);
    const ys = points.map((p) => p.y);
    const [x1, x2, y1, y2] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const turn = (x2 - x1 >= y2 - y1) !== (w >= h) && natural.size > 2;
    const [spanX, spanY] = turn ? [y2 - y1, x2 - x1] : [x2 - x1, y2 - y1];
    // Stretch each axis towards the container (labels need room beyond the
    // node centres), within limits that keep the layout's shape.
    const roomX = Math.max(60, w - 2 * PADDING - 90);
    const roomY = Math.max(60, h - 2 * PADDING - 40);
    let fx = spanX > 0 ? roomX / spanX : 1;
    let fy = spanY > 0 ? roomY / spanY : 1;
    const uniform = Math.min(fx, fy);
    fx = Math.min(fx, uniform * MAX_ASPECT_CHANGE, MAX_STRETCH);
    fy = Math.min(fy, uniform * MAX_ASPECT_CHANGE, MAX_STRETCH);
    cy.batch(() => {
      cy.nodes().forEach((n) => {
        const p = natural.get(n.id()) ?? { x: 0, y: 0 };
        const [x, y] = turn ? [p.y, p.x] : [p.x, p.y];
        n.position({ x: x * fx, y: y * fy });
      });
    });
    for (let pass = 0; pass < 2; pass++) {
      cy.fit(undefined, PADDING);
      if (cy.zoom() > MAX_FIT_ZOOM) {
        cy.zoom(MAX_FIT_ZOOM);
        cy.center();
      }
      // Sizes follow the zoom so labels stay readable; the grown labels
      // change the bounds, hence the second fit.
      const next = Math.max(1, READABLE_PX / (EDGE_LABEL_PX * cy.zoom()));
      if (Math.abs(next - scale) < 0.02 && compact === narrow) break;
      scale = next;
      narrow = compact;
      cy.style(style(scale, narrow));
    }
  }

  const observer = new ResizeObserver(() => arrange());
  observer.observe(container);

  return {
    update(nodes, edges) {
      const elements: cytoscape.ElementDefinition[] = [
        ...nodes.map((n) => ({ group: "nodes" as const, data: { id: n.id, level: n.level } })),
        ...edges.map((e) => ({
          group: "edges" as const,
          data: { id: `${e.caller}->${e.callee}`, source: e.caller, target: e.callee, level: e.level, label: e.label },
        })),
      ];
      const nextShape = elements.map((e) => e.data.id).sort().join("|");
      if (nextShape === shape) {
        for (const e of elements) cy.getElementById(String(e.data.id)).data(e.data);
        return;
      }
      shape = nextShape;
      cy.elements().remove();
      cy.add(elements);
      // Lay out at scale 1, so the layout does not depend on the last zoom.
      scale = 1;
      cy.style(style(scale, narrow));
      natural = layOut(cy);
      arrange();
    },
    restyle() {
      cy.style(style(scale, narrow));
    },
    destroy: () => {
      observer.disconnect();
      cy.destroy();
    },
  };
}
