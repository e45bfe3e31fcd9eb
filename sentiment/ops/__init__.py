"""What runs the served versions: one TorchServe client (torchserve.py), one Prometheus client
(prometheus.py), drift rules (rules.py), promotion, evaluation and batch scoring."""
