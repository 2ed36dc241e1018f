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
        const pos = error.linePos?.[0];
        const where = pos ? ` (line ${pos.line}, column ${pos.col})` : "";
        return `YAML: ${error.message.split("\n")[0]}${where}`;
      }
    }
  }
  return null;
}
