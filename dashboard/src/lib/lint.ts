// A quick parse check in the browser while typing. Only a hint: the server
// validates every write and its answer is the one that counts.
import { parseAllDocuments } from "yaml";

export function lint(format: string, text: string): string | null {
  if (format === "json") {
    if (!text.trim()) return null;
    try {
      JSON.parse(text);
      return null;
    } catch (exc) {
      return `JSON: ${(exc as Error).message}`;
    }
  }
  if (format === "yaml") {
    for (const doc of parseAllDocuments(text)) {
      const error = doc.errors[0];
      if (error) {
        // The library writes the position into its message ("… at line 2,
        // column 10:" and a code frame); it is shown once, as the server
        // writes it: "(line 2, column 10)", both 1-based.
        const pos = error.linePos?.[0];
        const what = error.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "").replace(/:$/, "");
        const where = pos ? ` (line ${pos.line}, column ${pos.col})` : "";
        return `YAML: ${what}${where}`;
      }
    }
  }
  return null;
}
