"""The testbed: emulated servers running real model stages (see ``testbed.backends.base``).

Modules: ``api`` (the gateway's wire contract), ``zoo`` (stage models, built
locally), ``services`` (stage server, registry, feature store, gateway, node
agent, trainer), ``backends`` (``local``, ``compose``), ``capacity`` (fitting
emulated servers onto the host), ``controller`` (applying a deployment), ``cli``.
Importing the package imports nothing heavy.
"""
