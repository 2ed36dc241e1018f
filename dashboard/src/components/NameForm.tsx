import { useState } from "preact/hooks";
import { useLocation } from "preact-iso";

/** "New …" button that opens a name field and goes to `${base}/${name}`. */
export function NameForm({ base, label, placeholder, testid }: { base: string; label: string; placeholder: string; testid: string }) {
  const { route } = useLocation();
  const [open, setOpen] = useState(false);
  const [name, setName] = useState("");
  if (!open) {
    return (
      <button data-testid={testid} onClick={() => setOpen(true)}>
        {label}
      </button>
    );
  }
  return (
    <form
      class="row"
      onSubmit={(e) => {
        e.preventDefault();
        if (name.trim()) route(`${base}/${encodeURIComponent(name.trim())}`);
      }}
    >
      <input value={name} onInput={(e) => setName(e.currentTarget.value)} placeholder={placeholder} aria-label={placeholder} autoFocus />
      <button class="primary" type="submit" disabled={!name.trim()}>
        Open
      </button>
      <button type="button" onClick={() => setOpen(false)}>
        Cancel
      </button>
    </form>
  );
}
