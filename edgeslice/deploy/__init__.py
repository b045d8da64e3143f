"""Deployment: ONNX export and parity (:mod:`.export`), size and latency (:mod:`.measure`), int8
(:mod:`.quantize`, :mod:`.int8`), device profiles (:mod:`.devices`) and budgets (:mod:`.budget`), and the C header
firmware builds include (:mod:`.cheader`).

Import the submodule you need: each one loads onnx/onnxruntime only inside the functions that use them.
"""
