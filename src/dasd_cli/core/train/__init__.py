"""Pure pieces of `dasd train`: attention masks, loss, learning-rate schedule, batching.

Nothing here loads a model or touches a file; torch is imported inside functions that
need it, so the package imports fast.
"""
