"""Fine-tuning a pretrained BERT encoder (all-MiniLM-L6-v2) with every mindpet method, offline on a CPU."""
