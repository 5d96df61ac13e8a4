"""The ``mlops-twin`` distribution's umbrella: the one command that mounts every package's."""
