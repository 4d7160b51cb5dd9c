"""Load: checkpoints and models, safely - torch.save files read with a restricted unpickler (pickle_scan, safe_load),
state dicts, safetensors, Hugging Face save_pretrained folders, architectures from registries or files (only with
the trust flag where code would run: trust), the shipped samples, and where a named input lives (locate). A new
checkpoint format goes here, with its case in the hostile-file tests.
"""
