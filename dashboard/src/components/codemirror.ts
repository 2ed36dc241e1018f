// CodeMirror 6 set-up, loaded on demand (it is the largest dependency).
// No auto-closing brackets and no completion pop-ups: what is typed is what is
// stored, so the server's validation sees exactly the user's text.
// Highlighting emits `tok-*` classes styled in styles.css with the theme's
// CSS variables, so light and dark mode need no second editor theme.

import { Compartment, EditorState } from "@codemirror/state";
import {
  EditorView,
  drawSelection,
  highlightActiveLine,
  highlightActiveLineGutter,
  highlightSpecialChars,
  keymap,
  lineNumbers,
} from "@codemirror/view";
import { defaultKeymap, history, historyKeymap, indentWithTab } from "@codemirror/commands";
import { bracketMatching, foldGutter, foldKeymap, syntaxHighlighting } from "@codemirror/language";
import { highlightSelectionMatches, searchKeymap } from "@codemirror/search";
import { classHighlighter } from "@lezer/highlight";
import { yaml } from "@codemirror/lang-yaml";
import { json } from "@codemirror/lang-json";

export interface EditorHandle {
  setDoc(text: string): void;
  getDoc(): string;
  setLanguage(lang: string): void;
  destroy(): void;
}

function language(lang: string) {
  if (lang === "yaml") return yaml();
  if (lang === "json") return json();
  return [];
}

export function createEditor(
  host: HTMLElement,
  doc: string,
  lang: string,
  onChange: (text: string) => void,
  readOnly = false,
): EditorHandle {
  const languageSlot = new Compartment();
  let replacing = false; // setDoc's own change is not the user's edit
  const view = new EditorView({
    parent: host,
    state: EditorState.create({
      doc,
      extensions: [
        lineNumbers(),
        highlightActiveLineGutter(),
        highlightSpecialChars(),
        history(),
        foldGutter(),
        drawSelection(),
        bracketMatching(),
        highlightActiveLine(),
        highlightSelectionMatches(),
        keymap.of([...defaultKeymap, ...historyKeymap, ...foldKeymap, ...searchKeymap, indentWithTab]),
        syntaxHighlighting(classHighlighter),
        languageSlot.of(language(lang)),
        EditorState.readOnly.of(readOnly),
        EditorView.updateListener.of((u) => {
          if (u.docChanged && !replacing) onChange(u.state.doc.toString());
        }),
      ],
    }),
  });
  return {
    setDoc(text) {
      if (text !== view.state.doc.toString()) {
        replacing = true;
        try {
          view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
        } finally {
          replacing = false;
        }
      }
    },
    getDoc: () => view.state.doc.toString(),
    setLanguage(next) {
      view.dispatch({ effects: languageSlot.reconfigure(language(next)) });
    },
    destroy: () => view.destroy(),
  };
}
