export function Processes() { return <section class="page"><h1>Processes</h1></section>; }
