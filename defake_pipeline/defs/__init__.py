"""The Dagster layer: thin assets, partitions and resources over ``defake_pipeline.core``."""
