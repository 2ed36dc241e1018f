// Data hooks: `useLive` (list once, then re-read on every watched change) and
// `usePolled` (re-read on a timer, for stats, edges and alerts, which are not
// in the store). Both keep showing the last good data while re-reading.

import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { ApiError } from "./api";
import { watchPrefix } from "./watch";

export interface Loaded<T> {
  data?: T | undefined;
  error?: ApiError | undefined;
  /** true once the first answer (data or error) arrived */
  settled: boolean;
  reload: () => void;
}

function asApiError(exc: unknown): ApiError {
  return exc instanceof ApiError ? exc : new ApiError(0, "error", String(exc));
}

function useLoader<T>(load: () => Promise<T>, deps: unknown[]): Loaded<T> & { run: () => void } {
  const [state, setState] = useState<{ data?: T; error?: ApiError; settled: boolean }>({ settled: false });
  const generation = useRef(0);
  const loadRef = useRef(load);
  loadRef.current = load;
  const run = useCallback(() => {
    const mine = ++generation.current;
    loadRef.current().then(
      (data) => mine === generation.current && setState({ data, settled: true }),
      (exc) => mine === generation.current && setState((s) => ({ data: s.data, error: asApiError(exc), settled: true })),
    );
  }, deps);
  useEffect(() => {
    setState({ settled: false });
    return () => {
      generation.current++;
    };
  }, deps);
  return { ...state, run, reload: run };
}

/** Data from `load`, re-read (debounced) whenever the store changes under any of `prefixes`. */
export function useLive<T>(load: () => Promise<T>, prefixes: string[], deps: unknown[]): Loaded<T> {
  const loader = useLoader(load, deps);
  useEffect(() => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const changed = () => {
      clearTimeout(timer);
      timer = setTimeout(loader.run, 120);
    };
    let pending = prefixes.length;
    const opened = () => {
      if (--pending === 0) loader.run();
    };
    if (pending === 0) loader.run();
    // Browsers keep at most six connections per host: more than two prefixes
    // share one stream of the whole store, filtered here by key.
    const many = prefixes.length > 2;
    const streams = many ? ["/"] : prefixes;
    pending = streams.length;
    const listener = (key: string | null) => {
      if (!many || key === null || prefixes.some((p) => key.startsWith(p))) changed();
    };
    const stops = streams.map((p) => watchPrefix(p, listener, opened));
    return () => {
      clearTimeout(timer);
      stops.forEach((stop) => stop());
    };
  }, [loader.run, prefixes.join("\n")]);
  return loader;
}

/** Data from `load`, re-read every `intervalMs` without reloading the page. */
export function usePolled<T>(load: () => Promise<T>, intervalMs: number, deps: unknown[]): Loaded<T> {
  const loader = useLoader(load, deps);
  useEffect(() => {
    loader.run();
    const timer = setInterval(loader.run, intervalMs);
    return () => clearInterval(timer);
  }, [loader.run, intervalMs]);
  return loader;
}

/** The combined loading state of several loaders, for a page's `data-loaded`. */
export function pageState(...loaders: Loaded<unknown>[]): "true" | "error" | "false" {
  if (loaders.some((l) => l.error && l.data === undefined)) return "error";
  return loaders.every((l) => l.settled) ? "true" : "false";
}
