import { defineConfig } from "vite";
import preact from "@preact/preset-vite";

// The build lands inside the Python package, so the wheel carries the UI.
export default defineConfig({
  plugins: [preact()],
  base: "/",
  build: {
    outDir: "../src/crossway/dashboard/static",
    emptyOutDir: true,
    assetsDir: "assets",
    chunkSizeWarningLimit: 1200,
  },
  server: {
    proxy: {
      "/v1": "http://127.0.0.1:7700",
      "/api": "http://127.0.0.1:7700",
    },
  },
});
