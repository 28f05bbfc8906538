"""The engineers' portal on the relay: log in, pick a gateway, open a processor's page.

Nothing to install on the engineer's laptop: the relay serves the portal over HTTPS and proxies
each (gateway, target) on an origin of its own (``https://<target>--<gateway>.<domain>/``), opening
one tunnel stream per browser connection as the logged-in engineer, the same way the engineer
client's streams are opened.  The gateway still decides every stream.
"""
