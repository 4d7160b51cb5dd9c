"""Extract: running data through a model and tapping features - the extraction loop (taps on the model, one pass,
statistics updated per batch on the device) and the FeatureStore that holds or spills the tapped rows for the passes
that need them again.
"""
