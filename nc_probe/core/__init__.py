"""Core: what every stage uses and nothing else - typed settings and their validation (settings), the one-line errors
(errors), text made safe to print (text, consoles), file reads and atomic writes (files), devices, the
torch.distributed helpers, optional imports, and the checks of JSON, safetensors headers and feature arrays that
several readers share. Imports nothing from the other stages.
"""
