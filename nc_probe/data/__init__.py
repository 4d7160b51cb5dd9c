"""Data: what the model is run on - image folders, array files (.npz/.pt/.safetensors), token data and text windows for
language models, torchvision datasets, the model's own preprocessing, and batching (with the distributed share of
rows). A new data format goes here.
"""
