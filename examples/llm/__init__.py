"""A Llama causal LM (SmolLM2-135M-Instruct from its GGUF file) in MindSpore: model, loader, tokenizer, generation."""
