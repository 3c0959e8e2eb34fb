"""Calibration and quantization of per-layer exports (`skipdecode calibrate`).

capture.py   what each layer graph really sees under the deployment schedule, as .npz shards
outliers.py  which projections one static activation scale can serve
graphs.py    one graph through ONNX Runtime's quantizers, and the contract check after
quantize.py  a whole export in, a complete quantized export (manifest, tokenizer) out
check.py     teacher-forced agreement of a quantized export with its fp32 source
"""
