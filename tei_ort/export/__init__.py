"""The export stage: hub models and local folders -> fused, validated ONNX model packages.

Only this stage imports torch, transformers, optimum and sentence-transformers (an install extra);
the serving path reads the packages it writes through tei_ort.package alone.
"""
