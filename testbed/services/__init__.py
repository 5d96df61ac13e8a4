"""The testbed's services; each runs as ``python -m testbed.services.<module> --port P``."""
