export function Coordination() { return <section class="page"><h1>Coordination</h1></section>; }
