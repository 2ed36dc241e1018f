// Light / dark theme: follows prefers-color-scheme until the user toggles;
// the choice is kept in localStorage and set as data-theme on <html>.

const KEY = "crossway.theme";
const listeners = new Set<() => void>();

export type Theme = "light" | "dark";

export function currentTheme(): Theme {
  const stored = localStorage.getItem(KEY);
  if (stored === "light" || stored === "dark") return stored;
  return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

export function applyTheme(theme: Theme = currentTheme()): void {
  document.documentElement.setAttribute("data-theme", theme);
  listeners.forEach((l) => l());
}

export function toggleTheme(): Theme {
  const next: Theme = currentTheme() === "dark" ? "light" : "dark";
  localStorage.setItem(KEY, next);
  applyTheme(next);
  return next;
}

export function onThemeChange(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
  if (!localStorage.getItem(KEY)) applyTheme();
});
