"""MUGE data: LMDB building (torch-free), random-access readers, transforms and the resumable
sampler. Import the submodules directly; this package imports nothing so that building an
LMDB never loads torch."""
from __future__ import annotations
