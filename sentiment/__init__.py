"""Film-review sentiment as a stateless serving function on TorchServe (docs/layout.md is the map).

serving/   what a TorchServe worker imports, and all the archive ships: signature, payloads,
           featurisers, the core, explanations, served metrics, cost
training/  what makes a version: both trainers, the pretrained weights, export and calibration
ops/       what runs the served versions: TorchServe and Prometheus clients, rules, promotion,
           evaluation, batch scoring (CLI, Spark) and the KServe layout
data.py    the labelled data and the one split every trainer and report reads

Imports run one way: training and ops import serving (and data), never the other way round
(tests/test_layout.py checks it).
"""
