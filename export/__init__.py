"""Per-layer ONNX export (`skipdecode export`): embed.onnx, layer_NNN.onnx, lm_head.onnx and a
manifest, validated against the PyTorch reference. The graph contract: export/README.md and
export/contract.py. Heavy imports (torch, onnx) happen in the submodules, not here."""

__all__ = ["ExportConfig", "export_model", "verify_export"]


def __getattr__(name):
    if name in ("ExportConfig", "export_model"):
        from skipdecode.export import exporter
        return getattr(exporter, name)
    if name == "verify_export":
        from skipdecode.export.validate import verify_export
        return verify_export
    raise AttributeError(name)
