"""Training: Lightning modules for segmentation and pretraining, losses, weight transfer."""
