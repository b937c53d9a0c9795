"""int8 on the CPU: candidate recipes for the bundle's int8 graph, each measured against fp32.

For one trained model and its bundle, every candidate is built from the bundle's graphs and
run over the whole validation set with ONNX Runtime on the CPU, on the tokenisation the
service uses. Against the fp32 graph (which the export checks equals PyTorch) it reports:
argmax agreement, accuracy lost (points), the speed ratio on one fixed batch, and how much of
the explanation survives: the overlap of the top-5 tokens by token attention and of the
top-3 prototypes by similarity.

    PROTOLM_DATA_DIR=/work/shared/datasets python benchmarks/int8_study.py \\
        runs/models/sst2/model runs/models/sst2/bundle --work runs/int8-study/sst2 \\
        --sensitivity --json runs/int8-study/sst2.json

``python benchmarks/int8_study.py table runs/int8-study/*.json`` prints the table.
``--sensitivity dynamic`` first quantises one encoder MatMul at a time (everything else fp32) and
ranks them by the mean change of the logit margin, which the ``*_xN`` candidates use to keep
the N most sensitive ones in fp32. docs/results.md ("int8 on the CPU") has the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.bundle import VARIANT_FILES, read_manifest  # noqa: E402
from core.graph_inputs import configure_tokenizer  # noqa: E402
from export.variants import TOP_PROTOTYPES, TOP_TOKENS, length_sorted_batches, top_overlap  # noqa: E402

SPEED_BATCH, SPEED_REPEATS = 32, 12


def session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclasses.dataclass
class Outputs:
    logits: np.ndarray
    token_attention: list[np.ndarray]  # per row, its real tokens only
    similarities: np.ndarray


def run_graph(path: Path, batches, threads: int) -> Outputs:
    sess = session(path, threads)
    rows_total = sum(len(rows) for rows, _ in batches)
    logits, similarities, attention = None, None, [None] * rows_total
    for rows, feeds in batches:
        out_logits, out_attention, out_sims = sess.run(["logits", "token_attention", "prototype_similarities"], feeds)
        if logits is None:
            logits = np.zeros((rows_total, out_logits.shape[1]), np.float32)
            similarities = np.zeros((rows_total, out_sims.shape[1]), np.float32)
        logits[rows], similarities[rows] = out_logits, out_sims
        for i, row in enumerate(rows):
            attention[row] = out_attention[i, : int(feeds["attention_mask"][i].sum())]
    return Outputs(logits, attention, similarities)


def compare(candidate: Outputs, fp32: Outputs, labels: np.ndarray) -> dict:
    predicted, reference = candidate.logits.argmax(1), fp32.logits.argmax(1)
    return {
        "agreement": float((predicted == reference).mean()),
        "accuracy": float((predicted == labels).mean()),
        "accuracy_lost_points": 100 * float((reference == labels).mean() - (predicted == labels).mean()),
        "mean_abs_logit_change": float(np.abs(candidate.logits - fp32.logits).mean()),
        "top_tokens_overlap": float(np.mean([top_overlap(c, f, TOP_TOKENS) for c, f in zip(candidate.token_attention, fp32.token_attention)])),
        "top_prototypes_overlap": float(np.mean([top_overlap(c, f, TOP_PROTOTYPES) for c, f in zip(candidate.similarities, fp32.similarities)])),
    }


def speed_ratio(path: Path, fp32: Path, feeds: dict, threads: int) -> float:
    """fp32 time / candidate time on one batch, runs interleaved so shared-CPU noise hits both."""
    sessions = {"fp32": session(fp32, threads), "candidate": session(path, threads)}
    times = {name: [] for name in sessions}
    for name, sess in sessions.items():
        sess.run(["logits"], feeds)
    for _ in range(SPEED_REPEATS):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(["logits"], feeds)
            times[name].append(time.perf_counter() - start)
    return float(np.median(times["fp32"]) / np.median(times["candidate"]))


def subset_of(data, rows):
    return dataclasses.replace(data, texts=[data.texts[i] for i in rows], labels=data.labels[rows],
                               text_pairs=[data.text_pairs[i] for i in rows] if data.is_pair else None)


class Calibration:
    """Training texts as a CalibrationDataReader (re-iterable: rewind() starts over)."""

    def __init__(self, tokenizer, data, input_names, examples: int, batch_size: int, seed: int, max_length: int):
        sample = subset_of(data, np.random.default_rng(seed).permutation(len(data))[:examples])
        # One length for every batch: the histogram calibrators stack their batches.
        self.feeds = [{name: np.pad(array, ((0, 0), (0, max_length - array.shape[1]))) for name, array in feeds.items()}
                      for _, feeds in length_sorted_batches(tokenizer, sample, input_names, batch_size)]
        self.position = 0

    def get_next(self):
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self):
        self.position = 0


def quiet(function, *args, **kwargs):
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return function(*args, **kwargs)
    finally:
        root.setLevel(level)


def encoder_matmuls(path: Path) -> list[str]:
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    return [n.name for n in nodes if n.op_type in ("Attention", "EmbedLayerNormalization") or (n.op_type == "MatMul" and n.name.startswith("/model/encoder/"))]


def head_nodes(path: Path) -> list[str]:
    import onnx

    scopes = ("/model/attention/", "/model/prototypes/", "/model/classifier/")
    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.name.startswith(scopes) or n.name == "/model/MatMul"]


def build(spec: dict, graphs: dict[str, Path], target: Path, calibration: Calibration, cache: Path, exclude_extra=()) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    import onnx

    source = graphs[spec.get("graph", "optimized")]
    exclude = head_nodes(source) + list(exclude_extra)
    if spec.get("keep_ops"):
        exclude += [n.name for n in onnx.load(str(source), load_external_data=False).graph.node if n.op_type in spec["keep_ops"]]
    if "smooth" in spec:
        from int8_smoothquant import smooth  # benchmarks/, next to this script

        smoothed = cache / f"model.smoothed{spec['smooth']}.onnx"
        if not smoothed.exists():
            onnx.save(smooth(onnx.load(str(source)), calibration.feeds, spec["smooth"], exclude), str(smoothed))
        source = smoothed
    if spec["mode"] == "static" and spec.get("graph", "optimized") == "optimized":
        source = typed_graph(source, cache / f"{source.stem}.typed.onnx")
    weight = QuantType.QUInt8 if spec.get("weights") == "u8" else QuantType.QInt8
    common = dict(per_channel=spec.get("per_channel", True), reduce_range=spec.get("reduce_range", False), weight_type=weight,
                  nodes_to_exclude=exclude, nodes_to_quantize=spec.get("only"))
    if spec["mode"] == "none":  # the fp32 graph itself, for the speed of what the CPU serves without int8
        linked(source, target)
        return
    if spec["mode"] == "token":
        from export.token_int8 import rewrite

        model = onnx.load(str(source))
        rewrite(model, [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name.startswith("/model/encoder/") and n.name not in exclude])
        if spec.get("attention") == "dynamic":
            staged = cache / f"{target.stem}.staged.onnx"
            onnx.save(model, str(staged))
            quiet(quantize_dynamic, staged, target, per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=["Attention"],
                  extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        else:
            onnx.save(model, str(target))
        return
    if spec["mode"] == "nbits":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(str(source), bits=spec.get("bits", 8), block_size=spec.get("block", 32), is_symmetric=True,
                                         accuracy_level=spec.get("accuracy_level", 4), nodes_to_exclude=exclude, nodes_to_include=spec.get("only"))
        quiet(quantizer.process)
        quantizer.model.save_model_to_file(str(target))
        return
    if spec["mode"] == "dynamic":
        quiet(quantize_dynamic, source, target, **common, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        return
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[spec["calibration"]]
    calibration.rewind()
    extra = {"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT}
    if spec["calibration"] == "percentile":
        extra["CalibPercentile"] = spec.get("percentile", 99.999)
    if spec.get("symmetric_activations"):
        extra["ActivationSymmetric"] = True
    cache_file = cache / f"calibration.{source.stem}.{spec['calibration']}{spec.get('percentile', '')}.json"
    quant_format = QuantFormat.QOperator if spec.get("format") == "qoperator" else QuantFormat.QDQ
    quiet(quantize_static, source, target, calibration, quant_format=quant_format, op_types_to_quantize=spec.get("ops", ["MatMul"]),
          activation_type=QuantType.QUInt8, calibrate_method=method, extra_options=extra, calibration_cache_path=cache_file, **common)


CANDIDATES = {
    "optimized_fp32": {"mode": "none"},
    # today's recipe: dynamic, int8 weights per channel, the head in fp32
    "dynamic": {"mode": "dynamic"},
    "dynamic_fp32_embeddings": {"mode": "dynamic", "keep_ops": ["EmbedLayerNormalization"]},
    "dynamic_fp32_attention": {"mode": "dynamic", "keep_ops": ["EmbedLayerNormalization", "Attention"]},
    "dynamic_rr": {"mode": "dynamic", "reduce_range": True},
    "dynamic_u8u8": {"mode": "dynamic", "weights": "u8"},
    "dynamic_pertensor": {"mode": "dynamic", "per_channel": False},
    "qdq_minmax": {"mode": "static", "calibration": "minmax", "reduce_range": True},
    "qdq_minmax_norr": {"mode": "static", "calibration": "minmax"},
    "qdq_minmax_u8u8": {"mode": "static", "calibration": "minmax", "weights": "u8"},
    "qdq_entropy": {"mode": "static", "calibration": "entropy", "reduce_range": True},
    "qdq_percentile": {"mode": "static", "calibration": "percentile", "reduce_range": True},
    "qdq_minmax_pertensor": {"mode": "static", "calibration": "minmax", "reduce_range": True, "per_channel": False},
    "qop_minmax": {"mode": "static", "calibration": "minmax", "reduce_range": True, "format": "qoperator"},
    "qop_minmax_attention": {"mode": "static", "calibration": "minmax", "reduce_range": True, "format": "qoperator", "ops": ["MatMul", "Attention"]},
    "qop_minmax_norr": {"mode": "static", "calibration": "minmax", "format": "qoperator"},
    "dynamic_smooth50": {"mode": "dynamic", "smooth": 0.5},
    "dynamic_smooth65": {"mode": "dynamic", "smooth": 0.65},
    "dynamic_smooth80": {"mode": "dynamic", "smooth": 0.8},
    "token": {"mode": "token"},
    "token_qattention": {"mode": "token", "attention": "dynamic"},
    "token_unfused": {"mode": "token", "graph": "unfused"},
    "nbits8_b32": {"mode": "nbits", "block": 32},
    "nbits4_b32": {"mode": "nbits", "block": 32, "bits": 4},
    "nbits8_b128": {"mode": "nbits", "block": 128},
    "nbits8_b32_unfused": {"mode": "nbits", "block": 32, "graph": "unfused"},
    "nbits8_b32_fp32compute": {"mode": "nbits", "block": 32, "accuracy_level": 0},
    "qdq_minmax_smooth50": {"mode": "static", "calibration": "minmax", "reduce_range": True, "smooth": 0.5},
    "qdq_percentile_smooth50": {"mode": "static", "calibration": "percentile", "reduce_range": True, "smooth": 0.5},
    "qdq_minmax_unfused": {"mode": "static", "calibration": "minmax", "reduce_range": True, "graph": "unfused"},
}


def typed_graph(source: Path, target: Path) -> Path:
    """The graph with every tensor's type and shape: ONNX shape inference stops at the fused
    contrib ops, and the calibrator skips tensors without a type (the whole encoder)."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    if not target.exists():
        onnx.save(SymbolicShapeInference.infer_shapes(onnx.load(str(source)), auto_merge=True), str(target))
    return target


def unfused_graph(fp32: Path, target: Path) -> Path:
    """The optimiser's fusions minus Attention, so the QKV projections stay MatMuls that QDQ can quantise."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    if not target.exists():
        options = FusionOptions("bert")
        options.enable_attention = False
        quiet(optimize_model, str(fp32), model_type="bert", optimization_options=options).save_model_to_file(str(target))
    return target


def linked(source: Path, target: Path) -> Path:
    if not target.exists():
        try:
            os.link(source, target)
        except OSError:
            import shutil

            shutil.copyfile(source, target)
    return target


def table(paths: list[str]) -> str:
    """The study's markdown table from its JSON reports, one row per task and candidate."""
    lines = ["| task | candidate | agreement | accuracy lost (points) | speed vs fp32 | top-5 tokens kept | top-3 prototypes kept | size MB | gate |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for path in paths:
        report = json.loads(Path(path).read_text())
        task = report["validation"]
        for name, c in report["candidates"].items():
            passed = c["agreement"] >= 0.99 and c["accuracy_lost_points"] <= 0.3 + 1e-9
            lines.append(f"| {task} | {name} | {100 * c['agreement']:.1f}% | {c['accuracy_lost_points']:+.2f} | {c['speed_vs_fp32']:.2f}x | "
                         f"{c['top_tokens_overlap']:.3f} | {c['top_prototypes_overlap']:.3f} | {c['size_mb']:.0f} | {'pass' if passed else 'fail'} |")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["table"]:
        print(table(sys.argv[2:]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("bundle_dir", type=Path)
    parser.add_argument("--work", type=Path, required=True, help="scratch directory for the candidate graphs")
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated names; NAME_xN keeps the N most sensitive encoder MatMuls in fp32")
    parser.add_argument("--sensitivity", default="", help="rank encoder MatMuls by quantising one at a time with this candidate's settings (e.g. dynamic, qdq_minmax)")
    parser.add_argument("--sensitivity-rows", type=int, default=300, help="validation rows the sensitivity pass runs on")
    parser.add_argument("--calibration-examples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from tokenizers import Tokenizer
    from protolm.training import load_train_validation
    from protolm.training_record import TrainingRecord

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(args.bundle_dir)
    training = TrainingRecord.read(args.model_dir)
    data_config = training.config.data
    if os.environ.get("PROTOLM_DATA_DIR"):
        data_config = dataclasses.replace(data_config, data_dir=os.environ["PROTOLM_DATA_DIR"])
    train, validation = load_train_validation(data_config, training.config.optim.seed)
    tokenizer = configure_tokenizer(Tokenizer.from_file(str(args.bundle_dir / "tokenizer.json")), manifest.max_length)
    inputs = manifest.graph.inputs
    batches = length_sorted_batches(tokenizer, validation, inputs, 64)
    calibration = Calibration(tokenizer, train, inputs, args.calibration_examples, 32, training.config.optim.seed, manifest.max_length)
    fp32_path = args.bundle_dir / VARIANT_FILES["fp32"]
    # The quantiser writes scratch files next to its input: each run gets its own links.
    graphs = {name: linked(args.bundle_dir / VARIANT_FILES[name], args.work / VARIANT_FILES[name]) for name in ("optimized", "fp32")}
    if any("unfused" in name for name in args.candidates.split(",")):
        graphs["unfused"] = unfused_graph(fp32_path, args.work / "model.unfused.onnx")
    speed_rows = np.random.default_rng(0).permutation(len(validation))[:SPEED_BATCH]
    speed_feeds = length_sorted_batches(tokenizer, subset_of(validation, speed_rows), inputs, SPEED_BATCH)[0][1]

    started = time.perf_counter()
    fp32 = run_graph(fp32_path, batches, args.threads)
    logging.info("fp32: accuracy %.4f in %.1fs", (fp32.logits.argmax(1) == validation.labels).mean(), time.perf_counter() - started)
    report = {"model_dir": str(args.model_dir), "validation": validation.name, "examples": len(validation),
              "fp32_accuracy": float((fp32.logits.argmax(1) == validation.labels).mean()),
              "pytorch_agreement_of_fp32": next(v.agreement for v in manifest.variants if v.name == "fp32"),
              "threads": args.threads, "calibration_examples": args.calibration_examples, "candidates": {}, "sensitivity": []}

    ranking: list[str] = []
    if args.sensitivity:
        spec = CANDIDATES[args.sensitivity]
        rows = np.random.default_rng(1).permutation(len(validation))[: args.sensitivity_rows]
        subset = subset_of(validation, rows)
        sensitivity_batches = length_sorted_batches(tokenizer, subset, inputs, 64)
        subset_fp32 = run_graph(fp32_path, sensitivity_batches, args.threads)
        nodes = encoder_matmuls(graphs[spec.get("graph", "optimized")])
        for node in nodes:
            target = args.work / "sensitivity.onnx"
            build({**spec, "only": [node]}, graphs, target, calibration, args.work)
            figures = compare(run_graph(target, sensitivity_batches, args.threads), subset_fp32, subset.labels)
            report["sensitivity"].append({"node": node, **figures})
            logging.info("sensitivity %-60s logit change %.4f agreement %.4f", node, figures["mean_abs_logit_change"], figures["agreement"])
        ranking = [row["node"] for row in sorted(report["sensitivity"], key=lambda row: -row["mean_abs_logit_change"])]

    for name in [n for n in args.candidates.split(",") if n]:
        base, _, excluded = name.partition("_x")
        spec = CANDIDATES[base]
        keep = ranking[: int(excluded)] if excluded else []
        target = args.work / f"{name}.onnx"
        started = time.perf_counter()
        build(spec, graphs, target, calibration, args.work, keep)
        built = time.perf_counter() - started
        figures = compare(run_graph(target, batches, args.threads), fp32, validation.labels)
        figures["speed_vs_fp32"] = speed_ratio(target, fp32_path, speed_feeds, args.threads)
        figures["build_seconds"] = built
        figures["size_mb"] = target.stat().st_size / 1e6
        figures["fp32_nodes"] = keep
        report["candidates"][name] = figures
        logging.info("%-24s agreement %.4f lost %.2f pts speed %.2fx tokens %.3f prototypes %.3f", name, figures["agreement"],
                     figures["accuracy_lost_points"], figures["speed_vs_fp32"], figures["top_tokens_overlap"], figures["top_prototypes_overlap"])
        if args.json:
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
