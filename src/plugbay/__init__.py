"""plugbay: HashiCorp go-plugin's plugin model for Python, over processes, containers and pods."""

__version__ = "0.1.0"
