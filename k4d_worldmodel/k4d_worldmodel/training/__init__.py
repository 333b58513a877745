"""Training and fine-tuning of the K4D world model (see train.py)."""
