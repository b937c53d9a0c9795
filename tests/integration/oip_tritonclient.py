"""Calls a protolm server over the Open Inference Protocol with Triton's own Python gRPC client.

Run by tests/integration/test_oip_client.py with the interpreter of a separate virtual
environment that holds only ``tritonclient[grpc]`` (it pins protobuf < 7, which protolm
cannot): nothing of protolm is importable here, so every call goes through tritonclient's
stubs and codecs. Usage: ``python oip_tritonclient.py HOST:PORT MODEL SENTENCES.json``;
prints one JSON object with what the server answered.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

CHUNK = 10
EXPLANATION = ("token_weights", "token_offsets", "token_segments", "token_counts", "prototype_ids",
               "prototype_labels", "prototype_similarities", "exemplar_ids")


def text_input(texts):
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode("utf-8") for t in texts], dtype=np.object_))
    return tensor


def main(url, model, sentences_file):
    with open(sentences_file, encoding="utf-8") as handle:
        sentences = json.load(handle)
    client = triton.InferenceServerClient(url)
    report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "other_model_ready": client.is_model_ready(model + "-other"),
        "metadata": client.get_model_metadata(model, as_json=True),
        "server_metadata": client.get_server_metadata(as_json=True),
        "labels": [],
        "probabilities": [],
        "explanations": [],
    }
    for start in range(0, len(sentences), CHUNK):
        texts = sentences[start : start + CHUNK]
        result = client.infer(model, [text_input(texts)], request_id=f"classify-{start}")
        assert result.get_response().id == f"classify-{start}"
        report["labels"] += [label.decode("utf-8") for label in result.as_numpy("label")]
        report["probabilities"] += result.as_numpy("probabilities").tolist()
        explained = client.infer(
            model,
            [text_input(texts)],
            outputs=[triton.InferRequestedOutput(name) for name in ("label", *EXPLANATION)],
            parameters={"explain": True, "top_prototypes": 3},
        )
        arrays = {name: explained.as_numpy(name) for name in ("label", *EXPLANATION)}
        for row in range(len(texts)):
            n = int(arrays["token_counts"][row])
            report["explanations"].append({
                "label": arrays["label"][row].decode("utf-8"),
                "token_weights": arrays["token_weights"][row, :n].tolist(),
                "token_offsets": arrays["token_offsets"][row, :n].tolist(),
                "token_segments": arrays["token_segments"][row, :n].tolist(),
                "prototype_ids": arrays["prototype_ids"][row].tolist(),
                "prototype_labels": [label.decode("utf-8") for label in arrays["prototype_labels"][row]],
                "prototype_similarities": arrays["prototype_similarities"][row].tolist(),
                "exemplar_ids": arrays["exemplar_ids"][row].tolist(),
            })
    wrong = triton.InferInput("text", [1], "INT32")
    wrong.set_data_from_numpy(np.array([7], dtype=np.int32))
    try:
        client.infer(model, [wrong])
        report["wrong_datatype"] = "OK"
    except InferenceServerException as error:
        report["wrong_datatype"] = [error.status(), error.message()]
    client.close()
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:])
