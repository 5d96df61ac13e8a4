"""The model zoo: stage models for the digits pipeline, built locally (torch → ONNX).

Importing this package does not import torch; ``testbed.zoo.build`` does.
"""

from testbed.zoo.manifest import DEFAULT_DIR, load_manifest, load_testset, pipeline_key

__all__ = ["DEFAULT_DIR", "load_manifest", "load_testset", "pipeline_key"]
