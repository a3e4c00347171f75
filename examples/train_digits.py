"""Train a small CNN on scikit-learn's digits with cs.fit; interrupt it and run it again to resume.

    pip install "colabsession[demo]"
    python examples/train_digits.py

The same code runs in a Colab cell: there the run lives on your Google Drive, so it resumes even
on a new runtime after a disconnect.
"""

import colabsession as cs
from colabsession.demo import digits_data, digits_model

print(cs.probe().table())
x, y, x_val, y_val = digits_data()

strategy = cs.strategy()  # TPU, several GPUs, one GPU or CPU
cs.precision()  # mixed precision where the accelerator pays it back
with strategy.scope():
    model = digits_model()

history = cs.fit(
    model,
    x,
    y,
    run="digits-cnn-example",  # checkpoints and history in drive:checkpoints/digits-cnn-example
    epochs=30,
    batch_size=64,
    validation_data=(x_val, y_val),
    seed=0,  # the data order of every epoch: resumes are exact to the batch
    every="10s",
)
print("epochs done:", len(history.epoch), "val_accuracy:", history.history["val_accuracy"][-1])
