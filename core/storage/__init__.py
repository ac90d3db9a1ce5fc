"""The npz container deltaprop writes atomically and reads without unpickling, and the
model file format on top of it."""
