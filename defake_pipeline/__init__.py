"""mllm-defake pipeline: evaluate multimodal LLMs as detectors of AI-generated images."""

__version__ = "0.1.0"
