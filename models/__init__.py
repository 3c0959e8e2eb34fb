"""The PyTorch reference of SkipDecode: OPT and Llama-family models with HF parameter names."""

from skipdecode.models.config import ARCHITECTURES, LlamaConfig, OPTConfig, config_from_hf
from skipdecode.models.loading import LoadedModel, build_model, load_model

__all__ = ["ARCHITECTURES", "LlamaConfig", "OPTConfig", "LoadedModel", "build_model", "config_from_hf", "load_model"]
