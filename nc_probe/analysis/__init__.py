"""Analysis: the orchestrators - from features or a FeatureStore to a Report (features, from_stats, the subspace half,
pass 2, PCA), from a checkpoint (pipeline), every layer (layers), train vs test (splits), a training series
(trajectory), and what an input named on the command line is (inputs).
"""
