"""Loading a base/DPO pair, generation and streaming, the serving LoRA layer, model sources."""
