export function Routes() { return <section class="page"><h1>Routes</h1></section>; }
