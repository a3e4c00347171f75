"""The machine and the session: which runtime this is (Colab, Kaggle, local), the hardware probe,
the session clock and its deadline, SIGTERM and Ctrl-C handling, and the distribution strategy."""
