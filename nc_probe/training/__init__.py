"""Inside the training loop: the streaming :class:`~nc_probe.training.metric.NeuralCollapse` metric (torchmetrics
protocol, torchrun-safe), the Lightning callback (:mod:`~nc_probe.training.lightning`), the Hugging Face Trainer
callback (:mod:`~nc_probe.training.hf_trainer`) and the plain-PyTorch helper (:mod:`~nc_probe.training.loop`) that
write per-epoch reports ``nc-probe trajectory`` reads. Lightning, torchmetrics and transformers are optional: nothing
here is imported by ``import nc_probe``."""
