"""Resilience policies: breakers, limiters, bulkheads, retries, timeouts,
adaptive concurrency. Pure and clock-injected; thin sync/async wrappers on top."""
