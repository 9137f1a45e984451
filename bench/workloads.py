"""The two benchmarked models and the methods each supports, behind one interface."""
from dataclasses import dataclass

from bert import methods as example_methods

from bench import encoder, mlp
from bench.param_counts import encoder_counts, mlp_counts
from bench.training import train_runner

# The example's methods (full fine-tuning and those of the mindpet registry it applies), without its frozen-head
# baseline and its loss variants, which cost the same per step as the method they vary. Its config variants (rsLoRA,
# DoRA) are methods of their own here.
# AdaLoRA is left out: it trains only through its own training cell and allocator callback (docs/adalora.md), which
# the benchmark's training step does not drive.
METHODS = tuple(name for name in example_methods.METHODS
                if name not in ("frozen_head", "adalora")
                and (name not in example_methods.VARIANTS or name in example_methods.FIXED_OPTIONS))
# The LoRA options, whose step time is compared with plain LoRA's too.
LORA_VARIANTS = tuple(name for name in METHODS if example_methods.VARIANTS.get(name) == "lora")
MODELS = ("mlp", "encoder")
# Methods that do not apply to a model, with the reason the report prints instead of a number.
NOT_APPLICABLE = {"mlp": mlp.NOT_APPLICABLE, "encoder": {}}
_BUILDERS = {"mlp": (mlp.build_mlp, mlp.mlp_batch, mlp.mlp_loss),
             "encoder": (encoder.build_encoder, encoder.encoder_batch, encoder.encoder_loss),
             # The example's MiniLM training step, compared side by side with HF PEFT (bench.peer); not a row of
             # the per-method tables.
             "minilm": (encoder.build_minilm, encoder.minilm_batch, encoder.minilm_loss)}
# The optimizer of each model's training step (a key of bench.training.OPTIMIZERS).
OPTIMIZER = {"mlp": "adam", "encoder": "adam", "minilm": "adamw"}


@dataclass
class Workload:
    """A network frozen for one method, a batch and a loss: everything one training step needs."""

    net: object
    inputs: tuple
    target: object
    loss_fn: object
    optimizer: str = "adam"

    def train_runner(self):
        """A callable running one compiled training step (the first call compiles)."""
        return train_runner(self.net, self.loss_fn, self.inputs, self.target, self.optimizer)


def applicable_methods(model):
    return [method for method in METHODS if method not in NOT_APPLICABLE[model]]


def build_workload(model, method, preset):
    """The :class:`Workload` of ``method`` on ``model`` (``'mlp'``, ``'encoder'`` or ``'minilm'``) at ``preset``'s
    shapes."""
    build_net, make_batch, make_loss = _BUILDERS[model]
    inputs, target = make_batch(preset)
    return Workload(build_net(method, preset), inputs, target, make_loss(), OPTIMIZER[model])


def analytic_counts(model, method, preset):
    """``(trainable, total)`` parameters of the workload, derived from the shapes alone."""
    if model == "mlp":
        return mlp_counts(method, preset)
    return encoder_counts(method, encoder.encoder_config(preset, method), preset.num_labels)


def network_counts(net):
    """``(trainable, total)`` parameters read from a built network."""
    return (sum(param.size for param in net.trainable_params()),
            sum(param.size for param in net.get_parameters()))
