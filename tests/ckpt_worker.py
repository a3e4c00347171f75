"""Run by test_checkpoint's kill test: resume the run, then save every step until killed."""

import sys

import numpy as np

import colabsession as cs

location, local_dir = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
# No takeover: the killed predecessor's lease is released because its process is gone.
ckpt = cs.Checkpointer(location, every=None, every_steps=1, keep_last=2, local_dir=local_dir)
restored = ckpt.restore()
step = restored.step + 1 if restored else 0
print("started", step, flush=True)
while True:
    state = {"w": np.full(300_000, step, np.float64), "meta": {"step": step}}
    ckpt.maybe_save(step, state, metrics={"loss": 1.0 / (step + 1)})
    step += 1
