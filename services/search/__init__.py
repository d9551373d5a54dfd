"""The search service: text (and picture) queries against gallery indexes, with thumbnails."""
