"""`cnclip index`: a gallery embedded once by a checkpoint, kept for search (shared/gallery_index.py)."""
