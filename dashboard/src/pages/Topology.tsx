export function Topology() { return <section class="page"><h1>Topology</h1></section>; }
