export function Service() { return <section class="page"><h1>Service</h1></section>; }
