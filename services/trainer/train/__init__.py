"""Training: contrastive loss over the global batch, LR schedule, progress events, the
training loop with validation, and the seam for online learning."""
