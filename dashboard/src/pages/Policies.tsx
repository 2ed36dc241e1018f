export function Policies() { return <section class="page"><h1>Policies</h1></section>; }
