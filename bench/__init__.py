"""Benchmark: our tunnel side by side with a direct connection, stunnel and an OpenSSH tunnel.

Run it with ``python bench/run.py`` (see bench/README.md). Standard library only: the harness
starts the gateway as a separate program and never imports it.
"""
