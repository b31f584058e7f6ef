"""osa-grid: data-driven processing for Cherenkov telescope observatories."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("osa-grid")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
