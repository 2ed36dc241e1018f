// The one HTTP client of the dashboard: every action goes through the same
// `/v1/...` API the CLI uses. Errors come back as `ApiError`, carrying the
// server's JSON error (code, message, field, line, column) for inline display.

const TOKEN_KEY = "crossway.token";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly detail: Record<string, unknown> = {},
  ) {
    super(message);
  }

  /** "message (field $.x, line 2, column 1)" — everything the server said. */
  describe(): string {
    const extra: string[] = [];
    const { field, line, column } = this.detail as { field?: string; line?: number; column?: number };
    if (field) extra.push(`field ${field}`);
    if (line !== undefined && !this.message.includes(`line ${line}`)) extra.push(`line ${line}`);
    if (column !== undefined && !this.message.includes(`column ${column}`)) extra.push(`column ${column}`);
    return extra.length ? `${this.message} (${extra.join(", ")})` : this.message;
  }
}

type Listener = () => void;
const tokenListeners = new Set<Listener>();
let tokenWanted = false;

export function getToken(): string | null {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(token: string | null): void {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
  tokenWanted = false;
  tokenListeners.forEach((l) => l());
}

export function isTokenWanted(): boolean {
  return tokenWanted;
}

export function onTokenChange(listener: Listener): () => void {
  tokenListeners.add(listener);
  return () => tokenListeners.delete(listener);
}

export function authHeaders(extra: HeadersInit = {}): Headers {
  const headers = new Headers(extra);
  const token = getToken();
  if (token) headers.set("Authorization", `Bearer ${token}`);
  return headers;
}

/** Raw fetch with the token; a 401 asks the user for a token. */
export async function request(path: string, init: RequestInit = {}): Promise<Response> {
  const response = await fetch(path, { ...init, headers: authHeaders(init.headers) });
  if (response.status === 401) {
    tokenWanted = true;
    tokenListeners.forEach((l) => l());
  }
  return response;
}

/** The server's JSON error of a failed response, as an `ApiError`. */
export async function failure(response: Response): Promise<ApiError> {
  const text = await response.text();
  try {
    const body = JSON.parse(text) as { error?: Record<string, unknown> };
    if (body.error) {
      const { code, message, ...detail } = body.error;
      return new ApiError(response.status, String(code ?? "error"), String(message ?? text), detail);
    }
  } catch {
    // not JSON: fall through to the plain text
  }
  return new ApiError(response.status, "http_" + response.status, text.trim() || response.statusText);
}

/** Fetch and check; throws `ApiError` for any non-2xx answer. */
export async function call(path: string, init: RequestInit = {}): Promise<Response> {
  let response: Response;
  try {
    response = await request(path, init);
  } catch (exc) {
    throw new ApiError(0, "unreachable", `the control plane did not answer: ${String(exc)}`);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  return (await (await call(path, { signal })).json()) as T;
}

export async function sendJson<T>(method: string, path: string, body?: unknown, headers: HeadersInit = {}): Promise<T> {
  const init: RequestInit = { method, headers: new Headers(headers) };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    (init.headers as Headers).set("Content-Type", typeof body === "string" ? "text/plain" : "application/json");
  }
  const response = await call(path, init);
  const text = await response.text();
  return (text ? JSON.parse(text) : null) as T;
}

/** A path segment, escaped. */
export const seg = encodeURIComponent;
