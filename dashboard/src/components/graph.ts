// The topology graph on cytoscape (loaded with the topology page only).
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

function cssVar(name: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

function style(): cytoscape.StylesheetJson {
  const levels = ["passing", "warning", "critical", "unknown"];
  return [
    {
      selector: "node",
      style: {
        label: "data(id)",
        "background-color": cssVar("--surface"),
        "border-width": 2,
        "border-color": cssVar("--accent"),
        color: cssVar("--text"),
        "font-size": 13,
        "font-family": "system-ui, sans-serif",
        "text-valign": "bottom",
        "text-margin-y": 6,
        width: 34,
        height: 34,
      },
    },
    ...levels.map((l) => ({ selector: `node[level = "${l}"]`, style: { "border-color": cssVar(`--${l}`) } })),
    {
      selector: "edge",
      style: {
        width: 2.5,
        "curve-style": "bezier",
        "target-arrow-shape": "triangle",
        label: "data(label)",
        "font-size": 11,
        color: cssVar("--muted"),
        "text-background-color": cssVar("--surface"),
        "text-background-opacity": 1,
        "text-background-padding": "2px",
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

export function createGraph(container: HTMLElement, onSelect: (service: string) => void): Graph {
  const cy = cytoscape({ container, style: style(), minZoom: 0.3, maxZoom: 3, wheelSensitivity: 0.3 });
  cy.on("tap", "node", (e) => onSelect(e.target.id()));
  let shape = "";
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
      // Force-directed (cytoscape's own cose): unlike a layered layout, an
      // edge between two nodes of one layer never runs through a third.
      cy.layout({
        name: "cose",
        animate: false,
        randomize: false,
        nodeRepulsion: () => 400000,
        idealEdgeLength: () => 140,
        nodeDimensionsIncludeLabels: true,
        padding: 40,
      } as cytoscape.LayoutOptions).run();
      cy.fit(undefined, 40);
    },
    restyle() {
      cy.style(style());
    },
    destroy: () => cy.destroy(),
  };
}
