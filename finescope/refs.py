"""Model references as written in the config; no heavy imports, so planning the DAG stays fast."""

PYPI_PREFIX = "pypi:"  # a model folder shipped inside a PyPI package
GGUF_PREFIX = "gguf:"  # a GGUF file, in a PyPI package or at a path; dequantised once
