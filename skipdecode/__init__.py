"""SkipDecode: decode autoregressive LLMs faster by skipping lower and middle layers.

The top-level package stays light (no torch): ``skipdecode.runtime`` runs on edge devices with
only ONNX Runtime, numpy and tokenizers installed.
"""

from skipdecode.errors import SkipDecodeError
from skipdecode.schedule import Schedule

__version__ = "0.1.0"
__all__ = ["Schedule", "SkipDecodeError", "__version__"]
