"""Online learning: crawled (image, query) pairs for each evaluation batch.

Torch-free parts (the crawl client, the image sources, the leakage guard, the cache import)
live beside the learner, which is the only module here that imports torch.
"""
