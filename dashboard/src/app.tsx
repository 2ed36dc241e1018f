// The shell: header, navigation, theme toggle, token form and the router.
// Pages that pull in CodeMirror or cytoscape are loaded lazily.

import { useEffect, useState } from "preact/hooks";
import { ErrorBoundary, LocationProvider, Route, Router, lazy, useLocation } from "preact-iso";
import { getToken, isTokenWanted, onTokenChange, request, setToken } from "./lib/api";
import { currentTheme, toggleTheme } from "./lib/theme";
import { Overview } from "./pages/Overview";
import { NotFound } from "./pages/NotFound";

const Service = lazy(() => import("./pages/Service").then((m) => m.Service));
const Topology = lazy(() => import("./pages/Topology").then((m) => m.Topology));
const ConfigBrowser = lazy(() => import("./pages/ConfigBrowser").then((m) => m.ConfigBrowser));
const ConfigKey = lazy(() => import("./pages/ConfigKey").then((m) => m.ConfigKey));
const Routes = lazy(() => import("./pages/Routes").then((m) => m.Routes));
const RouteEdit = lazy(() => import("./pages/RouteEdit").then((m) => m.RouteEdit));
const Policies = lazy(() => import("./pages/Policies").then((m) => m.Policies));
const PolicyEdit = lazy(() => import("./pages/PolicyEdit").then((m) => m.PolicyEdit));
const Traces = lazy(() => import("./pages/Traces").then((m) => m.Traces));
const Trace = lazy(() => import("./pages/Trace").then((m) => m.Trace));
const Alerts = lazy(() => import("./pages/Alerts").then((m) => m.Alerts));
const Coordination = lazy(() => import("./pages/Coordination").then((m) => m.Coordination));
const Processes = lazy(() => import("./pages/Processes").then((m) => m.Processes));

const NAV: { page: string; href: string; label: string }[] = [
  { page: "overview", href: "/", label: "Overview" },
  { page: "topology", href: "/topology", label: "Topology" },
  { page: "config", href: "/config", label: "Config" },
  { page: "routes", href: "/routes", label: "Routes" },
  { page: "policies", href: "/policies", label: "Policies" },
  { page: "traces", href: "/traces", label: "Traces" },
  { page: "alerts", href: "/alerts", label: "Alerts" },
  { page: "coordination", href: "/coordination", label: "Coordination" },
  { page: "processes", href: "/processes", label: "Processes" },
];

function useProcessesAvailable(): boolean {
  const [available, setAvailable] = useState(false);
  useEffect(() => {
    const check = () =>
      request("/v1/processes").then(
        (r) => setAvailable(r.status === 200),
        () => setAvailable(false),
      );
    void check();
    const timer = setInterval(check, 30_000);
    return () => clearInterval(timer);
  }, []);
  return available;
}

function Nav() {
  const { path } = useLocation();
  const [open, setOpen] = useState(false);
  const [theme, setTheme] = useState(currentTheme());
  const processes = useProcessesAvailable();
  useEffect(() => setOpen(false), [path]);
  const active = (href: string) => (href === "/" ? path === "/" || path.startsWith("/services/") : path.startsWith(href));
  return (
    <header class="topbar">
      <a class="brand" href="/">
        <svg viewBox="0 0 16 16" width="20" height="20" aria-hidden="true">
          <path d="M2 2l12 12M14 2L2 14" stroke="currentColor" stroke-width="2.6" stroke-linecap="round" />
        </svg>
        Crossway
      </a>
      <button class="nav-toggle" aria-label="Menu" aria-expanded={open} onClick={() => setOpen(!open)}>
        ☰
      </button>
      <nav class={open ? "nav open" : "nav"}>
        {NAV.filter((n) => n.page !== "processes" || processes).map((n) => (
          <a key={n.page} href={n.href} data-testid={`nav-${n.page}`} class={active(n.href) ? "active" : ""}>
            {n.label}
          </a>
        ))}
      </nav>
      <button
        class="theme-toggle"
        data-testid="theme-toggle"
        title="Toggle dark mode"
        aria-label="Toggle dark mode"
        onClick={() => setTheme(toggleTheme())}
      >
        {theme === "dark" ? "☀" : "☾"}
      </button>
    </header>
  );
}

function TokenForm() {
  const [value, setValue] = useState("");
  return (
    <div class="token-overlay">
      <form
        class="card token-form"
        data-testid="token-form"
        onSubmit={(e) => {
          e.preventDefault();
          setToken(value.trim());
          location.reload();
        }}
      >
        <h2>This control plane needs a token</h2>
        <p class="muted">It is kept in this browser (localStorage) and sent as <code>Authorization: Bearer</code>.</p>
        <input
          type="password"
          data-testid="token-input"
          placeholder="token"
          value={value}
          onInput={(e) => setValue(e.currentTarget.value)}
          autoFocus
        />
        <div class="row">
          <button class="primary" type="submit" data-testid="token-save" disabled={!value.trim()}>
            Save
          </button>
          {getToken() && (
            <button type="button" onClick={() => setToken(null)}>
              Forget the stored token
            </button>
          )}
        </div>
      </form>
    </div>
  );
}

export function App() {
  const [needToken, setNeedToken] = useState(isTokenWanted());
  useEffect(() => onTokenChange(() => setNeedToken(isTokenWanted())), []);
  return (
    <LocationProvider>
      <Nav />
      <main class="main">
        <ErrorBoundary>
          <Router>
            <Route path="/" component={Overview} />
            <Route path="/services/:name" component={Service} />
            <Route path="/topology" component={Topology} />
            <Route path="/config" component={ConfigBrowser} />
            <Route path="/config/:ns/:group/:entry" component={ConfigKey} />
            <Route path="/routes" component={Routes} />
            <Route path="/routes/:name" component={RouteEdit} />
            <Route path="/policies" component={Policies} />
            <Route path="/policies/:service" component={PolicyEdit} />
            <Route path="/traces" component={Traces} />
            <Route path="/traces/:id" component={Trace} />
            <Route path="/alerts" component={Alerts} />
            <Route path="/coordination" component={Coordination} />
            <Route path="/processes" component={Processes} />
            <Route default component={NotFound} />
          </Router>
        </ErrorBoundary>
      </main>
      {needToken && <TokenForm />}
    </LocationProvider>
  );
}
