export function ConfigBrowser() { return <section class="page"><h1>ConfigBrowser</h1></section>; }
