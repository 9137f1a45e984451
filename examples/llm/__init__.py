"""A causal language model (SmolLM2-135M-Instruct) in MindSpore, fine-tuned with every mindpet method that applies."""
