"""The model zoo: stage models for the digits pipeline, built locally (torch → ONNX)."""

from testbed.zoo.build import DEFAULT_DIR, build, load_manifest, load_testset, pipeline_key

__all__ = ["DEFAULT_DIR", "build", "load_manifest", "load_testset", "pipeline_key"]
