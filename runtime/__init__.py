"""The deployable runtime: imports neither torch nor transformers (edge devices install
ONNX Runtime or TensorRT, numpy and tokenizers only)."""

from skipdecode.runtime.engine import Engine, EngineConfig
from skipdecode.runtime.generate import GenerationConfig, generate_ids
from skipdecode.runtime.request import Request, RowResult, TokenEvent
from skipdecode.runtime.sampling import SamplingConfig

__all__ = ["Engine", "EngineConfig", "GenerationConfig", "Request", "RowResult", "SamplingConfig", "TokenEvent",
           "generate_ids"]
