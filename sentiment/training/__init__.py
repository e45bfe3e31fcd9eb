"""What makes a version: train (nbsvm.py: v1; transformer.py: v2, from pretrained.py's weights), then
export.py writes the core, its calibration and its signature into build/vN/export."""
