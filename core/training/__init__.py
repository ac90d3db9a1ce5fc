"""Training: the one step and loop every mode shares, and the strategies that vary it
(MPI gradient reduction, truncated-BPTT windows, anomaly detection, checkpoints)."""
