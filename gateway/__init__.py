"""The remote service gateway: edge daemon, relay, engineer client and the tunnel they share."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("remote-service-gateway")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
