"""QLoRA against LoRA on a float32 base, side by side: ``python -m bench.qlora [--quick] [--out DIR]
[--workloads mlp encoder]``.

Two workloads, each built twice from the same weights: LoRA on ``nn.Dense`` layers, and LoRA on the same layers
quantized to NF4 by :func:`mindpet.quantize_base` (``NF4Dense``, double quantization, blocks of 64; 16 in the quick
preset, whose widths are 32). ``mlp``: the benchmark MLP, every layer quantized and adapted. ``encoder``: the
example's BERT classifier at the preset's encoder shapes (all-MiniLM-L6-v2's widths in the full preset), the
``qlora`` method of ``examples/bert/methods.py`` (every encoder Dense in NF4, LoRA on query and value) against its
``lora``. The forward pass (inference) and the training step are timed in interleaved rounds
(:func:`bench.timing.interleave`), so both networks of a pair see the same load; the ratios are QLoRA's median over
LoRA's. The weight bytes are those of the frozen Dense weights: float32 as stored, float16 (half of it), and NF4 with
and without double quantization (the Parameters the quantized layers hold). Writes ``qlora.json`` to ``--out`` and
prints the Markdown table of ``docs/benchmarks.md``.
"""
import argparse
import json
import os

import mindspore as ms
from bert.methods import apply_method
from bert.modeling import BertClassifier

from mindpet import LoraConfig, get_delta_model, quantize_base
from mindpet.quantization import NF4Weight

from bench import presets
from bench.encoder import encoder_batch, encoder_config, encoder_loss
from bench.mlp import MLP, mlp_batch, mlp_loss
from bench.timing import interleave, ratio_summary
from bench.training import forward_runner, train_runner

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# NF4 block size per preset: the QLoRA paper's 64, or 16 where the quick preset's widths (32) are smaller.
BLOCK_SIZE = {"full": 64, "quick": 16}
VARIANTS = ("lora", "qlora")


def _dense_weights(net):
    """The ``(name, Parameter)`` of every float Dense weight of ``net`` that a QLoRA base stores in NF4."""
    return [(name, param) for name, param in net.parameters_and_names()
            if name.endswith(".weight") and len(param.shape) == 2 and not name.startswith(("classifier", "bert.emb"))]


def _build_mlp(variant, preset, weights):
    net = MLP(preset.mlp_width, preset.mlp_depth)
    ms.load_param_into_net(net, weights)
    if variant == "qlora":
        quantize_base(net, "all-dense", block_size=BLOCK_SIZE[preset.name])
    return get_delta_model(net, LoraConfig(target_modules="all-dense", lora_rank=presets.LORA_RANK,
                                           lora_alpha=presets.LORA_ALPHA))


def _build_encoder(variant, preset, weights):
    net = BertClassifier(encoder_config(preset), preset.num_labels)
    ms.load_param_into_net(net, weights)
    apply_method(net, variant, quant_block_size=BLOCK_SIZE[preset.name], **presets.HYPERPARAMETERS)
    return net


WORKLOADS = {"mlp": (lambda preset: MLP(preset.mlp_width, preset.mlp_depth), _build_mlp, mlp_batch, mlp_loss,
                     "rounds", "mlp_steps_per_round"),
             "encoder": (lambda preset: BertClassifier(encoder_config(preset), preset.num_labels), _build_encoder,
                         encoder_batch, encoder_loss, "encoder_rounds", "encoder_steps_per_round")}


def weight_bytes(float_weights, block_size):
    """Bytes of the Dense weights ``float_weights`` (``[(name, Parameter)]``) in float32, float16 and NF4 with and
    without double quantization."""
    fp32 = sum(param.nbytes for _, param in float_weights)
    nf4 = {double_quant: sum(NF4Weight(param.asnumpy(), block_size, double_quant).storage_bytes()
                             for _, param in float_weights) for double_quant in (True, False)}
    return {"float32": fp32, "float16": fp32 // 2, "nf4_double_quant": nf4[True], "nf4": nf4[False]}


def measure(workload, preset):
    """Forward and training-step times of LoRA and QLoRA on ``workload`` (``'mlp'`` or ``'encoder'``), and the
    weight bytes."""
    make_base, build, make_batch, make_loss, rounds_field, steps_field = WORKLOADS[workload]
    ms.set_seed(0)
    base = make_base(preset)
    weights = {name: ms.Parameter(param.value(), name=name) for name, param in base.parameters_and_names()}
    inputs, target = make_batch(preset)
    rounds, steps = getattr(preset, rounds_field), getattr(preset, steps_field)
    result = {"weight_bytes": weight_bytes(_dense_weights(base), BLOCK_SIZE[preset.name])}
    for phase in ("forward", "train"):
        nets = {variant: build(variant, preset, weights) for variant in VARIANTS}
        runners = {variant: (forward_runner(net, inputs) if phase == "forward"
                             else train_runner(net, make_loss(), inputs, target))
                   for variant, net in nets.items()}
        per_step = interleave(runners, rounds, steps, preset.warmup_steps)
        result[phase] = ratio_summary(per_step["qlora"], per_step["lora"])
    return result


def markdown(results):
    lines = ["| workload | forward, QLoRA / LoRA | training step, QLoRA / LoRA | LoRA step (ms) | "
             "Dense weights: float32 | float16 | NF4 | NF4 + double quant (/ float32) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for workload, result in results["workloads"].items():
        sizes = result["weight_bytes"]
        fp32 = sizes["float32"]
        ratios = [f"{result[phase]['ratio']:.2f} ({result[phase]['ratio_min']:.2f}-{result[phase]['ratio_max']:.2f})"
                  for phase in ("forward", "train")]
        lines.append(f"| {workload} | {ratios[0]} | {ratios[1]} | {result['train']['reference_median_ms']:.1f} | "
                     f"{fp32 / 1e6:.2f} MB | {sizes['float16'] / 1e6:.2f} MB | {sizes['nf4'] / 1e6:.2f} MB "
                     f"({sizes['nf4'] / fp32:.3f}) | {sizes['nf4_double_quant'] / 1e6:.2f} MB "
                     f"({sizes['nf4_double_quant'] / fp32:.3f}) |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.qlora", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few rounds")
    parser.add_argument("--out", default=DEFAULT_OUT, help="directory of qlora.json")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    args = parser.parse_args(argv)
    ms.set_context(mode=ms.GRAPH_MODE)
    preset = presets.PRESETS["quick" if args.quick else "full"]
    results = {"preset": preset.name, "block_size": BLOCK_SIZE[preset.name],
               "workloads": {workload: measure(workload, preset) for workload in args.workloads}}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "qlora.json"), "w", encoding="utf-8") as out_file:
        json.dump(results, out_file, indent=1)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
