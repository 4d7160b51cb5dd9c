"""The sample checkpoints, installed with nc-probe as the package ``nc_probe.sample_checkpoints``.

``nc-probe analyze sample:ce`` (and ``sample:mcr2``, ``sample:ce_epoch20``, ...) reads them; see
``nc_probe.load.samples`` and ``scripts/train_samples.py``, which rebuilds them.
"""
