"""The serving side: reads a bundle written by ``protolm export`` and serves it over gRPC.

No torch, no transformers. Importing this package imports nothing heavy: onnxruntime,
tokenizers, faiss and grpc are imported by the modules and methods that use them.
"""
