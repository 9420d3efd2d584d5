"""The request's way to a provider: routing and fallback (``router``), retries, rate limits and the
priority gate (``limits``), circuit breakers (``breaker``), budgets (``budget``) and health checks
(``health``). Above the ledger and the providers; below the service that composes them."""
