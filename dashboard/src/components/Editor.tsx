import { useEffect, useRef, useState } from "preact/hooks";
import type { EditorHandle } from "./codemirror";

interface EditorProps {
  testid: string;
  value: string;
  language: string;
  onChange: (text: string) => void;
  readOnly?: boolean;
  /** Changing it replaces the document with `value`. */
  resetKey?: string | number;
}

/** A CodeMirror editor (loaded lazily), starting from `value`. */
export function Editor({ testid, value, language, onChange, readOnly = false, resetKey }: EditorProps) {
  const host = useRef<HTMLDivElement>(null);
  const handle = useRef<EditorHandle | null>(null);
  const latest = useRef({ value, language, onChange });
  latest.current = { value, language, onChange };
  const [failed, setFailed] = useState(false);
  useEffect(() => {
    let cancelled = false;
    import("./codemirror").then(
      ({ createEditor }) => {
        if (cancelled || !host.current) return;
        const now = latest.current;
        handle.current = createEditor(host.current, now.value, now.language, (t) => latest.current.onChange(t), readOnly);
      },
      () => setFailed(true),
    );
    return () => {
      cancelled = true;
      handle.current?.destroy();
      handle.current = null;
    };
  }, [readOnly]);

  // The editor owns its text while the user types; `value` is written into it
  // only when `resetKey` changes (new content from the server, a save). Echoing
  // every `value` back would race the keystrokes typed since that render.
  useEffect(() => handle.current?.setDoc(latest.current.value), [resetKey]);
  useEffect(() => handle.current?.setLanguage(language), [language]);

  return (
    <div class="editor" data-testid={testid} ref={host}>
      {failed && <textarea class="fallback" value={value} readOnly={readOnly} onInput={(e) => onChange(e.currentTarget.value)} />}
    </div>
  );
}
