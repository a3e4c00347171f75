"""Keras 3 integration: a callback that saves a ``model.fit`` run across Colab sessions and
resumes it where it stopped. ``import colabsession`` never imports this module (nor Keras);
``cs.keras`` loads it on first use.

>>> callback = cs.keras.SessionCheckpoint("digits-cnn")  # doctest: +SKIP
>>> model.fit(x, y, epochs=50, callbacks=[callback])  # doctest: +SKIP

With your own ``model.fit`` Keras decides the data order, so the callback keeps only
epoch-boundary states: it saves at epoch ends, and a run resumes after its last saved epoch.
``cs.fit`` uses the same callback and also controls the data order, which makes its resumes
exact to the batch.
"""

from colabsession._training.keras import (
    SessionCheckpoint,
)

__all__ = [
    "SessionCheckpoint",
]
