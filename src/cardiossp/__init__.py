"""cardiossp: self-supervised pretraining and few-label fine-tuning for cardiac cine MR segmentation.

Internal label convention everywhere in this package (see ``cardiossp.data.labels``):
0 background, 1 LV blood pool, 2 LV myocardium (MYO), 3 RV blood pool.
"""

__version__ = "0.1.0"
