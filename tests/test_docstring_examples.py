"""Every docstring example in the package runs and prints what it shows."""
import doctest
import importlib
import pkgutil

import pytest

import mindpet

MODULES = sorted(info.name for info in pkgutil.walk_packages(mindpet.__path__, "mindpet."))
# Public API modules must show at least one example.
MODULES_WITH_EXAMPLES = {
    "mindpet.delta.lora.layer", "mindpet.delta.lora.config", "mindpet.delta.adapter.layer",
    "mindpet.delta.adapter.config", "mindpet.delta.ia3.layer", "mindpet.delta.ia3.config",
    "mindpet.delta.low_rank_adapter.layer", "mindpet.delta.low_rank_adapter.config",
    "mindpet.delta.prefix.layer", "mindpet.delta.ptuning2.layer", "mindpet.delta.prefix_attention",
    "mindpet.delta.r_drop", "mindpet.freeze", "mindpet.parallel.check", "mindpet.injection.inject",
    "mindpet.injection.plan", "mindpet.injection.merge", "mindpet.injection.summary", "mindpet.checkpoint.atomic",
    "mindpet.checkpoint.adapter_files", "mindpet.checkpoint.callback", "mindpet.checkpoint.guard",
    "mindpet.checkpoint.loader", "mindpet.checkpoint.selection", "mindpet.checkpoint.sliced",
    "mindpet.utils.validation",
    "mindpet.delta.prompt_tuning.layer", "mindpet.delta.prompt_tuning.config", "mindpet.delta.ptuning.layer",
    "mindpet.delta.ptuning.config", "mindpet.delta.base.virtual_tokens",
    "mindpet.quantization.nf4", "mindpet.quantization.layer", "mindpet.quantization.apply",
    "mindpet.delta.adalora.layer", "mindpet.delta.adalora.config", "mindpet.delta.adalora.train",
    "mindpet.delta.adalora.callback",
}


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(graph_mode, module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"
    if module_name in MODULES_WITH_EXAMPLES:
        assert result.attempted > 0, f"{module_name} has no docstring example"
