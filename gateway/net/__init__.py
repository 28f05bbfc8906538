"""Dialling and listening: endpoints, the plant proxy, reconnect backoff, socket options."""
