"""Training integrations: ``cs.fit`` and the Keras callback, PyTorch loops, and Hugging Face's
Trainer. Public names: :mod:`colabsession.keras`, :mod:`colabsession.torch` and
:mod:`colabsession.hf`."""
