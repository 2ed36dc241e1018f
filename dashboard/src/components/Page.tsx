import type { ComponentChildren } from "preact";
import type { ApiError } from "../lib/api";

interface PageProps {
  id: string;
  title: ComponentChildren;
  state: "true" | "false" | "error";
  error?: ApiError | undefined;
  actions?: ComponentChildren;
  subtitle?: ComponentChildren;
  children?: ComponentChildren;
}

/** A page's root: the test id, `data-loaded`, the heading and any load error. */
export function Page({ id, title, state, error, actions, subtitle, children }: PageProps) {
  return (
    <section class="page" data-testid={`page-${id}`} data-loaded={state}>
      <header class="page-head">
        <div>
          <h1>{title}</h1>
          {subtitle && <p class="muted">{subtitle}</p>}
        </div>
        {actions && <div class="page-actions">{actions}</div>}
      </header>
      {error && (
        <div class="banner banner-error" role="alert" data-testid="page-error">
          {error.status ? `${error.status}: ` : ""}
          {error.describe()}
        </div>
      )}
      {state === "false" && !error && <div class="loading">Loading…</div>}
      {children}
    </section>
  );
}

export function Empty({ children }: { children: ComponentChildren }) {
  return <div class="empty">{children}</div>;
}

export function Status({ level, label }: { level: string; label?: string }) {
  return <span class={`status status-${level}`}>{label ?? level}</span>;
}

export function Card({ title, children, actions }: { title?: ComponentChildren; children: ComponentChildren; actions?: ComponentChildren }) {
  return (
    <div class="card">
      {(title || actions) && (
        <div class="card-head">
          {title && <h2>{title}</h2>}
          {actions}
        </div>
      )}
      {children}
    </div>
  );
}

export function InlineError({ error, testid }: { error: string | null | undefined; testid: string }) {
  if (!error) return null;
  return (
    <div class="inline-error" role="alert" data-testid={testid}>
      {error}
    </div>
  );
}
