export function NotFound() {
  return (
    <section class="page">
      <div class="empty">
        <h1>Nothing here</h1>
        <p>
          This page does not exist. <a href="/">Back to the overview</a>.
        </p>
      </div>
    </section>
  );
}
