export function RouteEdit() { return <section class="page"><h1>RouteEdit</h1></section>; }
