"""The Dagster layer: definitions only (assets, checks, sensors, schedules, jobs, resources), thin
over the domain packages; loaded the ``dg`` way by ``defake_pipeline.definitions``."""
