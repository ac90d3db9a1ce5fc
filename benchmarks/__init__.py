"""Speed and memory of deltaprop against references run in the same process.

Every figure is a ratio against a reference measured in the same run with
interleaved repetitions (PyTorch CPU when installed, or plain numpy written for the
same step), so machine drift cancels out; nothing here is a timed assertion.
"""
