"""The deployable runtime: imports neither torch nor transformers (edge devices install
ONNX Runtime or TensorRT, numpy and tokenizers only)."""

from skipdecode.runtime.generate import GenerationConfig, RowResult, generate_ids, stream_batch
from skipdecode.runtime.sampling import SamplingConfig

__all__ = ["GenerationConfig", "RowResult", "SamplingConfig", "generate_ids", "stream_batch"]
