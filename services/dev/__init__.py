"""Developer tools, not the serving runtime: `make demo` (demo), `make up`/`make down` (stack), and starting
services as child processes for them, the benchmarks and the tests (launcher)."""
