"""Delta cells: one folder per method (its cells, config and registry record), shared bases in ``base/``.

The public cells are imported here; configs and the functions that apply them are exported from :mod:`mindpet`.
"""
from mindpet.delta.adalora import AdaLoRADense
from mindpet.delta.adapter import AdapterDense, AdapterLayer
from mindpet.delta.base.virtual_tokens import prepend_virtual_tokens
from mindpet.delta.ia3 import IA3Dense
from mindpet.delta.lora import LoRADense
from mindpet.delta.low_rank_adapter import LowRankAdapterDense, LowRankAdapterLayer
from mindpet.delta.prefix import PrefixLayer
from mindpet.delta.prefix_attention import PrefixConcat
from mindpet.delta.prompt_tuning import PromptTuningEmbedding
from mindpet.delta.ptuning import PromptEncoder
from mindpet.delta.ptuning2 import PrefixEncoder
from mindpet.delta.r_drop import RDropLoss, rdrop_repeat
from mindpet.injection.merge import merge_and_unload
from mindpet.quantization.layer import NF4Dense

__all__ = ["AdaLoRADense", "AdapterDense", "AdapterLayer", "IA3Dense", "LoRADense", "LowRankAdapterDense", "LowRankAdapterLayer",
           "NF4Dense", "PrefixConcat", "PrefixEncoder", "PrefixLayer", "PromptEncoder", "PromptTuningEmbedding",
           "RDropLoss", "merge_and_unload", "prepend_virtual_tokens", "rdrop_repeat"]
