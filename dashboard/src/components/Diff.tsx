import { diffLines } from "diff";

interface Cell {
  text: string;
  kind: "same" | "del" | "add" | "gap";
  n?: number;
}

/** Two columns, old on the left and new on the right, lines aligned. */
export function SideBySide({ before, after, testid }: { before: string; after: string; testid: string }) {
  const left: Cell[] = [];
  const right: Cell[] = [];
  let ln = 1;
  let rn = 1;
  const parts = diffLines(before, after);
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i];
    const lines = part.value.replace(/\n$/, "").split("\n");
    if (!part.added && !part.removed) {
      for (const text of lines) {
        left.push({ text, kind: "same", n: ln++ });
        right.push({ text, kind: "same", n: rn++ });
      }
      continue;
    }
    if (part.removed) {
      const next = parts[i + 1];
      const added = next?.added ? next.value.replace(/\n$/, "").split("\n") : [];
      if (next?.added) i++;
      const rows = Math.max(lines.length, added.length);
      for (let r = 0; r < rows; r++) {
        left.push(r < lines.length ? { text: lines[r], kind: "del", n: ln++ } : { text: "", kind: "gap" });
        right.push(r < added.length ? { text: added[r], kind: "add", n: rn++ } : { text: "", kind: "gap" });
      }
      continue;
    }
    for (const text of lines) {
      left.push({ text: "", kind: "gap" });
      right.push({ text, kind: "add", n: rn++ });
    }
  }
  const changed = left.some((c) => c.kind !== "same") || right.some((c) => c.kind !== "same");
  return (
    <div data-testid={testid}>
      {!changed && <p class="muted">The two versions are identical.</p>}
      <div class="diff">
        <Side cells={left} />
        <Side cells={right} />
      </div>
    </div>
  );
}

function Side({ cells }: { cells: Cell[] }) {
  return (
    <div class="diff-side">
      {cells.map((c, i) => (
        <div key={i} class={`diff-line diff-${c.kind}`}>
          <span class="ln">{c.n ?? ""}</span>
          {c.kind === "del" ? "- " : c.kind === "add" ? "+ " : "  "}
          {c.text}
        </div>
      ))}
    </div>
  );
}
