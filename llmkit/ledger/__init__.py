"""The store of record: the SQLite ledger of requests (``store``), its schema migrations
(``migrations``) and the prices that turn token usage into dollars (``pricing``). Imports nothing above
the bottom layer (types and errors)."""
