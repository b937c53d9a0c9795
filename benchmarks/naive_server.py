"""The baseline of the load benchmark: what a user would write without protolm's service.

A plain synchronous gRPC server that runs the PyTorch model on every Classify request as it
arrives, one request at a time per worker thread: no batching, no ONNX Runtime.

    python benchmarks/naive_server.py MODEL_DIR --port 50052
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protolm.model import load_model  # noqa: E402
from service.grpc_api import protolm_pb2 as pb  # noqa: E402
from service.grpc_api import protolm_pb2_grpc as pb_grpc  # noqa: E402


class NaiveServicer(pb_grpc.ProtoLMServiceServicer):
    def __init__(self, model_dir: str):
        self.model = load_model(model_dir)

    def Classify(self, request, context):
        texts = [i.text for i in request.inputs]
        with torch.inference_mode():
            probabilities = self.model(**self.model.tokenize(texts)).logits.softmax(-1)
        labels = self.model.config.label_names
        return pb.ClassifyResponse(results=[
            pb.Classification(label=labels[int(row.argmax())], label_id=int(row.argmax()),
                              probabilities=[pb.ClassProbability(label=n, label_id=i, probability=float(p)) for i, (n, p) in enumerate(zip(labels, row))])
            for row in probabilities
        ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--port", type=int, default=50052)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    pb_grpc.add_ProtoLMServiceServicer_to_server(NaiveServicer(args.model_dir), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    server.stop(2).wait()


if __name__ == "__main__":
    main()
