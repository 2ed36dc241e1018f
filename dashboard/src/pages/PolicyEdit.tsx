export function PolicyEdit() { return <section class="page"><h1>PolicyEdit</h1></section>; }
