"""Model organisms: simulated RL runs with implanted process mistakes and known ground truth."""
