"""The serving path: read a call, route it, plan the attempts, exchange, relay, record."""
