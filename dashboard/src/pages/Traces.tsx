export function Traces() { return <section class="page"><h1>Traces</h1></section>; }
