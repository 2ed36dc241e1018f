export function ConfigKey() { return <section class="page"><h1>ConfigKey</h1></section>; }
