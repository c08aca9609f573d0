"""`sensor dashboard`: the web panel over the local store (DuckDB) or the fleet's PostgreSQL."""
