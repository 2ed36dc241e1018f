export function Trace() { return <section class="page"><h1>Trace</h1></section>; }
