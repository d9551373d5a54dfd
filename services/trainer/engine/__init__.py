"""The trainer's engine: what turns a model into something that trains, shared by the training
loop (train/), online learning (online/) and prediction (predict/).

- ``precision``: device choice, weight dtype, autocast and gradient scaling, decided once.
- ``distributed``: the process group of a run (``DistEnv``).
- ``loss``: the contrastive loss over the global batch of all ranks.
- ``step``: ``StepRunner``, one optimizer step (with accumulation), and the optimizer.
- ``build``: ``build_engine``, the one builder of model placement + precision + optimizer + step
  runner, used by ``Trainer`` and by test-time adaptation.

Nothing here imports train/, online/ or predict/ (they import this package). The package
itself re-exports nothing, so a light import (``engine.precision``) stays light.
"""
