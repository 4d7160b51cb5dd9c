"""Stats: mergeable float64 statistics of a stream of (features, labels) batches - ClassStats (per-class counts, means,
scatters; update / merge / all_reduce), the prediction tallies of the second pass, the per-class subspace
statistics, the float32 screens with their rounding bounds, and the work plan that decides from class counts which
classes the C x C work covers. Imports core and metrics only.
"""
